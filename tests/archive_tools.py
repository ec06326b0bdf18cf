"""A real PACS for the tests: Orthanc with its DICOMweb plugin (Debian packages), on a free loopback port, with
authentication on, started from the very configuration the chart and the dev overlay deploy
(``charts/liverseg/files/orthanc.json``): only where it keeps its files, its port, loopback-only access and the
plugin's path (Debian's, not the container image's) differ. Stopped by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from liverseg.dicomweb import ENV_PASSWORD, ENV_USERNAME

REPO = Path(__file__).resolve().parents[1]
DEPLOYED_CONFIG = REPO / "charts" / "liverseg" / "files" / "orthanc.json"
DEBIAN_DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def orthanc_or_skip() -> str:
    """The Orthanc binary; missing: skip with the reason (``make test`` installs it), fail under CI=true."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin")  # sbin: not on every PATH
    if binary and DEBIAN_DICOMWEB_PLUGIN.exists():
        return binary
    reason = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} under CI=true")
    pytest.skip(reason)


@dataclass
class Orthanc:
    """One Orthanc under ``root``; ``username``/``password`` are its only user."""

    root: Path
    username: str = "liverseg"
    password: str = field(default_factory=lambda: f"pw-{secrets.token_urlsafe(12)}", repr=False)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_root(self) -> str:
        return f"{self.url}/dicom-web"

    def study_url(self, study_uid: str) -> str:
        return f"{self.dicomweb_root}/studies/{study_uid}"

    def env(self) -> dict[str, str]:
        """What a liverseg process needs to reach it."""
        return {ENV_USERNAME: self.username, ENV_PASSWORD: self.password}

    def up(self) -> Orthanc:
        binary = orthanc_or_skip()
        config = json.loads(DEPLOYED_CONFIG.read_text())
        storage = self.root / "db"
        config.update(StorageDirectory=str(storage), IndexDirectory=str(storage), HttpPort=self.port,
                      RemoteAccessAllowed=False, Plugins=[str(DEBIAN_DICOMWEB_PLUGIN)])
        self.root.mkdir(parents=True, exist_ok=True)

        (self.root / "orthanc.json").write_text(json.dumps(config, indent=2))
        log = open(self.root / "orthanc.log", "wb")  # noqa: SIM115 (the server's whole life)
        # The deployed file names its user through environment variables, as the cluster's Secret sets them.
        self.process = subprocess.Popen([binary, str(self.root / "orthanc.json")], stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, cwd=self.root,
                                        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env()})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                if self.get("/system").ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def down(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- its REST API (test set-up and checks; liverseg itself speaks DICOMweb) ---------------------------------
    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, auth=(self.username, self.password), timeout=60, **kwargs)

    def upload(self, paths: Iterable[Path]) -> int:
        """POST /instances, one file each; the number stored."""
        session = requests.Session()
        session.auth = (self.username, self.password)
        count = 0
        for path in paths:
            response = session.post(f"{self.url}/instances", data=Path(path).read_bytes(), timeout=60)
            response.raise_for_status()
            count += 1
        return count

    def instances_of_study(self, study_uid: str) -> list[dict]:
        """Every instance Orthanc holds in the study: its main DICOM tags (Orthanc's own ids aside)."""
        found = requests.post(f"{self.url}/tools/find", auth=(self.username, self.password), timeout=60,
                              json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid},
                                    "Expand": True}).json()
        return found

    def instance_file(self, orthanc_id: str) -> bytes:
        response = self.get(f"/instances/{orthanc_id}/file")
        response.raise_for_status()
        return response.content

    def series_of_study(self, study_uid: str) -> list[dict]:
        return requests.post(f"{self.url}/tools/find", auth=(self.username, self.password), timeout=60,
                             json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                   "Expand": True}).json()


# -- studies as a scanner sends them (built from phantoms) ------------------------------------------------------
CT_IMAGE_STORAGE, MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4"


def phantom_volume(seed: int, shape: tuple[int, int, int] = (64, 64, 16)):
    """A small synthetic abdomen (a Volume in HU)."""
    import numpy as np

    from liverseg.data.synth import GridSpec, make_phantom
    from liverseg.imaging.geometry import Volume

    p = make_phantom(np.random.default_rng(seed), GridSpec(shape, (4.0, 4.0, 6.0), (True, True, False)))
    return Volume(p.image, p.affine)


def scanner_series(volume, out: Path, *, study_uid: str, patient: str, number: int, description: str,
                   image_type: str = "ORIGINAL\\PRIMARY\\AXIAL", study_date: str = "20260105",
                   namespace: str | None = None, edit=None) -> list[Path]:
    """``volume`` as one series of the study ``study_uid``, as a scanner writes it (ORIGINAL\\PRIMARY unless told);
    ``edit(ds, k)`` changes slice ``k`` last."""
    import pydicom

    from dicom_helpers import nifti_to_dicom

    namespace = namespace or f"{study_uid}|{number}"
    nifti_to_dicom(volume, None, patient, namespace, out / "encoded")
    paths = []
    for k, path in enumerate(sorted((out / "encoded" / "ct").glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.PatientID, ds.PatientName = study_uid, patient, f"{patient}^"
        ds.ImageType = image_type.split("\\")
        ds.SeriesNumber, ds.SeriesDescription = number, description
        ds.StudyDate, ds.StudyTime = study_date, "101500"
        if edit is not None:
            edit(ds, k)
        target = out / f"{number:03d}-{k:04d}.dcm"
        ds.save_as(target)
        paths.append(target)
    shutil.rmtree(out / "encoded")
    return paths
