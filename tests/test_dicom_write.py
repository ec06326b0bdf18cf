"""NIfTI → DICOM CT: rescale that never overflows, exact geometry for any orientation, every mandatory module,
deterministic UIDs, and zero dciodvfy errors."""

from __future__ import annotations

import io

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_helpers import LPS_FROM_RAS, assert_valid_dicom, nifti_to_dicom
from helpers import assert_same_volume, in_grid_of
from liverseg.errors import InputError
from liverseg.imaging import dicom_volume, dicom_write, nifti, nifti1
from liverseg.imaging.geometry import Volume

INFO = dicom_write.SeriesInfo(patient_id="case_w", uid_namespace="ns-write")


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    r = np.eye(4)
    r[:3, :3] = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    return r


def affine_of(directions: np.ndarray, spacing, origin) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = directions * np.asarray(spacing, float)[None, :]
    a[:3, 3] = origin
    return a


ORIENTATIONS = {
    "ras": np.eye(3),
    "las": np.diag([-1.0, 1, 1]),
    "lps": np.diag([-1.0, -1, 1]),
    "inferior_first": np.diag([1.0, 1, -1]),
    "sagittal": np.array([[0, 0, 1.0], [1, 0, 0], [0, 1, 0]]),       # slices along x
    "coronal_flipped": np.array([[1.0, 0, 0], [0, 0, -1], [0, -1, 0]]),
    "oblique": rotation([1, 2, 3], 23)[:3, :3],
    "oblique_left_handed": rotation([0.3, -1, 0.2], 61)[:3, :3] @ np.diag([1.0, -1, 1]),
}


def ramp(shape=(20, 24, 7), dtype=np.int16) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1024, 3000, size=shape).astype(dtype)


def stored_back(ds) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


# -- rescale -------------------------------------------------------------------------------------------------
EXTREMES = {
    "int16_full": np.array([-32768, -1, 0, 32767], dtype=np.int16),
    "uint16_full": np.array([0, 1, 40000, 65535], dtype=np.uint16),
    "int32_65535_wide": np.array([-70000, -4465, 0], dtype=np.int32),          # exactly 65535 apart
    "int32_wide": np.array([-2**31, 0, 2**31 - 1], dtype=np.int32),           # quantised: > 16 bits
    "int64_huge": np.array([-(2**62), 5, 2**62], dtype=np.int64),
    "float_hu_integral": np.array([-1024.0, 0.0, 3071.0], dtype=np.float32),
    "float_fractional": np.array([-1024.25, 0.5, 3071.75, 12.125], dtype=np.float32),
    "float_tiny_range": np.array([1.0, 1.0 + 1e-7, 1.0 + 2e-7], dtype=np.float64),
    "float_huge": np.array([-1e300, 0.0, 1e300], dtype=np.float64),
    "float_constant": np.array([0.3, 0.3], dtype=np.float64),
    "uint8": np.array([0, 255], dtype=np.uint8),
}


@pytest.mark.parametrize("name", list(EXTREMES))
def test_rescale_never_overflows_and_errs_at_most_half_a_step(name):
    hu = EXTREMES[name]
    r = dicom_write.choose_rescale(hu)
    assert r.stored.dtype in (np.int16, np.uint16)
    slope = float(dicom_write._ds_decimal(r.slope))
    intercept = float(dicom_write._ds_decimal(r.intercept))
    assert (slope, intercept) == (r.slope, r.intercept)  # what is written is what was used
    back = r.stored.astype(np.float64) * slope + intercept
    err = np.abs(back - hu.astype(np.float64))
    exact = hu.dtype.kind in "iu" and int(hu.max()) - int(hu.min()) <= 65535
    if exact or name == "float_hu_integral":
        np.testing.assert_array_equal(back, hu.astype(np.float64))
    else:
        assert err.max() <= slope / 2 * (1 + 1e-9) + abs(intercept) * 1e-14 + 1e-300, (err.max(), slope)
    # Order is kept: the quantisation never swaps two values.
    assert np.all(np.diff(back[np.argsort(hu, kind="stable")]) >= 0)


