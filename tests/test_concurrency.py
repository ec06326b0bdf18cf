"""Concurrency on one bucket: runs never touch each other's objects; the same case converted twice at once ends
with one correct output."""

from __future__ import annotations

import json
import subprocess
import sys

import pydicom
import pytest

from helpers import snapshot
from liverseg import layout
from liverseg.config import load_profile
from liverseg.data.msd import ingest
from liverseg.stages.plan import make_plan

pytestmark = pytest.mark.slow


def start(env, run_id, *cases):
    return subprocess.Popen([sys.executable, "-m", "liverseg", "convert", "--run-id", run_id,
                             *(a for c in cases for a in ("--case", c))],
                            env={**env, "PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def result(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def outputs_match_manifests(store, run_id):
    for ref in store.list(f"runs/{run_id}/convert/"):
        if ref.key.endswith(layout.MANIFEST):
            for key, entry in store.get_json(ref.key)["outputs"].items():
                assert key.startswith(f"runs/{run_id}/"), f"{run_id}'s manifest names {key}"
                assert store.stat(key).sha256 == entry["sha256"]


def test_parallel_runs_are_isolated(store, store_env, tiny_dataset, tmp_path):
    ingest(store, tiny_dataset, "tiny")
    for run_id in ("r1", "r2", "r3"):
        make_plan(store, run_id, "tiny", load_profile("default", environ={}))
    result(start(store_env, "r1", "liver_0", "liver_1"))
    before = snapshot(store, "runs/r1/")
    second, third = start(store_env, "r2", "liver_0", "liver_1"), start(store_env, "r3", "liver_0", "liver_1")
    assert sorted(result(second)["ok"]) == sorted(result(third)["ok"]) == ["liver_0", "liver_1"]
    assert snapshot(store, "runs/r1/") == before
    for run_id in ("r1", "r2", "r3"):
        outputs_match_manifests(store, run_id)
    series = {run_id: pydicom.dcmread(store.get_file(f"runs/{run_id}/convert/liver_0/ct/0001.dcm",
                                                     tmp_path / f"{run_id}.dcm")).SeriesInstanceUID
              for run_id in ("r1", "r2", "r3")}
    assert len(set(series.values())) == 3, "UIDs must differ between runs"


def test_same_case_twice_at_once_ends_with_one_correct_output(store, store_env, tiny_dataset):
    ingest(store, tiny_dataset, "tiny")
    make_plan(store, "twice", "tiny", load_profile("default", environ={}))
    first, second = start(store_env, "twice", "liver_2"), start(store_env, "twice", "liver_2")
    outcomes = [result(first), result(second)]
    assert all(o["ok"] + o["skipped"] == ["liver_2"] for o in outcomes)
    outputs_match_manifests(store, "twice")
    manifest = store.get_json(layout.manifest_key("twice", "convert", "liver_2"))
    assert manifest["status"] == "ok" and len(manifest["outputs"]) == len(store.list("runs/twice/convert/")) - 1
