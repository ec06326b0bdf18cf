"""The bad-input corpus: many kinds of malformed NIfTI, DICOM and dataset.json, through the real paths.

- dataset.json kinds go through ``liverseg ingest`` (set aside with a reason, the rest uploaded);
- NIfTI kinds go through the convert stage process (quarantined with a reason, the other cases converted);
- DICOM kinds go through the infer stage in study mode (a hospital uploads studies to the store) and through
  ``liverseg dicom to-nifti`` (exit 1, one stderr line, no traceback);
- archive quirks (several series in a study, a localizer, reformats, no CT, a series split across two studies, a
  study the archive lacks) go through the infer stage with DICOMweb study URLs against a real Orthanc, and a
  series without UIDs through ``liverseg segment`` (exit 0: mask, overlays, report; no SEG/RTSTRUCT, and why).

Every case is accounted for: in = ok + quarantined (+ set aside at ingest); lost = 0. Rows go to
.liverseg/reliability/bad-inputs.json and archive-inputs.json for docs/RELIABILITY.md.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from dicom_helpers import nifti_to_dicom
from liverseg.config import load_profile
from liverseg.imaging.geometry import Volume
from liverseg.ml.model import build_unet
from liverseg.ml.modelfile import to_bytes

pytestmark = pytest.mark.slow


def liverseg(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "liverseg", *map(str, args)], capture_output=True, text=True,
                          env={**env, "PATH": "/usr/bin:/bin"}, cwd=cwd, check=False, timeout=600)


def save(path, array, affine, qform=1, sform=1):
    img = nib.Nifti1Image(array, None)  # no affine yet: a singular one cannot become a qform
    img.header.set_sform(affine, code=sform)
    if qform:
        img.header.set_qform(affine, code=qform)
    nib.save(img, path)


# -- NIfTI kinds: (name, what to write for image and label, expected words in the reason) ---------------------
def nifti_kinds(image: nib.Nifti1Image, label: nib.Nifti1Image):
    img, lab, aff = np.asarray(image.dataobj), np.asarray(label.dataobj), image.affine

    def both(image_writer, label_writer=None):
        def write(root, case):
            image_writer(root / "imagesTr" / f"{case}.nii.gz")
            (label_writer or (lambda p: save(p, lab, aff)))(root / "labelsTr" / f"{case}.nii.gz")
        return write

    sheared = aff.copy()
    sheared[0, 2] = 0.8 * aff[2, 2]
    bad_values = lab.copy()
    bad_values[lab == 1] = 5
    return [
        ("truncated gzip", both(lambda p: p.write_bytes(gzip.compress(b"\x5c\x01" + b"x" * 4000)[:200])),
         "not a readable NIfTI"),
        ("wrong magic", both(lambda p: p.write_bytes(gzip.compress(b"\x5c\x01\x00\x00" + b"\x00" * 344 + b"x" * 64))),
         "not a readable NIfTI"),
        ("not gzip at all", both(lambda p: p.write_text("this is a text file")), "not a readable NIfTI"),
        ("NaN voxels", both(lambda p: save(p, np.where(lab == 1, np.nan, img.astype(np.float32)), aff)), "NaN"),
        ("Inf voxels", both(lambda p: save(p, np.where(lab == 1, np.inf, img.astype(np.float32)), aff)), "NaN/Inf"),
        ("2D image", both(lambda p: save(p, img[:, :, 0], aff)), "must be 3D"),
        ("4D image", both(lambda p: save(p, np.stack([img, img], -1), aff)), "must be 3D"),
        ("zero-size axis", both(lambda p: save(p, img[:, :, :0], aff)), "empty axis"),
        ("absurd spacing", both(lambda p: save(p, img, aff @ np.diag([1000, 1000, 1000, 1.0]))), "spacing"),
        ("no qform or sform", both(lambda p: save(p, img, aff, qform=0, sform=0)), "neither qform nor sform"),
        ("singular affine", both(lambda p: save(p, img, aff @ np.diag([1, 1, 0, 1.0]), qform=0)), "singular"),
        ("sheared grid (tilt)", both(lambda p: save(p, img, sheared), lambda p: save(p, lab, sheared)), "sheared"),
        ("label values outside {0,1,2}", both(lambda p: save(p, img, aff), lambda p: save(p, bad_values, aff)),
         "outside {0, 1, 2}"),
        ("label grid shape differs", both(lambda p: save(p, img, aff), lambda p: save(p, lab[:-2], aff)),
         "differs from the image grid"),
        ("label grid shifted", both(lambda p: save(p, img, aff),
                                    lambda p: save(p, lab, aff @ np.array([[1, 0, 0, 7.0], [0, 1, 0, 0],
                                                                           [0, 0, 1, 0], [0, 0, 0, 1]]))),
         "differs from the image grid"),
        ("empty label", both(lambda p: save(p, img, aff), lambda p: save(p, np.zeros_like(lab), aff)),
         "label is empty"),
        ("non-integer label", both(lambda p: save(p, img, aff), lambda p: save(p, lab * 0.5, aff)),
         "non-integer"),
        ("label not a NIfTI", both(lambda p: save(p, img, aff), lambda p: p.write_bytes(b"\x00" * 10)),
         "not a readable NIfTI"),
    ]


# -- dataset.json kinds: (name, entry or None, expected words) ------------------------------------------------
MSD_KINDS = [
    ("missing labelsTr entry", {"image": "./imagesTr/msd_a.nii.gz"}, "no 'label'"),
    ("label file missing", {"image": "./imagesTr/msd_b.nii.gz", "label": "./labelsTr/gone.nii.gz"},
     "label file missing"),
    ("image file missing", {"image": "./imagesTr/liver_404.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
     "image file missing"),
    ("duplicated case id", {"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
     "duplicate case id"),
    ("path traversal", {"image": "../../../etc/liver_9.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
     "outside the data set folder"),
    ("unsafe case id", {"image": "./imagesTr/..%2Fescape.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
     "invalid case id '..%2Fescape'"),
    ("non-ASCII case id", {"image": "./imagesTr/caf\u00e9.nii.gz", "label": "./labelsTr/liver_0.nii.gz"},
     "invalid case id 'caf\u00e9'"),
    ("entry not an object", "liver_7", "no 'image'"),
]


# -- DICOM kinds: (name, edit of a good series folder, expected words) ----------------------------------------
def _edit_files(edit):
    def apply(folder: Path):
        files = sorted(folder.glob("*.dcm"))
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            if edit(ds, i, len(files)) is not False:
                ds.save_as(f)
    return apply


def _drop(index):
    return lambda folder: sorted(folder.glob("*.dcm"))[index].unlink()


def _truncate(folder: Path):
    f = sorted(folder.glob("*.dcm"))[3]
    f.write_bytes(f.read_bytes()[:2000])


def _duplicate(folder: Path):
    files = sorted(folder.glob("*.dcm"))
    ds = pydicom.dcmread(files[4])
    ds.SOPInstanceUID = ds.SOPInstanceUID + ".1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(folder / "9999.dcm")


def _second_series(folder: Path):
    ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
    ds.save_as(folder / "other.dcm")


def _tilt(ds, i, n):
    pos = [float(v) for v in ds.ImagePositionPatient]
    ds.ImagePositionPatient = [pos[0], pos[1] + 0.5 * i, pos[2]]


def _rgb(ds, i, n):
    if i == 0:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.PixelData = ds.PixelData * 3


def _corrupt_pixels(ds, i, n):
    if i == 2:
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]


DICOM_KINDS = [
    ("truncated file", _truncate, "truncated"),
    ("corrupt pixel data", _edit_files(_corrupt_pixels), "pixel data"),
    ("two series mixed", _second_series, "series mixed"),
    ("missing slice", _drop(5), "missing slices"),
    ("duplicated slice", _duplicate, "duplicate"),
    ("non-CT modality (no CT slice left)", _edit_files(lambda ds, i, n: setattr(ds, "Modality", "MR")),
     "not a CT image"),
    ("RGB image", _edit_files(_rgb), "grayscale"),
    ("gantry tilt", _edit_files(_tilt), "tilt"),
    ("missing ImagePositionPatient", _edit_files(lambda ds, i, n: i == 1 and delattr(ds, "ImagePositionPatient")),
     "ImagePositionPatient"),
    ("mixed orientations", _edit_files(lambda ds, i, n: i == 3 and setattr(
        ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])), "orientation"),
]


# -- stray files beside a good series: (name, writer into the folder, the file's name, words of its reason) ------
def _non_image(sop_class: str, modality: str, **fields):
    """A DICOM object of another kind in the series' own study (what a PACS export puts beside the slices)."""
    def write(folder: Path, name: str) -> None:
        source = pydicom.dcmread(sorted(folder.glob("[0-9]*.dcm"))[0], stop_before_pixels=True)
        ds = pydicom.Dataset()
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.PatientID = modality, source.StudyInstanceUID, source.PatientID
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        for key, value in fields.items():
            setattr(ds, key, value)
        ds.save_as(folder / name, enforce_file_format=True)
    return write


