"""Faults on the real store: the server restarting mid-stage, a stage killed mid-way, training killed.

Each test compares against an undisturbed run of the same run id (in another bucket, so object contents can be
compared byte for byte) and records a row for docs/RELIABILITY.md (see tests/bench/reliability_doc.py).
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from faults import bucket, contents, finish, prepared, record, server_of_its_own, stage_process, wait_for
from liverseg import layout

pytestmark = pytest.mark.slow
TINY_TRAINING = ["train.epochs=6", "train.val_interval=1", "train.patch=[64,64,32]", "train.checkpoint_every=1",
                 "train.samples_per_volume=2"]


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    with server_of_its_own(tmp_path_factory.mktemp("weed")) as server:
        yield server


@pytest.fixture(scope="module")
def undisturbed(own_server, tiny_dataset):
    """Converted outputs of run r, undisturbed: what every disturbed convert must reproduce."""
    reference = prepared(bucket(own_server, "reference"), tiny_dataset)
    finish(stage_process(reference, "convert"))
    return contents(reference, "runs/r/convert/")


def test_store_restart_in_the_middle_of_a_stage(own_server, tiny_dataset, undisturbed):
    expected = undisturbed
    disturbed = prepared(bucket(own_server, "disturbed"), tiny_dataset)
    process = stage_process(disturbed, "convert", "r", 14)
    wait_for(disturbed, layout.manifest_key("r", "convert", "liver_0"), process=process)
    own_server.down()
    time.sleep(1.0)
    own_server.up()
    result = finish(process)
    assert len(result["ok"]) == 5
    assert contents(disturbed, "runs/r/convert/") == expected
    record({"id": "a-store-restart", "fault": "S3 server stopped and restarted during convert",
            "survived": True, "detail": f"{len(expected)} objects identical to an undisturbed run"})


def test_stage_killed_mid_way_then_rerun(own_server, tiny_dataset, undisturbed):
    expected = undisturbed
    disturbed = prepared(bucket(own_server, "killed"), tiny_dataset)
    process = stage_process(disturbed, "convert")
    wait_for(disturbed, layout.manifest_key("r", "convert", "liver_1"), process=process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = [c for c in ("liver_0", "liver_1", "liver_2", "liver_3", "liver_4")
                   if disturbed.stat(layout.manifest_key("r", "convert", c))]
    assert len(done_before) < 5, "the kill came too late to test anything"
    result = finish(stage_process(disturbed, "convert"))
    assert sorted(result["skipped"]) == sorted(done_before)
    assert contents(disturbed, "runs/r/convert/") == expected
    record({"id": "b-stage-killed", "fault": "convert killed (SIGKILL) after some cases, then re-run",
            "survived": True, "detail": f"{len(done_before)} cases skipped on re-run, outputs identical"})


def model_state(store, key):
    payload = torch.load(io.BytesIO(store.get_bytes(key)), weights_only=True)
    return payload["state_dict"]


def test_training_killed_resumes_from_its_checkpoint(own_server, tiny_dataset):
    store = prepared(bucket(own_server, "train"), tiny_dataset, overrides=TINY_TRAINING)
    for stage in ("convert", "group", "preprocess"):
        finish(stage_process(store, stage))
    finish(stage_process(store, "train", "r", None, "--no-resume"))
    straight = model_state(store, "runs/r/train/model.pt")
    straight_history = store.get_json("runs/r/train/metrics.json")
    for ref in store.list("runs/r/train/"):
        store.delete(ref.key)  # start over, same run id, same inputs

    process = stage_process(store, "train")
    wait_for(store, "runs/r/train/checkpoints/epoch_0002.pt", process=process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert store.stat(layout.manifest_key("r", "train")) is None, "the kill came too late to test anything"
    resumed_from = max(int(r.key[-7:-3]) for r in store.list("runs/r/train/checkpoints/"))
    finish(stage_process(store, "train", "r", None, "--resume"))
    resumed = model_state(store, "runs/r/train/model.pt")
    history = store.get_json("runs/r/train/metrics.json")
    assert [(h["loss"], h.get("val_dice")) for h in history] == \
        [(h["loss"], h.get("val_dice")) for h in straight_history]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    record({"id": "c-train-killed", "fault": f"train killed (SIGKILL) after epoch {resumed_from} of 6, resumed",
            "survived": True, "detail": "final weights and per-epoch metrics bit-identical to an uninterrupted run"})


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found, queue = set(), [pid]
    while queue:
        parent = queue.pop()
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as fh:
                children = {int(c) for c in fh.read().split()}
            queue += children - found
            found |= children
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an exited orphan that nobody reaped yet has stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_data_parallel_training_killed_resumes_and_its_ranks_stop_with_it(own_server, tiny_dataset):
    """2 gloo processes: rank 0 (the stage process) killed after a checkpoint; rank 1 must not outlive it, and the
    resumed run ends with the weights and metrics of an uninterrupted 2-process run."""
    store = prepared(bucket(own_server, "ddp"), tiny_dataset, overrides=[*TINY_TRAINING, "train.processes=2"])
    for stage in ("convert", "group", "preprocess"):
        finish(stage_process(store, stage))
    finish(stage_process(store, "train", "r", None, "--no-resume"))
    straight = model_state(store, "runs/r/train/model.pt")
    straight_history = store.get_json("runs/r/train/metrics.json")
    assert store.get_json(layout.manifest_key("r", "train"))["details"]["world_size"] == 2
    for ref in store.list("runs/r/train/"):
        store.delete(ref.key)

    process = stage_process(store, "train")
    wait_for(store, "runs/r/train/checkpoints/epoch_0002.pt", process=process)
    ranks = descendants(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert store.stat(layout.manifest_key("r", "train")) is None, "the kill came too late to test anything"
    assert ranks, "no other rank was running"
    deadline = time.monotonic() + 60
    while any(map(running, ranks)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in ranks if running(pid)]
    assert not left, f"ranks still running 60 s after their launcher was killed: {left}"
    resumed_from = max(int(r.key[-7:-3]) for r in store.list("runs/r/train/checkpoints/"))
    finish(stage_process(store, "train", "r", None, "--resume"))
    assert [(h["loss"], h.get("val_dice")) for h in store.get_json("runs/r/train/metrics.json")] == \
        [(h["loss"], h.get("val_dice")) for h in straight_history]
    resumed = model_state(store, "runs/r/train/model.pt")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    record({"id": "d-train-ddp-killed", "fault": f"2-process training: rank 0 killed (SIGKILL) after epoch "
                                                 f"{resumed_from} of 6, resumed",
            "survived": True, "detail": "the other rank stopped by itself; final weights and per-epoch metrics "
                                        "bit-identical to an uninterrupted 2-process run"})
