"""Stage manifests: the record of what a stage read, wrote and decided, written last as its completion marker.

A manifest exists only when its outputs are all in the store, so "manifest present" means "complete". Its
``fingerprint`` hashes the inputs' content, the parameters and the code version: a re-run with the same fingerprint
skips the work; a re-run with a different one is refused rather than overwrite completed output.
"""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field

from liverseg.provenance import code_version
from liverseg.store import ObjectRef, ObjectStore

__all__ = ["Manifest", "ObjectEntry", "Stopwatch", "code_version", "entries", "fingerprint", "read", "utc_now",
           "write"]


def fingerprint(inputs: dict[str, ObjectRef], params: dict[str, Any], version: str) -> str:
    """Stable hash of what determines a stage's output for one case."""
    content = {k: (r.sha256 or r.etag) for k, r in sorted(inputs.items())}
    blob = json.dumps({"inputs": content, "params": params, "code": version}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ObjectEntry(BaseModel):
    etag: str
    size: int
    sha256: str | None = None


class Manifest(BaseModel):
    """One stage's record for one case (``case`` set) or for a whole run (``case`` None)."""

    kind: Literal["liverseg.manifest/v1"] = "liverseg.manifest/v1"
    stage: str
    run_id: str
    case: str | None = None
    status: Literal["ok", "quarantined"] = "ok"
    error: str | None = None
    fingerprint: str
    code_version: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, ObjectEntry] = Field(default_factory=dict)
    outputs: dict[str, ObjectEntry] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    started_at: str
    finished_at: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def entries(refs: dict[str, ObjectRef] | list[ObjectRef]) -> dict[str, ObjectEntry]:
    items = refs.values() if isinstance(refs, dict) else refs
    return {r.key: ObjectEntry(**r.as_manifest()) for r in items}


def read(store: ObjectStore, key: str) -> Manifest | None:
    if store.stat(key) is None:
        return None
    return Manifest.model_validate(store.get_json(key))


def write(store: ObjectStore, key: str, manifest: Manifest) -> ObjectRef:
    return store.put_json(key, manifest.model_dump(mode="json"))


class Stopwatch:
    """Start/finish timestamps and elapsed seconds for a manifest."""

    def __init__(self) -> None:
        self.started_at = utc_now()
        self._t0 = time.perf_counter()

    def stamp(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "finished_at": utc_now(),
                "seconds": round(time.perf_counter() - self._t0, 3)}