def _secondary_capture(folder: Path, name: str) -> None:
    """A dose-report screenshot: a Secondary Capture image, Modality CT, in the same series (a scanner habit)."""
    ds = pydicom.dcmread(sorted(folder.glob("[0-9]*.dcm"))[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / name)


STRAY_KINDS = [
    ("README beside the slices", lambda f, n: (f / n).write_text("exported by the PACS\n"), "README",
     "not a DICOM file"),
    ("macOS .DS_Store", lambda f, n: (f / n).write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(2040)), ".DS_Store",
     "not a DICOM file"),
    ("Windows Thumbs.db", lambda f, n: (f / n).write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + bytes(504)),
     "Thumbs.db", "not a DICOM file"),
    ("macOS AppleDouble ._ file", lambda f, n: (f / n).write_bytes(bytes.fromhex("00051607") + bytes(200)),
     "._0001.dcm", "not a DICOM file"),
    ("DICOMDIR", _non_image("1.2.840.10008.1.3.10", "", FileSetID="EXPORT", DirectoryRecordSequence=[]),
     "DICOMDIR", "not a CT image"),
    ("structured report (SR)", _non_image("1.2.840.10008.5.1.4.1.1.88.11", "SR", ValueType="CONTAINER"),
     "sr.dcm", "not a CT image"),
    ("presentation state (PR)", _non_image("1.2.840.10008.5.1.4.1.1.11.1", "PR"), "pr.dcm", "not a CT image"),
    ("secondary capture (dose screenshot)", _secondary_capture, "dose.dcm", "not a CT image"),
]