def test_a_range_ds_rounding_closes_is_one_value():
    """0.3 and the float just below it are both "0.3" as DS: nothing left to spread over uint16 (no slope 0)."""
    r = dicom_write.choose_rescale(np.array([np.nextafter(0.3, 0), 0.3]))
    assert (r.slope, r.intercept) == (1.0, 0.3) and not r.stored.any()


def test_patient_ids_dicom_cannot_hold_are_refused():
    """The files declare Latin-1; a backslash would split the ID into two values."""
    for patient_id in ("患者_1", "A\\B", "A\nB"):
        with pytest.raises(InputError, match="has characters DICOM cannot hold"):
            dicom_write.SeriesInfo(patient_id=patient_id, uid_namespace="ns")
    info = dicom_write.SeriesInfo(patient_id="Müller-Åse", uid_namespace="ns")
    ds = dicom_write.encode_series(Volume(ramp((4, 4, 2)), np.eye(4)), info).datasets(with_pixels=False)[0]
    assert (ds.PatientID, str(ds.PatientName)) == ("Müller-Åse", "Müller-Åse^")


def test_fractional_hu_survive_a_file_round_trip(tmp_path):
    hu = ramp(dtype=np.float32) + np.float32(0.25)
    image = Volume(hu, np.diag([0.7, 0.7, 2.0, 1.0]))
    paths = dicom_write.encode_series(image, INFO).write(tmp_path)
    ds = pydicom.dcmread(paths[0])
    assert ds.PixelRepresentation == 0 and float(ds.RescaleSlope) < 1
    volume, _, _ = dicom_volume.series_to_volume(paths)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, hu, atol=float(ds.RescaleSlope) / 2 + 1e-3)
    assert_valid_dicom(paths[:1])


# -- geometry ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_geometry_is_exact_for_any_orientation(orientation, tmp_path):
    affine = affine_of(ORIENTATIONS[orientation], (0.7, 0.82, 2.5), (-101.25, 37.5, -412.0))
    image = Volume(ramp(), affine)
    paths = dicom_write.encode_series(image, INFO).write(tmp_path)
    volume, report, _ = dicom_volume.series_to_volume(paths)
    assert_same_volume(image, volume)  # every voxel at the same place, world space
    lps = LPS_FROM_RAS @ affine
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], (lps @ [0, 0, k, 1])[:3],
                                   atol=1e-9)
    ds = pydicom.dcmread(paths[0], stop_before_pixels=True)
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient],
                               [*(lps[:3, 0] / 0.7), *(lps[:3, 1] / 0.82)], atol=1e-12)
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx([0.82, 0.7], abs=1e-12)  # [Δrow, Δcol]
    assert float(ds.SliceThickness) == pytest.approx(2.5, abs=1e-12)
    assert report.problems == []


def test_sheared_grid_is_refused():
    affine = np.eye(4)
    affine[0, 2] = 0.5  # slices shifted sideways: a tilted gantry's grid
    with pytest.raises(InputError, match=r"sheared by 26.57 degrees .*\(gantry tilt\)"):
        dicom_write.encode_series(Volume(ramp(), affine), INFO)


# -- modules, UIDs, validity ---------------------------------------------------------------------------------
MANDATORY = {
    "Patient": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex"],
    "General Study": ["StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
                      "AccessionNumber"],
    "General Series": ["Modality", "SeriesInstanceUID", "SeriesNumber"],
    "Frame of Reference": ["FrameOfReferenceUID", "PositionReferenceIndicator"],
    "General Equipment": ["Manufacturer"],
    "General Image": ["InstanceNumber"],
    "Image Plane": ["PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness"],
    "Image Pixel": ["SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation", "PixelData"],
    "CT Image": ["ImageType", "RescaleIntercept", "RescaleSlope", "KVP", "AcquisitionNumber"],
    "SOP Common": ["SOPClassUID", "SOPInstanceUID", "SpecificCharacterSet"],
}


