"""Fault injection on a real store, shared by tests/test_reliability.py and tests/test_msd_faults.py: a bucket of a
server of the test's own (it gets stopped), stage processes to disturb, and the comparison against an undisturbed
run (object contents, checked against the manifests that list them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pydicom

from liverseg import layout
from liverseg.config import load_profile
from liverseg.data.msd import ingest
from liverseg.embedded import EmbeddedStore, find_free_s3_port
from liverseg.stages.plan import make_plan
from liverseg.store import ObjectStore


@contextlib.contextmanager
def server_of_its_own(root) -> Iterator[EmbeddedStore]:
    """A store server for one test module alone, because its tests stop it (its data survives a restart)."""
    server = EmbeddedStore(root=root, s3_port=find_free_s3_port())
    server.up()
    try:
        yield server
    finally:
        server.down()


def bucket(server, name) -> ObjectStore:
    store = ObjectStore(dataclasses.replace(server.settings(), bucket=name))
    store.ensure_bucket()
    return store


def prepared(store, data, run_id="r", overrides=(), dataset="tiny"):
    ingest(store, data, dataset)
    make_plan(store, run_id, dataset, load_profile("default", list(overrides), environ={}))
    return store


def stage_process(store, stage, run_id="r", retries=None, *extra):
    env = {"PATH": "/usr/bin:/bin", **store.settings.to_env(), "LIVERSEG_HOME": "/nonexistent"}
    if retries:
        env["LIVERSEG_S3_RETRY_ATTEMPTS"] = str(retries)
    return subprocess.Popen([sys.executable, "-m", "liverseg", stage, "--run-id", run_id, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process, timeout=600):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def wait_for(store, key, timeout=300, process=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.stat(key) is not None:
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended before {key} appeared")
        time.sleep(0.05)
    raise AssertionError(f"{key} did not appear")


def contents(store, prefix):
    """Every completed output under ``prefix`` as key -> content hash, checked against the manifests that list it.

    A DICOM SEG carries its creation time (Content Date/Time, type 1), so SEGs are compared by what they say:
    pixel data and the per-frame references to the CT slices.
    """
    found = {}
    for ref in store.list(prefix):
        if ref.key.endswith(layout.MANIFEST):
            manifest = store.get_json(ref.key)
            for key, entry in manifest["outputs"].items():
                actual = store.stat(key)
                assert actual is not None and actual.sha256 == entry["sha256"], f"{key} does not match its manifest"
                found[key] = entry["sha256"]
                if key.endswith("seg.dcm"):
                    ds = pydicom.dcmread(io.BytesIO(store.get_bytes(key)))
                    found[key] = hashlib.sha256(ds.PixelData + str(ds.PerFrameFunctionalGroupsSequence).encode()
                                                ).hexdigest()
    return found


def record(row: dict) -> None:
    """One row of the reliability table, for tests/bench/reliability_doc.py."""
    folder = os.environ.get("LIVERSEG_RELIABILITY_DIR", ".liverseg/reliability")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{row['id']}.json"), "w") as fh:
        json.dump(row, fh)
