"""``liverseg dicom to-nifti | from-nifti | group``: idempotent, never overwriting, one report per folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_helpers import assert_one_line_error, dcmqi_dir, liverseg, rewrite, tcia_files
from liverseg.commands import dicom as dicomtools
from liverseg.imaging.seg import same_seg


def mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_help_lists_the_three_commands():
    done = liverseg("dicom", "--help")
    assert done.returncode == 0
    for action in ("to-nifti", "from-nifti", "group"):
        assert action in done.stdout
    assert "dicom" in liverseg("--help").stdout
    assert liverseg("dicom", "group", "--help").returncode == 0
    usage = liverseg("dicom", "to-nifti")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_to_nifti_is_idempotent_and_never_overwrites(tmp_path):
    series = rewrite(tcia_files()[:5], tmp_path / "series")[0].parent
    out = tmp_path / "ct.nii.gz"
    first = liverseg("dicom", "to-nifti", series, out)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"wrote {out}: 512x512x5 voxels, 1.07422x1.07422x3 mm, from 5 slices")
    stamp = out.stat().st_mtime_ns
    again = liverseg("dicom", "to-nifti", series, out)
    assert again.returncode == 0 and again.stdout.startswith("unchanged") and out.stat().st_mtime_ns == stamp
    other = tmp_path / "other.nii.gz"
    shutil.copy(out, other)
    (series / "0004.dcm").unlink()
    assert_one_line_error(liverseg("dicom", "to-nifti", series, other), "exists with other content",
                          "not overwritten")
    assert other.read_bytes() == out.read_bytes()
    assert liverseg("dicom", "to-nifti", series, other, "--force").returncode == 0
    assert nib.load(other).shape == (512, 512, 4)
    (tmp_path / "folder.nii.gz").mkdir()
    assert_one_line_error(liverseg("dicom", "to-nifti", series, tmp_path / "folder.nii.gz", "--force"),
                          "is a folder")


def test_from_nifti_is_idempotent_and_never_overwrites(tmp_path):
    image = tmp_path / "case_7.nii.gz"
    label = tmp_path / "case_7_label.nii.gz"
    affine = np.diag([-0.9, -0.9, 2.5, 1.0])
    data = np.random.default_rng(0).integers(-1000, 1500, size=(32, 24, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, affine), image)
    mask = np.zeros(data.shape, np.uint8)
    mask[5:20, 4:15, 1:5] = 1
    nib.save(nib.Nifti1Image(mask, affine), label)
    out = tmp_path / "dicom"
    first = liverseg("dicom", "from-nifti", image, out, "--label", label)
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (out / "ct").iterdir()) == [f"{k:04d}.dcm" for k in range(1, 7)]
    assert (out / "seg.dcm").is_file()
    before = mtimes(out)
    again = liverseg("dicom", "from-nifti", image, out, "--label", label)
    assert again.returncode == 0 and again.stdout.startswith("unchanged") and mtimes(out) == before
    # The same image with another namespace (other UIDs) is another series: refused, nothing touched.
    refused = liverseg("dicom", "from-nifti", image, out, "--label", label, "--namespace", "site-b")
    assert_one_line_error(refused, "exists with other content", "not overwritten")
    assert mtimes(out) == before
    # Same input, fresh folder: byte-identical CT files (UIDs from content + code version, no clock, no randomness)
    # and the same SEG, UIDs included; only its creation date/time differ.
    fresh = tmp_path / "fresh"
    assert liverseg("dicom", "from-nifti", image, fresh, "--label", label).returncode == 0
    for path in (out / "ct").iterdir():
        assert path.read_bytes() == (fresh / "ct" / path.name).read_bytes()
    a, b = pydicom.dcmread(out / "seg.dcm"), pydicom.dcmread(fresh / "seg.dcm")
    assert same_seg(a, b)
    for ds in (a, b):
        assert {ds.DimensionOrganizationSequence[0].DimensionOrganizationUID} == {
            item.DimensionOrganizationUID for item in ds.DimensionIndexSequence}
    assert (a.SOPInstanceUID, a.SeriesInstanceUID, a.DimensionOrganizationSequence[0].DimensionOrganizationUID) == (
        b.SOPInstanceUID, b.SeriesInstanceUID, b.DimensionOrganizationSequence[0].DimensionOrganizationUID)


def small_case(folder):
    """(image, label) NIfTI files of a small CT with a liver label."""
    affine = np.diag([-0.9, -0.9, 2.5, 1.0])
    data = np.random.default_rng(1).integers(-1000, 1500, size=(16, 12, 3)).astype(np.int16)
    mask = np.zeros(data.shape, np.uint8)
    mask[3:9, 2:7, 1:3] = 1
    nib.save(nib.Nifti1Image(data, affine), folder / "img.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "lab.nii.gz")
    return folder / "img.nii.gz", folder / "lab.nii.gz"


def test_from_nifti_never_replaces_or_orphans_a_seg(tmp_path):
    """A seg.dcm without ct/ beside it is output too: neither replaced (with --label) nor left beside new CT."""
    image, label = small_case(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "seg.dcm").write_bytes(b"a SEG from another run")
    for extra in ({}, {"label_path": label}):
        with pytest.raises(dicomtools.OutputExists, match=r"seg\.dcm not what this input gives.*not overwritten"):
            dicomtools.from_nifti(image, out, **extra)
    assert sorted(p.name for p in out.iterdir()) == ["seg.dcm"]
    assert (out / "seg.dcm").read_bytes() == b"a SEG from another run"
    dicomtools.from_nifti(image, out, label_path=label, overwrite=True)
    assert pydicom.dcmread(out / "seg.dcm").Modality == "SEG"


def test_from_nifti_refuses_a_patient_id_dicom_cannot_hold(tmp_path):
    """One line, exit 1, nothing written: for --patient-id, and for a file name taken as the patient id."""
    image, _ = small_case(tmp_path)
    named = image.rename(tmp_path / "患者_1.nii.gz")
    out = tmp_path / "out"
    assert_one_line_error(liverseg("dicom", "from-nifti", named, out), "has characters DICOM cannot hold",
                          "it comes from the image file name: give a patient id (--patient-id)")
    assert_one_line_error(liverseg("dicom", "from-nifti", named, out, "--patient-id", "A\\B"),
                          "patient id 'A\\\\B' has characters DICOM cannot hold")
    assert not out.exists()
    assert liverseg("dicom", "from-nifti", named, out, "--patient-id", "P1").returncode == 0
    assert pydicom.dcmread(out / "ct" / "0001.dcm").PatientID == "P1"


def test_group_splits_a_folder_into_series_and_reports_each(tmp_path):
    source = tmp_path / "export"
    rewrite(tcia_files()[:20], source / "a")

    def blank(ds, i):  # a second series with empty Study/Series UIDs: told apart by Frame of Reference
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.2.1125.77"

    rewrite(tcia_files()[30:40], source / "b", edit=blank)
    shutil.copytree(dcmqi_dir() / "dicom", source / "c")           # 3 slices: fewer than a group
    (source / "README.txt").write_text("export notes\n")
    sources_before = mtimes(source)
    out = tmp_path / "groups"
    done = liverseg("dicom", "group", source, out, "--size", "8")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    warning, line = done.stderr.strip().splitlines()
    assert "warning" in warning and "skipped 1 file (no CT slices): README.txt (not a DICOM file)" in warning
    assert "1 of 3 series not grouped (" in line and "fewer than the group size 8" in line
    assert "rejected" not in line and "report.json" in line
    report = json.loads((out / "report.json").read_text())
    by_count = {s["n_slices"]: s for s in report["series"]}
    a, b, c = by_count[20], by_count[10], by_count[3]
    assert a["key"] == "uid" and b["key"] == "geometry" and c["status"] == "failed"
    assert [(g["start"], g["stop"], g["overlap"]) for g in a["groups"]] == [(0, 8, 0), (8, 16, 0), (12, 20, 4)]
    assert [(g["start"], g["stop"], g["overlap"]) for g in b["groups"]] == [(0, 8, 0), (2, 10, 6)]
    assert report["skipped_files"] == [{"file": "README.txt", "reason": "not a DICOM file"}]
    assert report["rejected_files"] == []
    for series in (a, b):
        folder = out / series["folder"]
        assert sorted(p.name for p in folder.iterdir()) == [*(g["name"] for g in series["groups"]), "series.json",
                                                            "volume"]
        for g in series["groups"]:
            assert len(list((folder / g["name"] / "dicom").iterdir())) == 8
            img = nib.load(folder / g["name"] / "image.nii.gz")
            assert img.shape == (512, 512, 8)
            np.testing.assert_allclose(img.affine[:3, 3], g["origin_ras_mm"], atol=1e-3)
    assert mtimes(source) == sources_before  # sources only read
    # Idempotent: a re-run changes nothing and says so.
    written = mtimes(out / a["folder"])
    again = liverseg("dicom", "group", source, out, "--size", "8")
    assert again.returncode == 1  # the same bad series and file are reported again
    report = json.loads((out / "report.json").read_text())
    assert sorted(s["status"] for s in report["series"]) == ["failed", "unchanged", "unchanged"]
    assert mtimes(out / a["folder"]) == written
    # Other parameters into the same folder: refused per series, nothing overwritten.
    other = liverseg("dicom", "group", source, out, "--size", "4")
    assert other.returncode == 1 and "not overwritten" in other.stderr
    assert mtimes(out / a["folder"]) == written


def test_plain_ct_converts_without_importing_numpy(tmp_path):
    """The start-up budget of the two converters (docs/DICOM.md, make bench-dicom): on uncompressed CT slices and an
    int16 NIfTI neither imports numpy (nor importlib.metadata for to-nifti); the outputs are complete."""
    series = rewrite(tcia_files()[:5], tmp_path / "series")[0].parent
    probe = ("import sys; from liverseg.cli import main; code = main(sys.argv[1:]); "
             "print(sorted(m for m in ('numpy', 'importlib.metadata') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe, "dicom", "to-nifti", str(series), str(tmp_path / "ct.nii")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "[]"
    done = subprocess.run([sys.executable, "-c", probe, "dicom", "from-nifti", str(tmp_path / "ct.nii"),
                           str(tmp_path / "dicom")], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "['importlib.metadata']"  # the code version is part of the UIDs
    back = nib.load(tmp_path / "ct.nii")
    assert back.shape == (512, 512, 5) and len(list((tmp_path / "dicom" / "ct").iterdir())) == 5
