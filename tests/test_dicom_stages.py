"""convert and group as separate processes on the real store, with bad and quirky cases mixed among good ones.

Bad data sets a case aside (quarantine entry + manifest status ``quarantined``, naming the file and the reason),
the other cases go on, quirks that are valid (an LAS-stored label, qform_code 0 with the sform set) go through,
and a re-run changes no object.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers import assert_same_volume, snapshot
from liverseg import layout
from liverseg.graph import STEPS
from liverseg.imaging import nifti
from liverseg.runner import RunSpec, run_step

pytestmark = pytest.mark.slow
RUN = "dicom-stages"


def add_case(root, meta, case, image, label):
    nib.save(image, root / "imagesTr" / f"{case}.nii.gz")
    nib.save(label, root / "labelsTr" / f"{case}.nii.gz")
    meta["training"].append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})


def make_dataset(tiny_dataset, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(tiny_dataset, root)
    meta = json.loads((root / "dataset.json").read_text())
    img0, lab0 = nib.load(root / "imagesTr" / "liver_0.nii.gz"), nib.load(root / "labelsTr" / "liver_0.nii.gz")
    # NaN voxels in the image.
    data = np.asarray(img0.dataobj).astype(np.float32)
    data[10, 10, 10] = np.nan
    add_case(root, meta, "liver_80", nib.Nifti1Image(data, img0.affine), lab0)
    # A label 5 mm off the image grid.
    shifted = lab0.affine.copy()
    shifted[0, 3] += 5.0
    add_case(root, meta, "liver_81", img0, nib.Nifti1Image(np.asarray(lab0.dataobj), shifted))
    # Valid quirks: the label of liver_1 stored with its first axis reversed; liver_2 with qform_code 0 + sform.
    img1, lab1 = nib.load(root / "imagesTr" / "liver_1.nii.gz"), nib.load(root / "labelsTr" / "liver_1.nii.gz")
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, lab1.shape[0] - 1
    add_case(root, meta, "liver_82", img1,
             nib.Nifti1Image(np.ascontiguousarray(np.asarray(lab1.dataobj)[::-1]), lab1.affine @ flip))
    img2, lab2 = nib.load(root / "imagesTr" / "liver_2.nii.gz"), nib.load(root / "labelsTr" / "liver_2.nii.gz")
    q0 = nib.Nifti1Image(np.asarray(img2.dataobj), None)
    q0.header.set_sform(img2.affine, code=1)
    q0.header.set_qform(np.eye(4), code=0)
    add_case(root, meta, "liver_83", q0, lab2)
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_convert_and_group_set_bad_cases_aside_and_go_on(store, settings, store_env, tiny_dataset, tmp_path):
    data = make_dataset(tiny_dataset, tmp_path)
    ingest = subprocess.run([sys.executable, "-m", "liverseg", "ingest", str(data), "--dataset", "mixed"],
                            capture_output=True, text=True, env={**store_env, "PATH": "/usr/bin:/bin"}, check=False)
    assert ingest.returncode == 0, ingest.stderr
    spec = RunSpec(run_id=RUN, dataset="mixed", profile="default")
    logs = tmp_path / "logs"
    logs.mkdir()
    run_step(STEPS["plan"], spec, settings, logs)
    convert = run_step(STEPS["convert"], spec, settings, logs)["result"]
    assert set(convert["quarantined"]) == {"liver_80", "liver_81"}
    assert "image has 1 NaN/Inf voxels" in convert["quarantined"]["liver_80"]
    assert "label grid" in convert["quarantined"]["liver_81"]
    assert sorted(convert["ok"]) == ["liver_0", "liver_1", "liver_2", "liver_3", "liver_4", "liver_82", "liver_83"]
    entry = store.get_json(layout.quarantine_key(RUN, "convert", "liver_80"))
    assert entry["file"] == "datasets/mixed/imagesTr/liver_80.nii.gz"  # the store key a person uploaded
    assert entry["case"] == "liver_80" and "NaN" in entry["reason"]
    assert store.get_json(layout.manifest_key(RUN, "convert", "liver_81"))["status"] == "quarantined"

    # Damage one slice of a converted case in the store: group must set that case aside, naming the file.
    damaged = f"{layout.stage_prefix(RUN, 'convert', 'liver_0')}/ct/0005.dcm"
    store.put_bytes(damaged, store.get_bytes(damaged)[:5000])
    group = run_step(STEPS["group"], spec, settings, logs)["result"]
    assert set(group["quarantined"]) == {"liver_0", "liver_80", "liver_81"}
    assert "0005.dcm: pixel data is cut short" in group["quarantined"]["liver_0"]
    assert "set aside by convert" in group["quarantined"]["liver_80"]
    entry = store.get_json(layout.quarantine_key(RUN, "group", "liver_0"))
    assert entry["file"] == "0005.dcm"
    statuses = {c: store.get_json(layout.manifest_key(RUN, "group", c))["status"]
                for c in store.get_json(layout.manifest_key(RUN, "plan"))["details"]["plan"]["cases"]}
    assert len(statuses) == 9 and list(statuses.values()).count("ok") == 6  # in = ok + quarantined

    # The valid quirks came through with their label in place.
    for case, source in (("liver_82", "liver_1"), ("liver_83", "liver_2")):
        prefix = f"{layout.stage_prefix(RUN, 'group', case)}/volume"
        image = nifti.load(store.get_file(f"{prefix}/image.nii.gz", tmp_path / case / "image.nii.gz"))
        label = nifti.load(store.get_file(f"{prefix}/label.nii.gz", tmp_path / case / "label.nii.gz"), kind="label")
        assert_same_volume(nifti.load(data / "imagesTr" / f"{source}.nii.gz"), image)
        assert_same_volume(nifti.load(data / "labelsTr" / f"{source}.nii.gz", kind="label"), label)
        groups = store.get_json(layout.manifest_key(RUN, "group", case))["details"]["groups"]
        assert groups and all(g["stop"] - g["start"] == 64 for g in groups)

    # A re-run skips every case and overwrites nothing, also dealt to two worker processes.
    before = snapshot(store, f"runs/{RUN}/")
    workers = subprocess.run([sys.executable, "-m", "liverseg", "convert", "--run-id", RUN, "--workers", "2"],
                             capture_output=True, text=True, env={**store_env, "PATH": "/usr/bin:/bin"},
                             cwd=tmp_path, check=False, timeout=300)
    assert workers.returncode == 0, workers.stderr[-2000:]
    merged = json.loads(workers.stdout.strip().splitlines()[-1])
    assert sorted(merged["skipped"]) == sorted(convert["ok"]) and set(merged["quarantined"]) == {"liver_80", "liver_81"}
    again = run_step(STEPS["group"], spec, settings, logs)["result"]
    assert snapshot(store, f"runs/{RUN}/") == before
    assert sorted(again["skipped"]) == sorted(c for c, s in statuses.items() if s == "ok")