def test_every_mandatory_module_is_present_and_valid(tmp_path):
    paths = dicom_write.encode_series(Volume(ramp(), np.diag([0.8, 0.8, 3.0, 1.0])), INFO).write(tmp_path)
    ds = pydicom.dcmread(paths[0])
    missing = {module: [a for a in attrs if a not in ds] for module, attrs in MANDATORY.items()}
    assert not any(missing.values()), missing
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and ds.Modality == "CT"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert_valid_dicom(paths)


def test_our_bytes_equal_what_pydicom_writes_for_the_same_data_set(tmp_path):
    """The hand-encoded files are canonical Part 10: pydicom re-writing the parsed data set gives the same bytes."""
    series = dicom_write.encode_series(Volume(ramp(), np.diag([0.8, 0.8, 3.0, 1.0])), INFO)
    for k in (0, len(series.parts) - 1):
        ours = series.file_bytes(k)
        buffer = io.BytesIO()
        pydicom.dcmread(io.BytesIO(ours)).save_as(buffer, enforce_file_format=True)
        assert buffer.getvalue() == ours


def test_uids_are_deterministic_and_namespaced(tmp_path):
    image = Volume(ramp(), np.diag([0.8, 0.8, 3.0, 1.0]))
    a = dicom_write.encode_series(image, INFO)
    again = dicom_write.encode_series(image, INFO)
    other = dicom_write.encode_series(image, dicom_write.SeriesInfo(patient_id="case_w", uid_namespace="ns-2"))
    assert [a.file_bytes(k) for k in range(7)] == [again.file_bytes(k) for k in range(7)]  # idempotent
    uids_a = {*a.sop_instance_uids, a.study_instance_uid, a.series_instance_uid, a.frame_of_reference_uid}
    uids_o = {*other.sop_instance_uids, other.study_instance_uid, other.series_instance_uid,
              other.frame_of_reference_uid}
    assert len(uids_a) == 7 + 3 and not uids_a & uids_o
    for uid in uids_a:
        assert len(uid) <= 64 and uid.startswith("2.25.") and all(p == "0" or not p.startswith("0")
                                                                   for p in uid.split("."))


def test_seg_beside_the_series_is_valid_and_aligned(tmp_path):
    image = Volume(ramp(), affine_of(ORIENTATIONS["oblique"], (0.9, 0.9, 2.0), (10, 20, 30)))
    label = np.zeros(image.array.shape, np.uint8)
    label[4:12, 5:15, 1:5] = 1
    label[6:8, 7:9, 2:4] = 2
    nifti_to_dicom(image, Volume(label, image.affine), "case_w", "ns-seg", tmp_path)
    assert_valid_dicom([tmp_path / "seg.dcm", tmp_path / "ct" / "0001.dcm"])
    from liverseg.config import GroupConfig
    from liverseg.stages.group import group_series
    grouped = group_series(sorted((tmp_path / "ct").glob("*.dcm")), tmp_path / "seg.dcm", GroupConfig(size=7))
    assert_same_volume(Volume(label, image.affine), Volume(grouped.label, grouped.volume.affine))


def test_a_case_encoded_twice_with_a_creation_time_gives_the_same_bytes():
    """Two pods converting one case at once both upload: only identical bytes keep each manifest's checksums true."""
    from datetime import datetime, timezone

    from liverseg.stages.convert import encode_case

    image = Volume(ramp(), affine_of(ORIENTATIONS["ras"], (0.9, 0.9, 2.0), (0, 0, 0)))
    label = np.zeros(image.array.shape, np.uint8)
    label[4:12, 5:15, 1:5] = 1
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    first, second = (encode_case(image, Volume(label, image.affine), INFO, created=created) for _ in range(2))
    assert first.seg == second.seg
    assert files_of(first.series) == files_of(second.series)


