"""De-identification (PS3.15 basic profile): identifiers gone, pseudonyms, date shifts and UIDs consistent
across files and runs with one key, the images and the SEG's references intact."""

from __future__ import annotations

import shutil
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_helpers import nifti_to_dicom
from liverseg.data.synth import GridSpec, make_phantom
from liverseg.imaging import dicom_read, dicom_volume
from liverseg.imaging.deid import Deidentifier
from liverseg.imaging.geometry import Volume

IDENTIFIERS = ("MRN-0042-X", "Doe^Jane", "General Hospital of Somewhere", "ACC778899")


@pytest.fixture
def study(tmp_path):
    """A CT series + SEG with a real-looking identity, a study date and a private tag."""
    p = make_phantom(np.random.default_rng(2), GridSpec((64, 64, 20), (1.0, 1.0, 3.0), (True, True, False)))
    nifti_to_dicom(Volume(p.image, p.affine), Volume(p.label, p.affine), "x", "ns-deid", tmp_path / "in")
    for path in sorted((tmp_path / "in").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName, ds.InstitutionName = IDENTIFIERS[0], IDENTIFIERS[1], IDENTIFIERS[2]
        ds.AccessionNumber, ds.StudyDate, ds.PatientBirthDate = IDENTIFIERS[3], "20240315", "19600101"
        ds.add_new(0x00990010, "LO", "ACME PRIVATE")
        ds.add_new(0x00991001, "LO", IDENTIFIERS[0])
        ds.save_as(path)
    return tmp_path / "in"


def deidentify(src, out, key_file):
    return subprocess.run([sys.executable, "-m", "liverseg", "deidentify", str(src), str(out), "--key-file",
                           str(key_file)], capture_output=True, text=True, check=False, timeout=300)


def test_identifiers_removed_and_mapping_consistent(study, tmp_path):
    key = tmp_path / "key"
    key.write_text("a-long-enough-secret-key-0123456789")
    done = deidentify(study, tmp_path / "out", key)
    assert done.returncode == 0, done.stderr
    files = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(files) == len(list(study.rglob("*.dcm")))
    for path in files:
        raw = path.read_bytes()
        assert not any(identifier.encode() in raw for identifier in IDENTIFIERS), path
        assert b"a-long-enough-secret" not in raw
    datasets = [pydicom.dcmread(p) for p in files]
    assert len({str(ds.PatientID) for ds in datasets}) == 1 and str(datasets[0].PatientID).startswith("ANON-")
    assert {ds.StudyDate for ds in datasets} == {datasets[0].StudyDate} != {"20240315"}
    assert all(ds.PatientIdentityRemoved == "YES" and "PatientAge" not in ds for ds in datasets)
    assert all(not any(e.tag.is_private for e in ds) for ds in datasets)

    # The images are untouched and the SEG still lands on its CT: its references were remapped like the CT's UIDs.
    original = dicom_volume.series_to_volume(sorted((study / "ct").glob("*.dcm")))[0]
    anonymised, _, ordered = dicom_volume.series_to_volume(sorted((tmp_path / "out" / "ct").glob("*.dcm")))
    np.testing.assert_array_equal(original.array, anonymised.array)
    np.testing.assert_allclose(original.affine, anonymised.affine)
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    frames = seg.get_pixels_by_source_instance([h.sop_instance_uid for h in ordered], combine_segments=True,
                                               skip_overlap_checks=True)
    before = hd.seg.segread(study / "seg.dcm")
    ordered_before = dicom_read.sort_by_position(dicom_read.read_headers(sorted((study / "ct").glob("*.dcm"))))
    expected = before.get_pixels_by_source_instance([h.sop_instance_uid for h in ordered_before],
                                                    combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(frames, expected)
    if shutil.which("dciodvfy"):
        for path in (files[0], tmp_path / "out" / "seg.dcm"):
            check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr

    # Same key: the same output again. Another key: other pseudonyms and UIDs.
    assert deidentify(study, tmp_path / "again", key).returncode == 0
    assert (tmp_path / "again" / "ct" / "0001.dcm").read_bytes() == (tmp_path / "out" / "ct" / "0001.dcm").read_bytes()
    other = tmp_path / "other-key"
    other.write_text("another-secret-key-of-enough-length")
    assert deidentify(study, tmp_path / "other", other).returncode == 0
    other_ds = pydicom.dcmread(tmp_path / "other" / "ct" / "0001.dcm")
    assert other_ds.PatientID != datasets[0].PatientID and other_ds.SOPInstanceUID != datasets[0].SOPInstanceUID


def test_refuses_short_keys_and_existing_output(study, tmp_path):
    short = tmp_path / "short"
    short.write_text("tiny")
    done = deidentify(study, tmp_path / "out", short)
    assert done.returncode == 2 and "at least 16 bytes" in done.stderr
    key = tmp_path / "key"
    key.write_text("a-long-enough-secret-key-0123456789")
    assert deidentify(study, tmp_path / "out", key).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    # An interrupted run is simply run again: the same key gives the same files.
    first = sorted((tmp_path / "out").rglob("*.dcm"))[0]
    first.unlink()
    done = deidentify(study, tmp_path / "out", key)
    assert done.returncode == 0 and "1 files de-identified" in done.stdout
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
    other = tmp_path / "other-key"
    other.write_text("another-long-enough-secret-key-987")
    done = deidentify(study, tmp_path / "out", other)
    assert done.returncode == 1 and "not overwritten" in done.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


def test_an_unreadable_file_is_set_aside_and_the_others_go_on(study, tmp_path):
    key = tmp_path / "key"
    key.write_text("a-long-enough-secret-key-0123456789")
    (study / "ct" / "0002.dcm").write_bytes(b"not a dicom file at all")
    done = deidentify(study, tmp_path / "out", key)
    assert done.returncode == 1 and "0002.dcm: not a readable DICOM file" in done.stderr
    written = {p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.dcm")}
    assert len(written) == len(list(study.rglob("*.dcm"))) - 1 and not any("partial" in str(p) for p in written)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_malformed_and_unshiftable_dates_are_removed_not_fatal():
    """Dates that are not calendar dates, or would move before year 1, are emptied (the profile allows removing
    them); a year below 1000 keeps its four digits."""
    ds = Dataset()
    ds.PatientID = "P7"
    ds.PatientBirthDate, ds.StudyDate, ds.SeriesDate = "00000000", "20230230", "00010101"
    ds.AcquisitionDateTime, ds.ContentDate = "00010101120000", "05000101"
    Deidentifier(b"a-long-enough-secret-key-0123456789").apply(ds)
    assert (ds.PatientBirthDate, ds.StudyDate, ds.SeriesDate, ds.AcquisitionDateTime) == ("", "", "", "")
    assert len(ds.ContentDate) == 8 and ds.ContentDate.startswith("049")  # 1-3650 days before 0500-01-01
