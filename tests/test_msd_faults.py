"""Faults at Decathlon size (``make bench-msd`` runs these; marked ``msd``, out of ``make test``: minutes each).

A 512×512×987 phantom, the largest MSD liver volume: the store restarting while the convert stage uploads its 987
DICOM slices, and the stage killed while it writes them. Either way the case ends complete (identical to an
undisturbed run) or not recorded at all: no manifest before every object is in, nothing half-written.
"""

from __future__ import annotations

import signal
import time

import pytest

from faults import bucket, contents, finish, prepared, record, server_of_its_own, stage_process
from liverseg import layout

pytestmark = [pytest.mark.msd, pytest.mark.slow]
SLICES = 987


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with server_of_its_own(tmp_path_factory.mktemp("weed")) as own:
        yield own


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    from liverseg.data.synth import write_msd_cases

    root = tmp_path_factory.mktemp("msd-987")
    (case,) = write_msd_cases(root, [SLICES], seed=987)
    return root, case


@pytest.fixture(scope="module")
def undisturbed(server, large):
    root, _ = large
    store = prepared(bucket(server, "reference"), root, dataset="msd")
    finish(stage_process(store, "convert"), timeout=1800)
    return contents(store, "runs/r/convert/")


def uploading(store, case: str, process, at_least: int = 100, timeout: float = 900) -> int:
    """Wait until the stage has uploaded some of the case's slices but not recorded the case; how many."""
    deadline = time.monotonic() + timeout
    prefix = f"runs/r/convert/{case}/ct/"
    while time.monotonic() < deadline:
        written = len(store.list(prefix))
        if written >= at_least:
            assert store.stat(layout.manifest_key("r", "convert", case)) is None, "the fault came too late"
            return written
        assert process.poll() is None, "the stage ended before it uploaded anything"
        time.sleep(0.2)
    raise AssertionError(f"no upload under {prefix} within {timeout} s")


def test_store_restart_while_a_987_slice_case_uploads(server, large, undisturbed):
    root, case = large
    store = prepared(bucket(server, "restart"), root, dataset="msd")
    process = stage_process(store, "convert", "r", 14)
    written = uploading(store, case, process)
    server.down()
    time.sleep(1.0)
    server.up()
    result = finish(process, timeout=1800)
    assert result["ok"] == [case]
    assert contents(store, "runs/r/convert/") == undisturbed
    record({"id": "e-msd-store-restart", "fault": f"S3 server restarted while convert uploaded a {SLICES}-slice "
            f"case (after {written} of {SLICES} slices)", "survived": True,
            "detail": f"{len(undisturbed)} objects identical to an undisturbed run"})


def test_stage_killed_while_it_writes_a_987_slice_case(server, large, undisturbed):
    root, case = large
    store = prepared(bucket(server, "killed"), root, dataset="msd")
    process = stage_process(store, "convert")
    written = uploading(store, case, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert store.stat(layout.manifest_key("r", "convert", case)) is None  # a half-written case is not recorded
    result = finish(stage_process(store, "convert"), timeout=1800)
    assert result["ok"] == [case]
    assert contents(store, "runs/r/convert/") == undisturbed
    record({"id": "f-msd-killed", "fault": f"convert killed (SIGKILL) while writing a {SLICES}-slice case "
            f"({written} of {SLICES} slices uploaded), then re-run", "survived": True,
            "detail": "no record of the half-written case; the re-run's outputs identical to an undisturbed run"})
