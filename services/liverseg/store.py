"""Object store client: the only way stages exchange data.

A thin layer over the ``minio`` SDK (imported when a client is made: commands that never touch the store, and
modules that only name its types, do not pay for it) that adds what every stage needs: retries with exponential
backoff on transient failures (the server restarting under a nightly run), a SHA-256 of every object's content in
its metadata (so manifests can name content, not only ETags, which differ for multipart uploads), JSON helpers,
and folder upload/download. Objects are written whole by single S3 PUTs (multipart completes atomically), so a
reader never sees half an object; a stage's manifest, written last, says when a set of objects is complete.
"""

from __future__ import annotations

import builtins  # ObjectStore.list shadows the built-in inside the class
import contextlib
import hashlib
import io
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from liverseg.errors import StoreError
from liverseg.logs import register_secret
from liverseg.settings import StoreSettings

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)
T = TypeVar("T")

SHA256_META = "sha256"
# S3 error codes worth retrying: the server is busy, restarting or timed out.
TRANSIENT_S3_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout",
                                "OperationAborted", "XMinioServerNotInitialized"})
_CHUNK = 1 << 20
TRANSFER_THREADS = 8
ENV_RETRY_ATTEMPTS = "LIVERSEG_S3_RETRY_ATTEMPTS"


@dataclass(frozen=True)
class ObjectRef:
    """What a manifest records of one object."""

    key: str
    etag: str
    size: int
    sha256: str | None = None

    def as_manifest(self) -> dict[str, Any]:
        return {"etag": self.etag, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter. The default rides out ~30 s of outage (a MinIO pod restarting)."""

    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 8.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(attempts=int(os.environ.get(ENV_RETRY_ATTEMPTS, cls.attempts)))

    def delays(self) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            # Full jitter keeps parallel pods from retrying in lockstep.
            yield random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


def is_transient(exc: BaseException) -> bool:
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, S3Error):
        return exc.code in TRANSIENT_S3_CODES
    if isinstance(exc, InvalidResponseError):
        # A proxy or load balancer in front of the store answering 502/503/429 with an HTML page; minio keeps
        # the status only in a private field.
        status = getattr(exc, "_code", 0) or 0
        return status == 429 or status >= 500
    return isinstance(exc, (ServerError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectStore:
    """One bucket of an S3 server, with retries. Keys are plain strings; see ``layout`` for the key scheme."""

    def __init__(self, settings: StoreSettings, retry: RetryPolicy | None = None):
        import urllib3
        from minio import Minio

        self.settings = settings
        self.bucket = settings.bucket
        register_secret(settings.secret_key)  # also when it came from a file (the embedded store.env), not the env
        self.retry = retry or RetryPolicy.from_env()
        http_client = None
        if settings.secure and settings.ca_bundle:
            http_client = urllib3.PoolManager(
                ssl_context=ssl.create_default_context(cafile=settings.ca_bundle),
                timeout=urllib3.Timeout(connect=10, read=300),
                retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            )
        # Traffic counters for the stage metrics (bytes read from / written to the store by this process).
        self.bytes_read = 0
        self.bytes_written = 0
        self._count_lock = threading.Lock()
        self.client: Minio = Minio(settings.endpoint, access_key=settings.access_key, secret_key=settings.secret_key,
                            secure=settings.secure, region=settings.region, http_client=http_client)

    @classmethod
    def from_env(cls) -> ObjectStore:
        return cls(StoreSettings.from_env())

    def _count(self, read: int = 0, written: int = 0) -> None:
        with self._count_lock:
            self.bytes_read += read
            self.bytes_written += written

    # -- retries -------------------------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                delay = next(delays, None)
                if delay is None:
                    raise StoreError(f"{what}: store still failing after {self.retry.attempts} attempts (down, or "
                                     f"answering with server errors); last error {type(exc).__name__}: {exc}") from exc
                log.warning("store call failed, retrying", extra={"op": what, "retry_in_s": round(delay, 2),
                                                                  "error": type(exc).__name__})
                time.sleep(delay)

    # -- bucket --------------------------------------------------------------------------------------------
    def ensure_bucket(self) -> None:
        from minio.error import S3Error

        if not self._call("bucket_exists", lambda: self.client.bucket_exists(self.bucket)):
            with contextlib.suppress(S3Error):  # another process created it first
                self._call("make_bucket", lambda: self.client.make_bucket(self.bucket))

    def ping(self) -> bool:
        """True when the server answers (no retries: for status checks and start-up polling)."""
        try:
            self.client.bucket_exists(self.bucket)
            return True
        except Exception:
            return False

    # -- writes --------------------------------------------------------------------------------------------
    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        sha = hashlib.sha256(data).hexdigest()
        result = self._call(f"put {key}", lambda: self.client.put_object(
            self.bucket, key, io.BytesIO(data), len(data), content_type=content_type,
            metadata={SHA256_META: sha}))
        self._count(written=len(data))
        return ObjectRef(key, result.etag or "", len(data), sha)

    def put_json(self, key: str, obj: Any) -> ObjectRef:
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        return self.put_bytes(key, data, content_type="application/json")

    def put_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> ObjectRef:
        path = Path(path)
        sha = sha256_file(path)
        result = self._call(f"put {key}", lambda: self.client.fput_object(
            self.bucket, key, str(path), content_type=content_type, metadata={SHA256_META: sha}))
        size = path.stat().st_size
        self._count(written=size)
        return ObjectRef(key, result.etag or "", size, sha)

    def upload_dir(self, local_dir: Path, prefix: str) -> list[ObjectRef]:
        """Upload every file under ``local_dir`` to ``prefix/<relative path>``; refs come back in key order."""
        local_dir = Path(local_dir)
        files = [p for p in sorted(local_dir.rglob("*")) if p.is_file()]
        keys = [f"{prefix.rstrip('/')}/{p.relative_to(local_dir).as_posix()}" for p in files]
        return self._parallel(self.put_file, list(zip(keys, files, strict=True)))

    def _parallel(self, fn: Callable[..., T], calls: list[tuple]) -> list[T]:
        """Many small transfers are latency-bound: overlap them (the minio client is thread-safe)."""
        if len(calls) <= 1:
            return [fn(*c) for c in calls]
        with ThreadPoolExecutor(max_workers=TRANSFER_THREADS) as pool:
            return list(pool.map(lambda c: fn(*c), calls))

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", lambda: self.client.remove_object(self.bucket, key))

    # -- reads ---------------------------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectRef | None:
        """The object's reference, or None when it does not exist."""
        from minio.error import S3Error

        try:
            info = self._call(f"stat {key}", lambda: self.client.stat_object(self.bucket, key))
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject", "ResourceNotFound"}:
                return None
            raise
        meta = {k.lower(): v for k, v in (info.metadata or {}).items()}
        sha = meta.get(f"x-amz-meta-{SHA256_META}")
        return ObjectRef(key, info.etag or "", info.size or 0, sha)

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def get_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()
        data = self._call(f"get {key}", read)
        self._count(read=len(data))
        return data

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_file(self, key: str, path: Path) -> Path:
        """Stream an object to ``path`` (written to a temporary name first, then renamed)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(f"get {key}", lambda: self.client.fget_object(self.bucket, key, str(path)))
        self._count(read=path.stat().st_size)
        return path

    @contextlib.contextmanager
    def open_stream(self, key: str) -> Iterator[Iterator[bytes]]:
        """Iterate an object's bytes in 1 MiB chunks without holding it in memory."""
        response = self._call(f"get {key}", lambda: self.client.get_object(self.bucket, key))
        try:
            yield response.stream(_CHUNK)
        finally:
            response.close()
            response.release_conn()

    def list(self, prefix: str, recursive: bool = True) -> list[ObjectRef]:
        """Objects under ``prefix``, sorted by key (sizes and ETags only; sha256 needs a stat)."""
        def listing() -> list[ObjectRef]:
            return [ObjectRef(o.object_name, o.etag, o.size) for o in
                    self.client.list_objects(self.bucket, prefix=prefix, recursive=recursive)
                    if not o.is_dir]
        return sorted(self._call(f"list {prefix}", listing), key=lambda r: r.key)

    def download_prefix(self, prefix: str, local_dir: Path) -> builtins.list[Path]:
        """Download every object under ``prefix`` to ``local_dir/<key relative to prefix>``."""
        prefix = prefix.rstrip("/") + "/"
        return self.get_files({ref.key: Path(local_dir) / ref.key[len(prefix):] for ref in self.list(prefix)})

    def get_files(self, targets: dict[str, Path]) -> builtins.list[Path]:
        """Download several objects (key -> local path) concurrently."""
        return self._parallel(self.get_file, list(targets.items()))
