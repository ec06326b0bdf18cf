"""The numpy-only NIfTI-1 reader/writer agrees with nibabel, including the header quirks met in the wild."""

from __future__ import annotations

import struct

import nibabel as nib
import numpy as np
import pytest

from liverseg.errors import InputError
from liverseg.imaging import nifti, nifti1
from liverseg.imaging.geometry import Volume

rng = np.random.default_rng(3)


def random_affine(left_handed: bool) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if (np.linalg.det(q) < 0) != left_handed:
        q[:, 0] *= -1
    a = np.eye(4)
    a[:3, :3] = q * rng.uniform(0.3, 4.0, size=3)[None, :]
    a[:3, 3] = rng.uniform(-300, 300, size=3)
    return a


AFFINES = [np.diag([-0.8, -0.8, 2.5, 1.0]), np.diag([0.7, 0.7, 1.0, 1.0]),
           *(random_affine(left) for left in (False, True, False, True))]


@pytest.mark.parametrize("index", range(len(AFFINES)))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_written_files_read_the_same_in_nibabel(index, suffix, tmp_path):
    affine = AFFINES[index]
    array = np.asfortranarray(rng.integers(-1000, 2000, size=(9, 7, 5)).astype(np.int16))
    path = nifti.save_fast(tmp_path / f"x{suffix}", Volume(array, affine))
    img = nib.load(path)
    assert img.header["sizeof_hdr"] == 348 and int(img.header["qform_code"]) == int(img.header["sform_code"]) == 1
    np.testing.assert_allclose(img.header.get_sform(), affine, atol=1e-4)
    np.testing.assert_allclose(img.header.get_qform(), affine, atol=1e-4)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), array)
    # And nibabel's own header for the same image encodes the same quaternion.
    ref = nib.Nifti1Image(array, affine)
    ref.header.set_qform(affine, code=1)
    for field in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        assert float(img.header[field]) == pytest.approx(float(ref.header[field]), abs=1e-5)
    assert img.header["pixdim"][0] == ref.header["pixdim"][0]  # qfac


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "int32", "float32", "float64", ">i2", ">f4"])
def test_reader_gives_what_nibabel_gives(dtype, tmp_path):
    array = rng.integers(0, 200, size=(6, 5, 4)).astype(dtype)
    for i, affine in enumerate(AFFINES[:3]):
        img = nib.Nifti1Image(array, affine)
        path = tmp_path / f"{i}.nii.gz"
        nib.save(img, path)
        fast, slow = nifti.load_fast(path), nifti.load(path)
        np.testing.assert_array_equal(fast.array, slow.array)
        assert fast.array.dtype == slow.array.dtype.newbyteorder("=")
        np.testing.assert_allclose(fast.affine, slow.affine, atol=1e-6)


def test_scaled_data_reads_like_nibabel(tmp_path):
    img = nib.Nifti1Image(rng.integers(0, 4000, size=(6, 5, 4)).astype(np.int16), AFFINES[0])
    img.header.set_slope_inter(0.5, -1024.0)
    nib.save(img, tmp_path / "s.nii")
    fast, slow = nifti.load_fast(tmp_path / "s.nii"), nifti.load(tmp_path / "s.nii")
    assert fast.array.dtype == slow.array.dtype == np.float32
    np.testing.assert_array_equal(fast.array, slow.array)


def test_qform_code_0_with_sform_set_uses_the_sform(tmp_path):
    """A real-world quirk: qform_code 0 (its quaternion stale or empty) while the sform is set."""
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), AFFINES[3])
    img.header.set_qform(AFFINES[2], code=0)
    img.header.set_sform(AFFINES[3], code=2)
    nib.save(img, tmp_path / "q0.nii.gz")
    assert int(nib.load(tmp_path / "q0.nii.gz").header["qform_code"]) == 0
    for load in (nifti.load_fast, nifti.load):
        np.testing.assert_allclose(load(tmp_path / "q0.nii.gz").affine, AFFINES[3], atol=1e-5)


def test_sform_code_0_uses_the_qform_and_neither_is_refused(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), None)
    img.header.set_qform(AFFINES[4], code=1)
    img.header.set_sform(AFFINES[0], code=0)
    nib.save(img, tmp_path / "s0.nii")
    np.testing.assert_allclose(nifti.load_fast(tmp_path / "s0.nii").affine, AFFINES[4], atol=1e-4)
    img.header.set_qform(AFFINES[4], code=0)
    nib.save(img, tmp_path / "none.nii")
    for load in (nifti.load_fast, nifti.load):
        with pytest.raises(InputError, match="neither qform nor sform"):
            load(tmp_path / "none.nii")


