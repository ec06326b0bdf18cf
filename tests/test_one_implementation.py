"""Each capability has one implementation: the stage (download → function → upload) and the command on files
(files → the same function → files) write the same bytes for the same input.

- convert vs ``liverseg dicom from-nifti --namespace RUN --patient-id CASE``: the CT files byte for byte; the SEG
  the same object (a SEG records when it was made: the stage dates it by its plan, the command by the clock);
- group vs ``liverseg dicom group`` on the convert stage's series: every group's and the whole series' NIfTI;
- infer (study mode, a DICOM study) vs ``liverseg segment`` with the same model file: mask and overlays byte for
  byte, the SEG the same object.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from liverseg.config import load_profile
from liverseg.imaging.seg import same_seg
from liverseg.ml.model import build_unet
from liverseg.ml.modelfile import model_payload, to_bytes

pytestmark = pytest.mark.slow


def liverseg(env, *args, cwd=None):
    done = subprocess.run([sys.executable, "-m", "liverseg", *map(str, args)], capture_output=True, text=True,
                          env={**env, "PATH": "/usr/bin:/bin"}, cwd=cwd, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def downloaded(store, prefix: str, into: Path) -> Path:
    store.download_prefix(prefix, into)
    return into


def same_files(ours: Path, theirs: Path, names: list[str]) -> None:
    for name in names:
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name


def test_stages_and_commands_write_the_same_bytes(store, store_env, tiny_dataset, tmp_path):
    liverseg(store_env, "ingest", tiny_dataset, "--dataset", "tiny")
    liverseg(store_env, "plan", "--run-id", "same", "--dataset", "tiny")
    case = "liver_1"
    liverseg(store_env, "convert", "--run-id", "same", "--case", case)
    liverseg(store_env, "group", "--run-id", "same", "--case", case)

    # convert
    stage = downloaded(store, f"runs/same/convert/{case}", tmp_path / "stage-convert")
    command = tmp_path / "command-convert"
    liverseg(store_env, "dicom", "from-nifti", tiny_dataset / "imagesTr" / f"{case}.nii.gz", command, "--label",
             tiny_dataset / "labelsTr" / f"{case}.nii.gz", "--namespace", "same", "--patient-id", case)
    slices = sorted(p.name for p in (stage / "ct").iterdir())
    assert slices == sorted(p.name for p in (command / "ct").iterdir()) and slices
    same_files(stage / "ct", command / "ct", slices)
    assert same_seg(pydicom.dcmread(stage / "seg.dcm"), pydicom.dcmread(command / "seg.dcm"))

    # group: the command on the convert stage's own series (its labels come from the SEG only in the stage)
    grouped = downloaded(store, f"runs/same/group/{case}", tmp_path / "stage-group")
    done = liverseg(store_env, "dicom", "group", stage / "ct", tmp_path / "command-group", "--size", "64")
    report = json.loads((tmp_path / "command-group" / "report.json").read_text())
    (series,) = report["series"]
    folder = tmp_path / "command-group" / series["folder"]
    units = ["volume", *(g["name"] for g in series["groups"])]
    assert sorted(p.name for p in grouped.iterdir() if p.is_dir()) == sorted(units) and "groups" in done.stdout
    for unit in units:
        same_files(grouped / unit, folder / unit, ["image.nii.gz"])

    # infer in study mode against segment: one model file, the convert stage's DICOM series as the study
    model = tmp_path / "model.pt"
    model.write_bytes(to_bytes(model_payload(build_unet().state_dict(),
                                             load_profile("default", environ={}).model_dump(mode="json"))))
    model_key = store.put_file("models-under-test/model.pt", model).key
    store.upload_dir(stage / "ct", "incoming/study")
    liverseg(store_env, "infer", "--run-id", "same-study", "--model", model_key, "--study", "study=incoming/study/")
    inferred = downloaded(store, "runs/same-study/infer/study", tmp_path / "stage-infer")
    segmented = tmp_path / "command-segment"
    liverseg(store_env, "segment", stage / "ct", "--out", segmented, "--model", model)
    same_files(inferred, segmented, ["mask.nii.gz", "overlay_axial.png", "overlay_coronal.png",
                                     "overlay_sagittal.png"])
    assert same_seg(pydicom.dcmread(inferred / "seg.dcm"), pydicom.dcmread(segmented / "seg.dcm"))
