"""All stages as separate processes over the real store, on a tiny synthetic set with bad cases mixed in.

Each step runs in a fresh process with an empty working folder (the runner's contract), so the only way data can
pass between stages is the store. A second run of the same run id must skip every stage and change no object.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers import snapshot
from liverseg import layout
from liverseg.runner import RunSpec, run_pipeline

pytestmark = pytest.mark.slow
TINY_TRAINING = ["train.epochs=2", "train.val_interval=1", "train.patch=[48,48,32]", "train.checkpoint_every=1"]


def make_dataset_with_bad_cases(tiny_dataset, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(tiny_dataset, root)
    meta = json.loads((root / "dataset.json").read_text())
    # A NIfTI that does not load: gzip of garbage.
    (root / "imagesTr" / "liver_90.nii.gz").write_bytes(gzip.compress(b"not a nifti header" * 50))
    shutil.copy(root / "labelsTr" / "liver_0.nii.gz", root / "labelsTr" / "liver_90.nii.gz")
    # Image and label of different shapes.
    img = nib.load(root / "imagesTr" / "liver_1.nii.gz")
    nib.save(img, root / "imagesTr" / "liver_91.nii.gz")
    lab = nib.load(root / "labelsTr" / "liver_1.nii.gz")
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:-3], lab.affine), root / "labelsTr" / "liver_91.nii.gz")
    # A label file that is missing altogether.
    shutil.copy(root / "imagesTr" / "liver_2.nii.gz", root / "imagesTr" / "liver_92.nii.gz")
    for case in ("liver_90", "liver_91", "liver_92"):
        meta["training"].append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_pipeline_end_to_end_with_bad_cases_and_rerun(store, settings, store_env, tiny_dataset, tmp_path):
    data = make_dataset_with_bad_cases(tiny_dataset, tmp_path)
    ingest = subprocess.run([sys.executable, "-m", "liverseg", "ingest", str(data), "--dataset", "tiny"],
                            capture_output=True, text=True, env={**store_env, "PATH": "/usr/bin:/bin"}, check=False)
    assert ingest.returncode == 0, ingest.stderr
    ingested = json.loads(ingest.stdout)
    assert ingested["cases"] == 7
    assert list(ingested["set_aside"].values()) == ["label file missing: ./labelsTr/liver_92.nii.gz"]

    spec = RunSpec(run_id="e2e", dataset="tiny", profile="default", overrides=TINY_TRAINING)
    summary = run_pipeline(spec, settings, tmp_path / "reports")
    assert (tmp_path / "reports" / "latest" / "summary.json").exists()

    # Bad cases are set aside with the reason, at the stage that found them; the others go on.
    convert_aside = summary["set_aside_by_stage"]["convert"]
    assert set(convert_aside) == {"liver_90", "liver_91"}
    assert "not a readable NIfTI" in convert_aside["liver_90"]
    assert "label grid" in convert_aside["liver_91"] and "differs from the image grid" in convert_aside["liver_91"]
    quarantine = store.get_json(layout.quarantine_key("e2e", "convert", "liver_90"))
    assert quarantine["file"] == "datasets/tiny/imagesTr/liver_90.nii.gz"
    plan = store.get_json(layout.manifest_key("e2e", "plan"))["details"]["plan"]
    for stage in ("convert", "group", "preprocess"):
        statuses = [store.get_json(layout.manifest_key("e2e", stage, c))["status"] for c in plan["cases"]]
        assert len(statuses) == 7 and statuses.count("ok") == 5  # cases in = ok + quarantined, none lost

    # Every held-out case has a mask on its original grid and a Dice; bad held-out cases are accounted for.
    test_cases = plan["split"]["test"]
    assert set(summary["cases"]) | set(summary["set_aside"]) == set(test_cases)
    assert summary["cases"], "no held-out case was scored"
    for case, scores in summary["cases"].items():
        assert 0.0 <= scores["dice"] <= 1.0
        mask = nib.load(store.get_file(f"runs/e2e/infer/{case}/mask.nii.gz", tmp_path / f"{case}-mask.nii.gz"))
        study = nib.load(data / "imagesTr" / f"{case}.nii.gz")
        assert mask.shape == study.shape
        np.testing.assert_allclose(mask.affine, study.affine, atol=1e-4)
        assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}
    groups = store.get_json(layout.manifest_key("e2e", "group", "liver_0"))["details"]["groups"]
    assert all(g["stop"] - g["start"] == 64 for g in groups)
    assert store.get_json("runs/e2e/train/metrics.json")[-1]["epoch"] == 2

    # The model is registered and, being the first, promoted; the champion scores a case as infer did.
    from liverseg.registry import Registry
    from liverseg.stages.promote import score_model

    assert summary["promotion"]["promoted"] is True and Registry(store).champion() == "e2e"
    assert (tmp_path / "reports" / "e2e" / "report.html").read_text().count("data:image/png;base64") >= 3
    assert (tmp_path / "reports" / "e2e" / "model.pt").stat().st_size > 1_000_000
    case = sorted(summary["cases"])[0]
    rescored = score_model(store, "models/e2e/model.pt", {case: {"image": plan["cases"][case]["image"],
                                                                 "label": plan["cases"][case]["label"]}})
    assert rescored[case]["dice"] == summary["cases"][case]["dice"]

    # Study mode: the trained model on a DICOM series and a NIfTI from the store, no plan needed.
    studies = subprocess.run(
        [sys.executable, "-m", "liverseg", "infer", "--run-id", "e2e-studies", "--model", "champion",
         "--study", "dicom_0=runs/e2e/convert/liver_0/ct/", "--study", "datasets/tiny/imagesTr/liver_1.nii.gz"],
        capture_output=True, text=True, env={**store_env, "PATH": "/usr/bin:/bin"}, cwd=tmp_path, check=False)
    assert studies.returncode == 0, studies.stderr
    assert sorted(json.loads(studies.stdout)["ok"]) == ["dicom_0", "liver_1"]
    from_dicom = nib.load(store.get_file("runs/e2e-studies/infer/dicom_0/mask.nii.gz", tmp_path / "d0.nii.gz"))
    assert from_dicom.shape == nib.load(data / "imagesTr" / "liver_0.nii.gz").shape

    # Re-running the same run id skips every stage (manifests) and leaves every object untouched.
    before = snapshot(store, "runs/e2e/")
    again = run_pipeline(spec, settings, tmp_path / "reports")
    assert snapshot(store, "runs/e2e/") == before
    assert again["cases"] == summary["cases"]

    # The store's secret key appears in no log line and in no JSON object (manifests, plans, reports) of the run.
    secret = settings.secret_key
    logs = [p.read_text(errors="replace") for p in (tmp_path / "reports").rglob("*.log")]
    logs += [ingest.stderr, studies.stderr]
    assert sum(len(text.splitlines()) for text in logs) > 50
    assert not any(secret in text for text in logs)
    json_objects = [r.key for r in store.list("") if r.key.endswith(".json")]
    assert len(json_objects) > 30
    assert not any(secret in store.get_bytes(key).decode(errors="replace") for key in json_objects)
