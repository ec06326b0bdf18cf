"""The RT Structure Set writer: the contours of a human liver label (dcmqi) and of awkward masks enclose exactly the
mask's voxels (our even-odd reader, and plastimatch reading nested contours as holes); 0 dciodvfy errors; the same
namespace gives the same object; a series without UIDs gets no SEG or RTSTRUCT, and says why."""

from __future__ import annotations

from datetime import datetime, timezone

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_helpers import centres_inside, dciodvfy, dcmqi_dir, nifti_to_dicom, plastimatch_label, rtstruct_label
from liverseg.imaging import dicom_read
from liverseg.imaging.derived import DERIVED_FILES, write_derived
from liverseg.imaging.geometry import Volume
from liverseg.imaging.rtstruct import label_to_rtstruct, slice_contours

CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def dcmqi_slices():
    folder = dcmqi_dir() / "dicom"
    ordered = dicom_read.sort_by_position(dicom_read.read_headers(folder.glob("*.dcm")))
    return folder, [h.ds for h in ordered]


def test_a_human_liver_label_comes_back_voxel_for_voxel(tmp_path):
    folder, slices = dcmqi_slices()
    mask = (np.asarray(nib.load(dcmqi_dir() / "liver_mask.nii.gz").dataobj) > 0).astype(np.uint8)
    ds = label_to_rtstruct(mask, slices, "test|dcmqi", algorithm="liverseg test", created=CREATED)
    path = tmp_path / "rtstruct.dcm"
    ds.save_as(path, enforce_file_format=True)
    errors, _ = dciodvfy(path)
    assert errors == []
    back = pydicom.dcmread(path)
    np.testing.assert_array_equal(rtstruct_label(back, slices), mask > 0)
    np.testing.assert_array_equal(plastimatch_label(path, folder, tmp_path), mask > 0)
    # plastimatch's default ORs the contours of a slice: the label's holes (vessels) are filled, nothing else moves.
    union = plastimatch_label(path, folder, tmp_path / "or", xor=False)
    assert not (mask.astype(bool) & ~union).any()
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == slices[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == \
        {str(s.SOPInstanceUID) for s in slices}
    assert back.StructureSetROISequence[0].ROIGenerationAlgorithm == "AUTOMATIC"
    assert back.RTROIObservationsSequence[0].RTROIInterpretedType == "ORGAN"
    # Same namespace, same creation time: the very same object; another namespace: other UIDs.
    assert label_to_rtstruct(mask, slices, "test|dcmqi", algorithm="liverseg test", created=CREATED) == ds
    other = label_to_rtstruct(mask, slices, "test|other", created=CREATED)
    assert other.SOPInstanceUID != ds.SOPInstanceUID and other.SeriesInstanceUID != ds.SeriesInstanceUID


def test_holes_islands_diagonals_and_the_image_border_are_exact():
    rng = np.random.default_rng(4)
    mask = np.zeros((40, 30), dtype=bool)
    mask[5:30, 4:20] = True
    mask[10:15, 8:12] = False            # a hole
    mask[12, 10] = True                  # an island in the hole
    mask[0:6, 25:30] = True              # touching the border
    mask[20, 24], mask[21, 25] = True, True  # touching only diagonally
    mask[32:40, :] = rng.random((8, 30)) > 0.5  # noise
    contours = slice_contours(mask)
    assert contours and all(c.shape[1] == 2 for c in contours)
    inside = np.zeros_like(mask)
    for contour in contours:
        inside ^= centres_inside(contour, *mask.shape)
    np.testing.assert_array_equal(inside, mask)
    assert slice_contours(np.zeros((4, 4), dtype=bool)) == []


def test_an_empty_mask_gives_a_valid_structure_set_without_contours(tmp_path):
    _, slices = dcmqi_slices()
    ds = label_to_rtstruct(np.zeros((512, 512, 3), dtype=np.uint8), slices, "empty", created=CREATED)
    assert "ContourSequence" not in ds.ROIContourSequence[0]
    path = tmp_path / "empty.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy(path)[0] == []


def test_a_series_without_uids_gets_neither_object_and_the_reason(tmp_path):
    from liverseg.data.synth import GridSpec, make_phantom

    p = make_phantom(np.random.default_rng(1), GridSpec((64, 64, 12), (1.0, 1.0, 3.0), (True, False, False)))
    nifti_to_dicom(Volume(p.image, p.affine), None, "case", "ns-no-uids", tmp_path / "study")
    headers = dicom_read.sort_by_position(dicom_read.read_headers((tmp_path / "study" / "ct").glob("*.dcm")))
    slices = [h.ds for h in headers]
    for ds in slices:
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ""
    out = tmp_path / "out"
    out.mkdir()
    done = write_derived(p.label.astype(np.uint8), slices, "ns", out)
    assert done.written == [] and set(done.skipped) == set(DERIVED_FILES)
    reason = done.skipped["seg.dcm"]
    assert "StudyInstanceUID (empty in 12 of 12 slices)" in reason and "SOPInstanceUID" in reason
    assert "cannot reference instances that have no UIDs" in reason and "\n" not in reason
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("bad", [np.zeros((512, 512, 2)), np.zeros((100, 512, 3)), np.full((512, 512, 3), 7)])
def test_labels_that_do_not_fit_the_slices_are_refused(bad):
    from liverseg.errors import InputError

    _, slices = dcmqi_slices()
    with pytest.raises(InputError):
        label_to_rtstruct(bad.astype(np.uint8), slices, "bad")
