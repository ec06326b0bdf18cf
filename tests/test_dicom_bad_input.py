"""Bad input, one test each: a clear one-line error naming the input, the file and the reason.

Each DICOM case is built from six real TCIA slices and run through ``liverseg dicom to-nifti`` (exit 1, one stderr
line, no traceback) and through the library (``InputError`` with the file). The NIfTI cases go through
``liverseg dicom from-nifti``. Stage-level handling (quarantine, other cases go on) is in test_dicom_stages.py.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless

from dicom_helpers import assert_one_line_error, liverseg, rewrite, tcia_files
from liverseg.errors import InputError
from liverseg.imaging import dicom_read, dicom_volume, dicom_write, seg
from liverseg.imaging.geometry import Volume


@pytest.fixture
def six(tmp_path):
    """Six contiguous real slices in ``tmp_path/case``."""
    return rewrite(tcia_files()[40:46], tmp_path / "case")


def check(folder, *needles: str, file: str | None = None) -> None:
    """Both ways in: the command's one line, and the library's InputError."""
    out = folder.parent / "out.nii.gz"
    line = assert_one_line_error(liverseg("dicom", "to-nifti", folder, out), str(folder), *needles)
    assert line.startswith("liverseg dicom to-nifti: ")
    assert not out.exists()  # nothing half-written
    with pytest.raises(InputError) as caught:
        dicom_volume.series_to_volume(dicom_read.series_files(folder))
    for needle in needles:
        assert needle in str(caught.value)
    if file is not None:
        assert caught.value.file == file


def test_non_dicom_file_beside_the_series_is_skipped_and_named(six):
    (six[0].parent / "notes.txt").write_text("scanned on Tuesday\n")
    volume, report, _ = dicom_volume.series_to_volume(dicom_read.series_files(six[0].parent))
    assert volume.array.shape[2] == 6
    assert report.skipped == [dicom_read.Skipped("notes.txt", "not a DICOM file")]


def test_folder_without_a_ct_slice_names_what_it_holds(tmp_path):
    folder = tmp_path / "nothing"
    folder.mkdir()
    (folder / "notes.txt").write_text("scanned on Tuesday\n")
    (folder / "DICOMDIR").write_bytes(bytes(128) + b"DICM" + bytes(40))
    check(folder, "no CT image slices among 2 files (", "notes.txt: not a DICOM file")


def test_truncated_file(six):
    six[2].write_bytes(six[2].read_bytes()[:300_000])  # header intact, pixels cut
    check(six[0].parent, "0002.dcm: pixel data is cut short: 297", "truncated or corrupt", file="0002.dcm")
    six[2].write_bytes(six[2].read_bytes()[:1000])  # cut inside the header
    check(six[0].parent, "0002.dcm: file is truncated", file="0002.dcm")


def test_corrupt_compressed_pixel_data(six, tmp_path):
    def garbage(ds, i):
        ds.compress(JPEG2000Lossless)
        if i == 3:  # keep the encapsulation, destroy the codestream
            from pydicom.encaps import encapsulate
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 200])

    rewrite(six, tmp_path / "j2k", edit=garbage)
    check(tmp_path / "j2k", "0003.dcm: pixel data cannot be decoded (1.2.840.10008.1.2.4.90)", file="0003.dcm")


def test_corrupt_native_pixel_data_length(six, tmp_path):
    rewrite(six, tmp_path / "short", edit=lambda ds, i: setattr(ds, "PixelData", ds.PixelData[:1000])
            if i == 1 else None)
    check(tmp_path / "short", "0001.dcm: pixel data is cut short: 1000 bytes, 512x512 at 16 bits needs 524288",
          file="0001.dcm")


def test_two_series_mixed(six, tmp_path):
    rewrite(six, tmp_path / "mixed", edit=lambda ds, i: setattr(ds, "SeriesInstanceUID", "1.2.826.0.1.99")
            if i >= 3 else None)
    check(tmp_path / "mixed", "2 series mixed in one folder (3 slices starting 0000.dcm, 3 slices starting 0003.dcm)")


def test_missing_slice(six):
    six[3].unlink()
    check(six[0].parent, "missing slices: gap of 6.000 mm (typical 3.000 mm)")


def test_duplicated_slice(six):
    (six[0].parent / "copy_of_0002.dcm").write_bytes(six[2].read_bytes())
    check(six[0].parent, "duplicate slice positions")


def test_non_ct_modality(six, tmp_path):
    def mr(ds, i):
        ds.Modality, ds.SOPClassUID = "MR", "1.2.840.10008.5.1.4.1.1.4"

    rewrite(six, tmp_path / "mr", edit=mr)
    check(tmp_path / "mr", "no CT image slices among 6 files",
          "0000.dcm: not a CT image (Modality MR, SOP class 1.2.840.10008.5.1.4.1.1.4)")


def test_rgb_image(six, tmp_path):
    def rgb(ds, i):
        grey = np.frombuffer(ds.PixelData, "<u2").astype(np.uint8)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.repeat(grey, 3).tobytes()

    rewrite(six, tmp_path / "rgb", edit=rgb)
    check(tmp_path / "rgb", "0000.dcm: not grayscale (3 samples per pixel, RGB photometric interpretation)",
          file="0000.dcm")


def test_gantry_tilt(six, tmp_path):
    def tilt(ds, i):  # slices shifted along y as z advances: a 20 degree tilt, as scanners write it
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + i * 3.0 * math.tan(math.radians(20)), z]
        ds.GantryDetectorTilt = 20

    rewrite(six, tmp_path / "tilt", edit=tilt)
    check(tmp_path / "tilt", "gantry tilt of 20.00 degrees (GantryDetectorTilt 20)")


def test_mixed_orientations(six, tmp_path):
    rewrite(six, tmp_path / "orient", edit=lambda ds, i: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0])
            if i == 4 else None)
    check(tmp_path / "orient", "mixed orientations: 0004.dcm differs from")


def test_uneven_spacing(six, tmp_path):
    def uneven(ds, i):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + (0.3 if i == 3 else 0.0)]

    rewrite(six, tmp_path / "uneven", edit=uneven)
    check(tmp_path / "uneven", "uneven slice spacing: 2.7000–3.3000 mm")


def test_multiframe_through_the_command(six, tmp_path):
    def frames(ds, i):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    rewrite(six[:1], tmp_path / "mf", edit=frames)
    check(tmp_path / "mf", "no CT image slices among 1 file (", "0000.dcm: multi-frame CT (2 frames")


def test_nifti_with_nans(tmp_path):
    data = np.zeros((16, 16, 8), np.float32)
    data[3, 4, 5] = np.nan
    nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 2.0, 1.0])), tmp_path / "nan_case.nii.gz")
    done = liverseg("dicom", "from-nifti", tmp_path / "nan_case.nii.gz", tmp_path / "out")
    assert_one_line_error(done, "nan_case.nii.gz", "image has 1 NaN/Inf voxels")
    assert not (tmp_path / "out").exists()


def test_nifti_label_grid_differs_from_image(tmp_path):
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 7), np.uint8), affine), tmp_path / "lab.nii.gz")
    done = liverseg("dicom", "from-nifti", tmp_path / "img.nii.gz", tmp_path / "out", "--label",
                    tmp_path / "lab.nii.gz")
    assert_one_line_error(done, "img.nii.gz", "label grid (16, 16, 7)", "differs from the image grid (16, 16, 8)")
    assert not (tmp_path / "out").exists()


def test_seg_covering_only_some_slices_of_the_series():
    image = Volume(np.zeros((16, 16, 4), np.int16), np.diag([0.8, 0.8, 2.5, 1.0]))
    series = dicom_write.encode_series(image, dicom_write.SeriesInfo("p1", "ns-partial"))
    sources = series.datasets(with_pixels=False)
    label = np.zeros((16, 16, 3), np.uint8)
    label[2:5, 2:5, 1] = 1
    partial = seg.label_to_seg(label, sources[:3], "ns-partial")
    with pytest.raises(InputError, match=r"SEG covers 3 of the series' 4 slices \(1 missing") as caught:
        seg.seg_to_label(partial, series.sop_instance_uids, [[float(v) for v in ds.ImagePositionPatient]
                                                            for ds in sources])
    assert f"the first SOP Instance UID {series.sop_instance_uids[3]})" in str(caught.value)