def test_nifti2_and_4d_fall_back_or_fail_like_nibabel(tmp_path):
    nib.save(nib.Nifti2Image(np.ones((4, 4, 3), np.int16), AFFINES[0]), tmp_path / "n2.nii")
    np.testing.assert_array_equal(nifti.load_fast(tmp_path / "n2.nii").array, np.ones((4, 4, 3)))
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 1), np.int16), AFFINES[0]), tmp_path / "t1.nii")
    assert nifti.load_fast(tmp_path / "t1.nii").array.shape == (4, 4, 3)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 2), np.int16), AFFINES[0]), tmp_path / "t2.nii")
    with pytest.raises(InputError, match="must be 3D"):
        nifti.load_fast(tmp_path / "t2.nii")


def test_broken_files_are_input_errors(tmp_path):
    path = nifti.save_fast(tmp_path / "ok.nii.gz", Volume(rng.integers(0, 9, size=(32, 32, 8)).astype(np.int16),
                                                          AFFINES[0]))
    (tmp_path / "cut.nii.gz").write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="not a readable NIfTI") as caught:
        nifti.load_fast(tmp_path / "cut.nii.gz")
    assert caught.value.file == "cut.nii.gz"
    nan = np.ones((4, 4, 3), np.float32)
    nan[1, 1, 1] = np.nan
    nifti.save_fast(tmp_path / "nan.nii", Volume(nan, AFFINES[0]))
    with pytest.raises(InputError, match="1 NaN/Inf voxels"):
        nifti.load_fast(tmp_path / "nan.nii")


@pytest.mark.parametrize("offset", [float("inf"), float("nan")])
def test_non_finite_vox_offset_is_an_input_error(offset, tmp_path):
    path = nifti.save_fast(tmp_path / "ok.nii", Volume(np.zeros((4, 4, 3), np.int16), AFFINES[0]))
    raw = bytearray(path.read_bytes())
    raw[108:112] = struct.pack("<f", offset)
    (tmp_path / "bad.nii").write_bytes(raw)
    with pytest.raises(InputError, match=r"vox_offset (inf|nan) is not a byte offset") as caught:
        nifti.load_fast(tmp_path / "bad.nii")
    assert caught.value.file == "bad.nii"


def test_save_fast_and_save_agree(tmp_path):
    volume = Volume(np.asfortranarray(rng.integers(-5, 5, size=(5, 6, 7)).astype(np.int16)), AFFINES[5])
    a = nib.load(nifti.save_fast(tmp_path / "a.nii.gz", volume))
    b = nib.load(nifti.save(tmp_path / "b.nii.gz", volume))
    np.testing.assert_array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    np.testing.assert_allclose(a.header.get_qform(), b.header.get_qform(), atol=1e-5)
    assert a.header.get_xyzt_units() == b.header.get_xyzt_units()


@pytest.mark.parametrize("shear", [0.0, 0.05, 0.4])
@pytest.mark.parametrize("left_handed", [False, True])
def test_qform_of_any_affine_is_nibabels(shear, left_handed):
    """The header's quaternion comes from the nearest rotation (pure-Python polar decomposition): the same as
    nibabel's SVD, for orthogonal grids and for skewed ones a qform can only approximate."""
    affine = random_affine(left_handed)
    affine[:3, 1] += shear * affine[:3, 0]
    ref = nib.Nifti1Header()
    ref.set_qform(affine, code=1)
    qfac, bcd, zooms = nifti1.qform_fields(affine)
    assert qfac == ref["pixdim"][0]
    np.testing.assert_allclose(bcd, [float(ref[f]) for f in ("quatern_b", "quatern_c", "quatern_d")], atol=1e-6)
    np.testing.assert_allclose(zooms, np.linalg.norm(affine[:3, :3], axis=0), rtol=1e-12)


def test_writer_streams_chunks_and_leaves_nothing_when_they_fail(tmp_path):
    array = np.asfortranarray(rng.integers(-9, 9, size=(4, 3, 5)).astype(np.int16))
    slices = [np.ascontiguousarray(array[:, :, k].T) for k in range(5)]
    path = nifti1.write(tmp_path / "s.nii.gz", array.shape, "<i2", AFFINES[0], slices, slope=1.0, inter=-1000.0)
    img = nib.load(path)
    np.testing.assert_array_equal(np.asarray(img.dataobj), array.astype(np.float64) - 1000)

    def failing():
        yield slices[0]
        raise RuntimeError("source vanished")

    with pytest.raises(RuntimeError, match="vanished"):
        nifti1.write(tmp_path / "f.nii", array.shape, "<i2", AFFINES[0], failing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.nii.gz"]