@pytest.fixture
def good_case(tiny_dataset):
    return tuple(nib.load(tiny_dataset / sub / "liver_0.nii.gz") for sub in ("imagesTr", "labelsTr"))


def record(rows):
    folder = Path(os.environ.get("LIVERSEG_RELIABILITY_DIR", ".liverseg/reliability"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bad-inputs.json").write_text(json.dumps(rows, indent=2))


def test_every_bad_input_is_set_aside_with_its_reason_and_none_is_lost(store, store_env, tiny_dataset, good_case,
                                                                      tmp_path):
    rows = []
    # --- MSD folder: two good cases, one case per NIfTI kind, one entry per dataset.json kind.
    root = tmp_path / "msd"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for case in ("liver_0", "liver_1"):
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(tiny_dataset / sub / f"{case}.nii.gz", root / sub / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    nifti = {f"bad_{n:02d}": kind for n, kind in enumerate(nifti_kinds(*good_case))}
    for case, (_, write, _) in nifti.items():
        write(root, case)
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    for case in ("msd_a", "msd_b"):  # images that exist, for entries whose label is the problem
        shutil.copy(tiny_dataset / "imagesTr" / "liver_2.nii.gz", root / "imagesTr" / f"{case}.nii.gz")
    training += [entry for _, entry, _ in MSD_KINDS]
    (root / "dataset.json").write_text(json.dumps({"training": training}, ensure_ascii=False))

    done = liverseg(store_env, "ingest", root, "--dataset", "corpus")
    assert done.returncode == 0, done.stderr
    ingested = json.loads(done.stdout)
    reasons = list(ingested["set_aside"].values())
    for name, _, needle in MSD_KINDS:
        hit = [r for r in reasons if needle in r]
        assert hit, f"{name}: no set-aside reason with {needle!r} in {reasons}"
        rows.append({"input": "dataset.json", "kind": name, "handled": True, "where": "ingest", "reason": hit[0]})
    assert ingested["cases"] + len(ingested["set_aside"]) == len(training)

    # A dataset.json that is not UTF-8 (Latin-1 file names): the whole folder is refused, in one line.
    latin = tmp_path / "latin1"
    latin.mkdir()
    (latin / "dataset.json").write_bytes('{"training": [{"image": "./imagesTr/café.nii.gz"}]}'.encode("latin-1"))
    done = liverseg(store_env, "ingest", latin, "--dataset", "latin")
    assert done.returncode == 2 and "not valid UTF-8 JSON" in done.stderr and len(done.stderr.splitlines()) == 1
    rows.append({"input": "dataset.json", "kind": "non-UTF-8 dataset.json", "handled": True, "where": "ingest",
                 "reason": done.stderr.strip()})

    done = liverseg(store_env, "plan", "--run-id", "corpus", "--dataset", "corpus")
    assert done.returncode == 0, done.stderr
    done = liverseg(store_env, "convert", "--run-id", "corpus")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(outcome["ok"]) == ["liver_0", "liver_1"]
    for case, (name, _, needle) in nifti.items():
        reason = outcome["quarantined"].get(case, "")
        assert needle in reason and "\n" not in reason, f"{name}: {reason!r} lacks {needle!r}"
        assert store.stat(f"runs/corpus/quarantine/convert/{case}.json") is not None
        rows.append({"input": "NIfTI", "kind": name, "handled": True, "where": "convert stage", "reason": reason})
    cases_in = ingested["cases"]
    assert len(outcome["ok"]) + len(outcome["quarantined"]) == cases_in  # none lost

    # --- DICOM studies uploaded to the store, segmented in study mode with some model; and the plain command.
    image, _ = good_case
    good = tmp_path / "dicom-good"
    nifti_to_dicom(Volume(np.asarray(image.dataobj), image.affine), None, "study", "ns-corpus", good)
    model = store.put_bytes("models-under-test/untrained.pt", to_bytes({
        "format": "liverseg.model/v1", "state_dict": build_unet().state_dict(),
        "profile": load_profile("default", environ={}).model_dump(mode="json")}))
    studies = {"good_study": good / "ct"}
    for n, (name, corrupt, _) in enumerate(DICOM_KINDS):
        folder = tmp_path / f"dicom-{n:02d}"
        shutil.copytree(good / "ct", folder)
        corrupt(folder)
        studies[f"dicom_{n:02d}"] = folder
        store.upload_dir(folder, f"incoming/dicom_{n:02d}")
        command = liverseg(store_env, "dicom", "to-nifti", folder, tmp_path / f"out-{n}.nii.gz")
        lines = command.stderr.strip().splitlines()
        assert command.returncode != 0 and len(lines) == 1 and "Traceback" not in command.stderr, (name, lines)
    store.upload_dir(good / "ct", "incoming/good_study")
    done = liverseg(store_env, "infer", "--run-id", "corpus-studies", "--model", model.key,
                    *(a for s in studies for a in ("--study", f"{s}=incoming/{s}/")), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["ok"] == ["good_study"]
    for n, (name, _, needle) in enumerate(DICOM_KINDS):
        reason = outcome["quarantined"].get(f"dicom_{n:02d}", "")
        assert needle.lower() in reason.lower(), f"{name}: {reason!r} lacks {needle!r}"
        rows.append({"input": "DICOM", "kind": name, "handled": True, "where": "infer stage + dicom to-nifti",
                     "reason": reason})
    assert len(outcome["ok"]) + len(outcome["quarantined"]) == len(studies)  # none lost
    rows += stray_files_are_skipped_and_named(store, store_env, good / "ct", model.key, tmp_path)
    assert len(rows) >= 25
    record({"kinds": rows, "cases_in": cases_in + len(studies),
            "ok": 2 + 1, "quarantined": len(nifti) + len(DICOM_KINDS), "set_aside_at_ingest": len(MSD_KINDS),
            "lost": 0})


def stray_files_are_skipped_and_named(store, env: dict, series: Path, model: str, tmp_path: Path) -> list[dict]:
    """Each stray kind beside the good series: ``dicom to-nifti`` writes the very file it writes without it and
    names the stray in one warning line; all of them together: ``segment`` and the infer stage (study mode) go on,
    naming every one in their JSON."""
    reference = tmp_path / "stray-reference.nii.gz"
    assert liverseg(env, "dicom", "to-nifti", series, reference).returncode == 0
    rows, together = [], tmp_path / "stray-all"
    shutil.copytree(series, together)
    for n, (kind, write, name, reason) in enumerate(STRAY_KINDS):
        folder = tmp_path / f"stray-{n:02d}"
        shutil.copytree(series, folder)
        write(folder, name)
        write(together, name)
        out = tmp_path / f"stray-{n:02d}.nii.gz"
        done = liverseg(env, "dicom", "to-nifti", folder, out)
        assert done.returncode == 0, (kind, done.stderr)
        warning = done.stderr.strip().splitlines()
        assert len(warning) == 1 and "warning" in warning[0] and f"{name} ({reason}" in warning[0], (kind, warning)
        assert out.read_bytes() == reference.read_bytes(), f"{kind}: other voxels than without the stray file"
        rows.append({"input": "DICOM folder", "kind": f"stray file: {kind}", "handled": True,
                     "where": "dicom to-nifti, segment, infer stage", "reason": warning[0].split("warning: ", 1)[1]})
    names = sorted(name for _, _, name, _ in STRAY_KINDS)
    model_file = tmp_path / "stray-model.pt"
    model_file.write_bytes(store.get_bytes(model))
    done = liverseg(env, "segment", together, "--out", tmp_path / "stray-segment", "--model", model_file)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(s["file"] for s in result["skipped_files"]) == names
    assert "mask.nii.gz" in result["files"] and "seg.dcm" in result["files"]
    assert sum("warning" in line for line in done.stderr.splitlines()) == 1
    store.upload_dir(together, "incoming/stray_all")
    done = liverseg(env, "infer", "--run-id", "corpus-strays", "--model", model,
                    "--study", "strays=incoming/stray_all/")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["ok"] == ["strays"]
    details = store.get_json("runs/corpus-strays/infer/strays/_manifest.json")["details"]
    assert sorted(s["file"] for s in details["skipped_files"]) == names
    return rows


# -- archive quirks: studies as a PACS holds them, segmented from their DICOMweb URLs by the infer stage ------------
def _archive_kinds(orthanc, tmp_path: Path) -> list[tuple[str, str, str, str | None]]:
    """(kind, study URL, what must happen: "ok" or words of the reason, the series description that must be
    chosen) for each quirk, its studies uploaded to ``orthanc``."""
    from archive_tools import MR_IMAGE_STORAGE, phantom_volume, scanner_series

    volume, coronal = phantom_volume(21), phantom_volume(22)
    # The same anatomy seen from the front: a coronal reformat of it (rows along z).
    coronal = Volume(np.ascontiguousarray(np.transpose(coronal.array, (0, 2, 1))),
                     coronal.affine @ np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1.0]]))
    kinds, made = [], {}

    def study(kind: str, expected: str, chosen: str | None, *series) -> None:
        uid = f"2.25.{7100 + len(kinds)}"
        for n, (vol, description, image_type, edit) in enumerate(series, start=1):
            made.setdefault(uid, []).extend(scanner_series(
                vol, tmp_path / f"archive-{len(kinds)}-{n}", study_uid=uid, patient=f"quirk{len(kinds)}", number=n,
                description=description, image_type=image_type, edit=edit))
        kinds.append((kind, orthanc.study_url(uid), expected, chosen))

    def mr(ds, k):
        ds.Modality, ds.SOPClassUID = "MR", MR_IMAGE_STORAGE
        ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE

    thin, thick = phantom_volume(23, (64, 64, 20)), phantom_volume(23, (64, 64, 8))
    study("localizer, coronal reformat and thick-slab reconstruction beside the axial CT", "ok", "axial",
          (phantom_volume(24, (64, 64, 1)), "scout", "ORIGINAL\\PRIMARY\\LOCALIZER", None),
          (volume, "axial", "ORIGINAL\\PRIMARY\\AXIAL", None),
          (coronal, "coronal MPR", "DERIVED\\SECONDARY\\REFORMATTED", None),
          (thick, "axial 5 mm MIP", "DERIVED\\SECONDARY\\AXIAL", None))
    study("two original axial series", "ok", "thin", (thick, "thick", "ORIGINAL\\PRIMARY\\AXIAL", None),
          (thin, "thin", "ORIGINAL\\PRIMARY\\AXIAL", None))
    study("only a derived axial series (a NIfTI converted to DICOM)", "ok", "derived",
          (volume, "derived", "DERIVED\\SECONDARY\\AXIAL", None))
    study("no CT in the study (MR only)", "no axial CT series to segment", None,
          (volume, "mr", "ORIGINAL\\PRIMARY\\AXIAL", mr))
    study("a localizer only", "a localizer", None,
          (phantom_volume(25, (64, 64, 2)), "scout", "ORIGINAL\\PRIMARY\\LOCALIZER", None))
    study("a coronal acquisition only", "coronal slices, not axial", None,
          (coronal, "coronal", "ORIGINAL\\PRIMARY\\OTHER", None))
    split_to = "2.25.7199"

    def split(ds, k):
        if k % 2:  # every other slice carries another StudyInstanceUID: the archive files it in another study
            ds.StudyInstanceUID = split_to
    study("a series split across two studies by a bad StudyInstanceUID", "split across studies", None,
          (volume, "axial", "ORIGINAL\\PRIMARY\\AXIAL", split))
    kinds.append(("a study the archive does not have", orthanc.study_url("2.25.7198"), "is not in the archive", None))
    for paths in made.values():
        orthanc.upload(paths)
    return kinds


def _without_uids(series: Path, out: Path) -> Path:
    """The series as a real scanner export we met: Study, Series, SOP Instance and SOP Class UIDs empty strings."""
    out.mkdir()
    for path in sorted(series.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ds.SOPClassUID = ""
        ds.save_as(out / path.name)
    return out


def test_archive_quirks_and_a_series_without_uids_are_handled_and_none_is_lost(orthanc, store, store_env,
                                                                               tiny_dataset, good_case, tmp_path):
    env = {**store_env, **orthanc.env()}
    model = store.put_bytes("models-under-test/untrained.pt", to_bytes({
        "format": "liverseg.model/v1", "state_dict": build_unet().state_dict(),
        "profile": load_profile("default", environ={}).model_dump(mode="json")}))
    kinds = _archive_kinds(orthanc, tmp_path)
    done = liverseg(env, "infer", "--run-id", "corpus-archive", "--model", model.key,
                    *(a for _, url, _, _ in kinds for a in ("--study", url)))
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    rows = []
    for kind, url, expected, chosen in kinds:
        case = url.rsplit("/", 1)[-1]
        details = store.get_json(f"runs/corpus-archive/infer/{case}/_manifest.json")["details"]
        if expected == "ok":
            assert case in outcome["ok"], (kind, outcome["quarantined"].get(case))
            series = details["series"]
            picked = next(c for c in series["candidates"] if c["series_uid"] == series["series_uid"])
            assert picked["description"] == chosen, (kind, series)
            seg = store.get_file(f"runs/corpus-archive/infer/{case}/seg.dcm", tmp_path / f"{case}.dcm")
            assert pydicom.dcmread(seg).ReferencedSeriesSequence[0].SeriesInstanceUID == series["series_uid"]
            reason = details["series"]["reason"]
        else:
            reason = outcome["quarantined"].get(case, "")
            assert expected in reason and "\n" not in reason, (kind, reason)
        rows.append({"input": "DICOMweb study", "kind": kind, "handled": True, "where": "infer stage (study URL)",
                     "reason": reason})
    assert len(outcome["ok"]) + len(outcome["quarantined"]) == len(kinds)  # none lost

    # A series without UIDs: the mask, overlays and report all the same; no SEG or RTSTRUCT, and why, in one line.
    image, _ = good_case
    nifti_to_dicom(Volume(np.asarray(image.dataobj), image.affine), None, "nouids", "ns-no-uids", tmp_path / "src")
    folder = _without_uids(tmp_path / "src" / "ct", tmp_path / "no-uids")
    model_file = tmp_path / "model.pt"
    model_file.write_bytes(store.get_bytes(model.key))
    done = liverseg(env, "segment", folder, "--out", tmp_path / "no-uids-out", "--model", model_file)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert {"mask.nii.gz", "overlay_axial.png", "report.html"} <= set(result["files"])
    assert not {"seg.dcm", "rtstruct.dcm"} & set(result["files"])
    assert set(result["not_written"]) == {"seg.dcm", "rtstruct.dcm"}
    warning = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "no seg.dcm, rtstruct.dcm: the series has no StudyInstanceUID" in warning[0]
    assert "Traceback" not in done.stderr
    rows.append({"input": "DICOM folder", "kind": "series without Study/Series/SOP UIDs (empty strings)",
                 "handled": True, "where": "segment (exit 0: mask, overlays, report)",
                 "reason": result["not_written"]["seg.dcm"]})
    store.upload_dir(folder, "incoming/no_uids")
    done = liverseg(env, "infer", "--run-id", "corpus-no-uids", "--model", model.key,
                    "--study", "no_uids=incoming/no_uids/")
    assert done.returncode == 0 and json.loads(done.stdout.strip().splitlines()[-1])["ok"] == ["no_uids"]
    details = store.get_json("runs/corpus-no-uids/infer/no_uids/_manifest.json")["details"]
    assert set(details["not_written"]) == {"seg.dcm", "rtstruct.dcm"}
    folder = Path(os.environ.get("LIVERSEG_RELIABILITY_DIR", ".liverseg/reliability"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "archive-inputs.json").write_text(json.dumps({"kinds": rows}, indent=2))