# -- NIfTI voxels that already are CT stored values: encoded from their bytes, without numpy ----------------
def nifti_file(path, array, affine, *, dtype=np.int16, endianness="<", scaling=None):
    img = nib.Nifti1Image(array, affine, header=nib.Nifti1Header(endianness=endianness))
    img.set_data_dtype(dtype)
    if scaling is not None:
        img.header.set_slope_inter(*scaling)
    nib.save(img, path)
    return path


def encoded(path) -> tuple[dicom_write.EncodedSeries | None, dicom_write.EncodedSeries]:
    """(from the bytes as stored, or None when the voxels are not CT stored values; from the decoded volume)."""
    header, voxels, _ = nifti1.read_checked(path)
    stored = dicom_write.encode_stored(header, voxels, INFO) if dicom_write.stored_rescale(header) else None
    return stored, dicom_write.encode_series(nifti.load_fast(path), INFO)


def files_of(series) -> list[bytes]:
    return [series.file_bytes(k) for k in range(len(series.parts))]


@pytest.mark.parametrize("orientation", ["lps", "sagittal", "oblique_left_handed"])
def test_unscaled_int16_bytes_as_stored_equal_the_decoded_encoding(orientation, tmp_path):
    affine = affine_of(ORIENTATIONS[orientation], (0.7, 0.82, 2.5), (-101.25, 37.5, -412.0))
    little = nifti_file(tmp_path / "le.nii", ramp(), affine)
    big = nifti_file(tmp_path / "be.nii.gz", ramp(), affine, endianness=">")
    assert nifti1.read(big)[0].dtype == ">i2"
    stored, decoded = encoded(little)
    assert files_of(stored) == files_of(decoded)
    assert files_of(encoded(big)[0]) == files_of(decoded)


@pytest.mark.parametrize(("dtype", "scaling", "signed"), [(np.int16, (1.0, -1024.0), 1), (np.uint16, (1.0, 0.0), 0),
                                                          (np.int16, (0.5, -1000.0), 1)])
def test_stored_values_keep_their_scaling_as_the_rescale(dtype, scaling, signed, tmp_path):
    """dcm2niix-style NIfTI (stored values, scl_slope/scl_inter) become the pixel data and the Rescale as they are."""
    raw = np.abs(ramp()) if dtype == np.uint16 else ramp()
    path = nifti_file(tmp_path / "s.nii", raw, np.diag([-0.8, -0.8, 2.5, 1.0]), dtype=dtype, scaling=scaling)
    stored, _ = encoded(path)
    paths = stored.write(tmp_path / "ct")
    ds = pydicom.dcmread(paths[0])
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept), ds.PixelRepresentation) == (*scaling, signed)
    np.testing.assert_array_equal(ds.pixel_array, raw[:, :, 0].T)
    volume, _, _ = dicom_volume.series_to_volume(paths)
    assert_same_volume(nifti.load_fast(path), volume)
    assert_valid_dicom(paths[:1])


def test_scaling_ds_cannot_hold_and_other_types_go_through_choose_rescale(tmp_path):
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    inexact = nifti_file(tmp_path / "i.nii", ramp(), affine, scaling=(0.1, 0.0))  # float32 0.1: 17 digits
    floats = nifti_file(tmp_path / "f.nii", ramp().astype(np.float32), affine, dtype=np.float32)
    for path in (inexact, floats):
        stored, decoded = encoded(path)
        assert stored is None  # choose_rescale: uint16 spread over the range, |error| <= slope / 2
        back = dicom_volume.series_to_volume(decoded.write(tmp_path / path.stem))[0]
        slope = float(pydicom.dcmread(tmp_path / path.stem / "0001.dcm").RescaleSlope)
        np.testing.assert_allclose(in_grid_of(nifti.load_fast(path), back), back.array, atol=slope / 2 + 1e-3)
