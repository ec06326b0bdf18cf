"""Shared fixtures: a real S3 server (weed mini on free loopback ports), buckets per test, synthetic data, and a real
PACS (Orthanc with DICOMweb, authentication on) for the archive tests.

No S3 mocks: every store test talks SigV4 to a real server. The server starts once per session (~1 s) and each
test gets its own bucket, so tests cannot see each other's objects. The same holds for the archive: Orthanc starts
once per session (~1 s), and each test makes studies of its own.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from pathlib import Path

import pytest

from liverseg.embedded import EmbeddedStore, find_free_s3_port
from liverseg.settings import StoreSettings
from liverseg.store import ObjectStore

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def root_log_handlers():
    """A command run in-process (``logs.configure``) points the root logger at that test's captured stderr, which
    pytest closes after it: later tests would log into a closed file. Each test gets back the handlers it found."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def weed(tmp_path_factory) -> EmbeddedStore:
    server = EmbeddedStore(root=tmp_path_factory.mktemp("weed"), s3_port=find_free_s3_port())
    server.up()
    yield server
    server.down()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    from archive_tools import Orthanc

    server = Orthanc(tmp_path_factory.mktemp("orthanc")).up()
    yield server
    server.down()


@pytest.fixture
def settings(weed) -> StoreSettings:
    """Settings for a fresh bucket on the session's server."""
    fresh = dataclasses.replace(weed.settings(), bucket=f"t-{uuid.uuid4().hex[:12]}")
    ObjectStore(fresh).ensure_bucket()
    return fresh


@pytest.fixture
def store(settings) -> ObjectStore:
    return ObjectStore(settings)


@pytest.fixture
def store_env(settings, monkeypatch, tmp_path) -> dict[str, str]:
    """The process environment pointing at the test bucket (for CLI calls in this process and children)."""
    for key in list(os.environ):
        if key.startswith("LIVERSEG"):
            monkeypatch.delenv(key)
    env = settings.to_env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LIVERSEG_HOME", str(tmp_path / "home"))
    return env


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Five small synthetic cases (128–160 px matrix) in the MSD layout; generated once per session. Legacy
    phantoms: the pipeline's mechanics need small, fast cases, not anatomy (``test_anatomy`` covers that one)."""
    from liverseg.data.synth import write_dataset

    root = tmp_path_factory.mktemp("tiny-msd")
    write_dataset(root, cases=5, seed=7, matrix=(128, 160), generator="legacy")
    return root


def shared_data_or_skip(name: str) -> Path:
    """Real data from ../shared/data. Absent on a user's machine: skip with the reason; never skipped in CI."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing under CI=true: the real-data tests must run in CI")
        pytest.skip(f"real data {path} is not on this machine (it ships beside the repository in CI only)")
    return path
