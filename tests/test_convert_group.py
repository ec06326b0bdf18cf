"""NIfTI -> DICOM -> groups -> NIfTI keeps geometry, HU and labels, for any axis orientation."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from dicom_helpers import nifti_to_dicom
from helpers import assert_same_volume, in_grid_of
from liverseg.config import GroupConfig
from liverseg.data.synth import GridSpec, make_phantom
from liverseg.errors import InputError
from liverseg.imaging import dicom_read
from liverseg.imaging.geometry import Volume
from liverseg.imaging.grouping import slab
from liverseg.stages.group import group_series


def rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def phantom(flips=(False, False, False), n_slices=134, seed=0, oblique=0.0):
    grid = GridSpec(shape=(96, 96, n_slices), spacing=(0.9, 0.9, 2.5), flips=flips)
    p = make_phantom(np.random.default_rng(seed), grid)
    affine = rotation_z(oblique) @ p.affine
    return Volume(p.image, affine), Volume(p.label, affine)


def convert(image, label, tmp_path):
    out = tmp_path / "dicom"
    (out / "ct").mkdir(parents=True)
    nifti_to_dicom(image, label, "case_x", "ns-test", out)
    return sorted((out / "ct").glob("*.dcm")), out / "seg.dcm"


@pytest.mark.parametrize("flips", [(False, False, False), (True, True, False), (True, False, True),
                                   (False, True, True)])
def test_round_trip_keeps_every_voxel_in_place(flips, tmp_path):
    image, label = phantom(flips)
    files, seg_file = convert(image, label, tmp_path)
    grouped = group_series(files, seg_file, GroupConfig())
    assert_same_volume(image, grouped.volume)                 # HU and geometry, world space
    assert_same_volume(label, Volume(grouped.label, grouped.volume.affine))


def test_oblique_orientation_survives(tmp_path):
    image, label = phantom(oblique=17.0, n_slices=70)
    files, seg_file = convert(image, label, tmp_path)
    grouped = group_series(files, seg_file, GroupConfig())
    assert_same_volume(image, grouped.volume)
    ds = pydicom.dcmread(files[0])
    # RAS x (cos, sin, 0) is LPS (-cos, -sin, 0).
    assert float(ds.ImageOrientationPatient[0]) == pytest.approx(-np.cos(np.radians(17)), abs=1e-9)


def test_groups_have_64_slices_and_labels_match_images_voxel_for_voxel(tmp_path):
    image, label = phantom((True, True, True))
    files, seg_file = convert(image, label, tmp_path)
    grouped = group_series(files, seg_file, GroupConfig(size=64))
    assert [(g.start, g.stop) for g in grouped.groups] == [(0, 64), (64, 128), (70, 134)]
    full_label = Volume(grouped.label, grouped.volume.affine)
    original_label_on_grid = in_grid_of(label, full_label)
    for g in grouped.groups:
        img_g, lab_g = slab(grouped.volume, g.start, g.stop), slab(full_label, g.start, g.stop)
        assert img_g.array.shape[2] == 64
        np.testing.assert_allclose(img_g.affine, lab_g.affine)
        # The group's first slice is where its affine says: the stack's slice g.start.
        np.testing.assert_allclose(img_g.affine[:3, 3], (grouped.volume.affine @ [0, 0, g.start, 1])[:3])
        np.testing.assert_array_equal(lab_g.array, original_label_on_grid[:, :, g.start:g.stop])


def test_listing_order_groups_by_file_name(tmp_path):
    """The seed's order: file names, not positions. Our converter names files in slice order, so a stack read in
    listing order is the same stack; on files renamed out of order it is not contiguous and is refused."""
    image, label = phantom(n_slices=70)
    files, seg_file = convert(image, label, tmp_path)
    grouped = group_series(files, seg_file, GroupConfig(size=65, order="listing", remainder="drop"))
    assert [(g.start, g.stop) for g in grouped.groups] == [(0, 65)]
    files[3].rename(files[3].with_name("9999.dcm"))
    with pytest.raises(InputError, match=r"missing slices|back and forth"):
        group_series(sorted(files[0].parent.glob("*.dcm")), seg_file,
                     GroupConfig(size=65, order="listing", remainder="drop"))


def test_sorting_ignores_file_names(tmp_path):
    image, label = phantom(n_slices=66)
    files, seg_file = convert(image, label, tmp_path)
    # Shuffle the names: position, not name, must decide the order.
    rng = np.random.default_rng(1)
    temp = [f.rename(f.with_name(f"tmp{i}.dcm")) for i, f in enumerate(files)]
    for i, f in zip(rng.permutation(len(temp)), temp, strict=True):
        f.rename(f.with_name(f"{i:04d}.dcm"))
    grouped = group_series(sorted(files[0].parent.glob("*.dcm")), seg_file, GroupConfig())
    assert_same_volume(image, grouped.volume)


def test_label_grid_must_match_image_grid(tmp_path):
    image, label = phantom(n_slices=64)
    shifted = Volume(label.array, label.affine @ np.diag([1, 1, 1, 1.0]) + np.array(
        [[0, 0, 0, 5.0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(InputError, match=r"label grid .* differs from the image grid"):
        convert(image, shifted, tmp_path)


def test_dicom_headers_are_exact(tmp_path):
    image, label = phantom((True, False, False), n_slices=64)
    files, _ = convert(image, label, tmp_path)
    headers = dicom_read.read_headers(files)
    assert len({h.ds.SOPInstanceUID for h in headers}) == 64
    assert len({h.ds.SeriesInstanceUID for h in headers}) == 1
    first = headers[0].ds
    assert first.Modality == "CT" and first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert [float(v) for v in first.PixelSpacing] == pytest.approx([0.9, 0.9], abs=1e-6)
    assert float(first.SliceThickness) == pytest.approx(2.5, abs=1e-6)
    hu = first.pixel_array.astype(np.int32) * int(first.RescaleSlope) + int(first.RescaleIntercept)
    np.testing.assert_array_equal(hu, image.array[:, :, 0].T)
