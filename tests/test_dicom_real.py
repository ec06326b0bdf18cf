"""Real scanner data (../shared/data; skipped with a reason elsewhere, required under CI=true).

- TCIA Pancreas-CT-CB_001, 134 slices: grouped into 3 × 64 slices, each group voxel-for-voxel equal to dcm2niix's
  conversion of the same slices and within 1e-3 mm of its geometry; NIfTI → DICOM → NIfTI unchanged.
- dcmqi 3-slice GE CT with a human liver label: the label survives NIfTI → DICOM SEG → NIfTI, also when stored
  LAS; dcmqi's own SEG read onto dcmqi's CT matches the mask.
- Every CT and SEG object we write passes dciodvfy with zero errors.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_helpers import assert_valid_dicom, dcmqi_dir, read_nrrd, tcia_files
from helpers import assert_same_volume
from liverseg.commands import dicom as dicomtools
from liverseg.config import GroupConfig
from liverseg.errors import InputError
from liverseg.imaging import dicom_read, dicom_volume, nifti, seg
from liverseg.imaging.geometry import Volume
from liverseg.stages.group import group_series


def dcm2niix(series_dir, out_dir) -> nib.Nifti1Image:
    if shutil.which("dcm2niix") is None:
        raise AssertionError("dcm2niix is missing: run 'make tools'")
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-o", str(out_dir), "-f", "ref", str(series_dir)],
                   check=True, capture_output=True)
    return nib.load(out_dir / "ref.nii")


def canonical(img: nib.Nifti1Image) -> tuple[np.ndarray, np.ndarray]:
    """World-space comparison form: RAS+ axis order, values as HU (scaling applied), affine."""
    c = nib.as_closest_canonical(img)
    return np.asarray(c.dataobj), c.affine


def digest(paths) -> dict[str, tuple[str, int]]:
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in paths}


@pytest.fixture(scope="module")
def tcia(tmp_path_factory):
    """The TCIA series grouped by ``liverseg dicom group``'s function, and dcm2niix's conversion of it."""
    files = tcia_files()
    tmp = tmp_path_factory.mktemp("tcia")
    before = digest(files)
    report = dicomtools.group_folder(files[0].parent, tmp / "groups", size=64)
    reference = dcm2niix(files[0].parent, tmp / "dcm2niix")
    return {"files": files, "before": before, "report": report, "reference": reference, "tmp": tmp}


def test_tcia_is_grouped_into_three_groups_of_64_covering_every_slice(tcia):
    report = tcia["report"]
    assert report["rejected_files"] == [] and len(report["series"]) == 1
    series = report["series"][0]
    assert series["status"] == "ok" and series["n_slices"] == 134 and series["problems"] == []
    assert series["series_instance_uid"] == "1.3.6.1.4.1.14519.5.2.1.302382790855582445722435410442490497846"
    assert [(g["start"], g["stop"], g["overlap"]) for g in series["groups"]] == [(0, 64, 0), (64, 128, 0),
                                                                                 (70, 134, 58)]
    assert series["dropped_slices"] == 0 and series["slice_spacing_mm"] == 3.0
    folder = tcia["tmp"] / "groups" / series["folder"]
    copied = set()
    for g in series["groups"]:
        names = sorted(p.name for p in (folder / g["name"] / "dicom").iterdir())
        assert len(names) == 64
        copied |= {n.split("_", 1)[1] for n in names}
        # Copies, byte for byte.
        first = folder / g["name"] / "dicom" / names[0]
        assert first.read_bytes() == (tcia["files"][0].parent / first.name.split("_", 1)[1]).read_bytes()
    assert copied == {p.name for p in tcia["files"]}  # every slice is in at least one group
    assert digest(tcia["files"]) == tcia["before"]     # sources untouched (content and mtime)


def test_tcia_groups_equal_dcm2niix_voxel_for_voxel_and_within_1um(tcia):
    ref_data, ref_affine = canonical(tcia["reference"])
    series = tcia["report"]["series"][0]
    folder = tcia["tmp"] / "groups" / series["folder"]
    spacing = np.linalg.norm(ref_affine[:3, :3], axis=0)
    for g in series["groups"]:
        data, affine = canonical(nib.load(folder / g["name"] / "image.nii.gz"))
        assert data.shape == (512, 512, 64)
        np.testing.assert_allclose(affine[:3, :3], ref_affine[:3, :3], atol=1e-3)
        # Where the group's first voxel sits in dcm2niix's grid: a whole number of slices, within 1e-3 mm.
        offset_mm = affine[:3, 3] - ref_affine[:3, 3]
        index = np.linalg.solve(ref_affine[:3, :3], offset_mm)
        assert np.all(np.abs(index - np.round(index)) * spacing <= 1e-3), index
        i, j, k = (int(v) for v in np.round(index))
        assert (i, j, k) == (0, 0, g["start"])  # our stack runs along the normal (+z here), like RAS+
        np.testing.assert_array_equal(data, ref_data[:, :, k:k + 64])
    # Each group's NIfTI has the geometry of its own first slice.
    for g in series["groups"]:
        img = nib.load(folder / g["name"] / "image.nii.gz")
        np.testing.assert_allclose(img.affine[:3, 3], g["origin_ras_mm"], atol=1e-3)


def test_tcia_to_nifti_equals_dcm2niix(tcia):
    out = dicomtools.to_nifti(tcia["files"][0].parent, tcia["tmp"] / "ours.nii").out
    ours_data, ours_affine = canonical(nib.load(out))
    ref_data, ref_affine = canonical(tcia["reference"])
    np.testing.assert_array_equal(ours_data, ref_data)
    assert np.abs(ours_affine - ref_affine).max() <= 1e-3
    # Stored the way dcm2niix stores it: the slices' int16 values, their rescale as scl_slope/scl_inter.
    ours, ref = nib.load(out), tcia["reference"]
    assert ours.get_data_dtype() == ref.get_data_dtype() == np.int16
    assert (ours.dataobj.slope, ours.dataobj.inter) == (ref.dataobj.slope, ref.dataobj.inter) == (1.0, -1000.0)


def test_tcia_nifti_to_dicom_to_nifti_is_lossless_and_valid(tcia):
    tmp = tcia["tmp"]
    image_path = dicomtools.to_nifti(tcia["files"][0].parent, tmp / "round.nii.gz").out
    written = dicomtools.from_nifti(image_path, tmp / "round_dicom")
    files = sorted((written.out / "ct").glob("*.dcm"))
    assert len(files) == 134
    back, report, _ = dicom_volume.series_to_volume(files)
    assert_same_volume(nifti.load(image_path), back)
    assert report.problems == []
    assert_valid_dicom([files[0], files[67], files[-1]])


@pytest.fixture(scope="module")
def dcmqi(tmp_path_factory):
    root = dcmqi_dir()
    tmp = tmp_path_factory.mktemp("dcmqi")
    ct_path = dicomtools.to_nifti(root / "dicom", tmp / "ct.nii.gz").out
    return {"root": root, "tmp": tmp, "ct_path": ct_path, "ct": nifti.load(ct_path),
            "mask": nifti.load(root / "liver_mask.nii.gz", kind="label")}


def test_dcmqi_label_files_agree_with_each_other(dcmqi):
    """The NRRD label (LPS, the source) and the NIfTI mask derived from it hold the same voxels."""
    nrrd = read_nrrd(dcmqi["root"] / "liver_seg.nrrd")
    assert_same_volume(Volume((nrrd.array > 0).astype(np.uint8), nrrd.affine), dcmqi["mask"])
    assert int(dcmqi["mask"].array.sum()) == 107098


def test_dcmqi_seg_read_onto_dcmqi_ct_matches_the_mask(dcmqi):
    ordered = dicom_read.sort_by_position(dicom_read.read_headers(sorted((dcmqi["root"] / "dicom").glob("*.dcm"))))
    label = seg.seg_to_label(pydicom.dcmread(dcmqi["root"] / "liver_DICOM-SEG.dcm"),
                             [h.sop_instance_uid for h in ordered], [h.position for h in ordered])
    assert_same_volume(Volume(label, dcmqi["ct"].affine), dcmqi["mask"])
    # Without the slices' positions to check against, such a SEG is refused rather than trusted.
    with pytest.raises(InputError, match="could not be checked"):
        seg.seg_to_label(pydicom.dcmread(dcmqi["root"] / "liver_DICOM-SEG.dcm"), [h.sop_instance_uid for h in ordered])


@pytest.mark.parametrize("stored", ["as_given", "las"])
def test_dcmqi_nifti_to_dicom_to_nifti_keeps_the_label_aligned(stored, dcmqi):
    mask = dcmqi["mask"]
    label_path = dcmqi["root"] / "liver_mask.nii.gz"
    if stored == "las":
        # The same voxels stored with the first axis reversed (an LAS mask beside an LPS/RAS image).
        flip = np.eye(4)
        flip[0, 0], flip[0, 3] = -1, mask.array.shape[0] - 1
        las = Volume(np.ascontiguousarray(mask.array[::-1]), mask.affine @ flip)
        assert_same_volume(las, mask)
        label_path = nifti.save(dcmqi["tmp"] / "mask_las.nii.gz", las)
        assert nib.aff2axcodes(nib.load(label_path).affine)[0] != nib.aff2axcodes(mask.affine)[0]
    out = dcmqi["tmp"] / f"dicom_{stored}"
    result = dicomtools.from_nifti(dcmqi["ct_path"], out, label_path=label_path)
    files = sorted((out / "ct").glob("*.dcm"))
    grouped = group_series(files, result.seg, GroupConfig(size=3))
    assert_same_volume(dcmqi["ct"], grouped.volume)
    assert_same_volume(Volume(grouped.label, grouped.volume.affine), mask)
    assert_valid_dicom([*files, result.seg])
