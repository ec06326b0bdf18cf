"""The edge every stage shares: the run's plan, the per-case loop, manifests, quarantine and metrics.

A per-case stage supplies three things for each case: which store objects it reads (``inputs``), the parameters
that shape its output (``params``), and the work itself (``process``: inputs downloaded into an empty folder,
outputs uploaded). This module decides whether the work is needed (manifest fingerprint), sets the case aside when
the data is bad (``InputError``: quarantine entry + manifest with status ``quarantined``), and writes the manifest
last. Stages therefore never touch another stage's local files: only keys in the store.
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from minio.error import MinioException
from pydantic import BaseModel

from . import layout, logs
from . import manifest as mf
from .config import Profile, profile_from_dict
from .errors import CaseFailed, ConflictError, InputError
from .metrics import StageMetrics
from .store import ObjectRef, ObjectStore, StoreError

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """The stage cannot run at all (missing plan, upstream stage not complete): exit non-zero."""


class CaseEntry(BaseModel):
    image: str
    label: str | None = None
    patient: str


class Plan(BaseModel):
    """What a run works on: written by the plan step, read by every later stage."""

    run_id: str
    dataset: str
    cases: dict[str, CaseEntry]
    split: dict[str, list[str]]
    profile: dict[str, Any]
    planned_at: str | None = None  # when the plan was made: the date stages give objects they create (SEG)

    def config(self) -> Profile:
        return profile_from_dict(self.profile)

    def split_of(self, case: str) -> str:
        return next(part for part, cases in self.split.items() if case in cases)


def load_plan(store: ObjectStore, run_id: str) -> Plan:
    record = mf.read(store, layout.manifest_key(run_id, "plan"))
    if record is None:
        raise StageError(f"run {run_id} has no plan: run 'liverseg plan --run-id {run_id} --dataset NAME' first")
    return Plan.model_validate(record.details["plan"])


@dataclass
class StageContext:
    store: ObjectStore
    run_id: str
    stage: str
    metrics: StageMetrics
    plan: Plan | None = None

    @property
    def config(self) -> Profile:
        if self.plan is None:
            raise StageError("this stage needs a plan")
        return self.plan.config()


@dataclass
class CaseOutput:
    outputs: list[ObjectRef]
    details: dict[str, Any] = field(default_factory=dict)


class CaseStage(Protocol):
    name: str

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]: ...

    def params(self, ctx: StageContext) -> dict[str, Any]: ...

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> CaseOutput: ...


def upstream(ctx: StageContext, stage: str, case: str) -> mf.Manifest:
    """The upstream stage's manifest for a case; a quarantined one stops this case with the same reason."""
    record = mf.read(ctx.store, layout.manifest_key(ctx.run_id, stage, case))
    if record is None:
        raise StageError(f"case {case}: stage '{stage}' has not completed it (no manifest) in run {ctx.run_id}")
    if not record.ok:
        raise CaseFailed(case, f"set aside by {stage}: {record.error}")
    return record


def source_refs(ctx: StageContext, case: str) -> dict[str, ObjectRef]:
    """The case's ingested image (and label, when it has one) as the plan names them, checked present."""
    entry = ctx.plan.cases[case]
    refs = {}
    for role, key in (("image", entry.image), ("label", entry.label)):
        if key is None:
            continue
        ref = ctx.store.stat(key)
        if ref is None:
            raise InputError(f"{role} object {key} is missing from the store")
        refs[role] = ref
    return refs


def completed(ctx: StageContext, stage: str) -> mf.Manifest:
    """A whole-run stage's manifest, or a ``StageError`` when that stage has not finished."""
    record = mf.read(ctx.store, layout.manifest_key(ctx.run_id, stage))
    if record is None:
        raise StageError(f"run {ctx.run_id}: stage '{stage}' has not completed")
    return record


def run_once(ctx: StageContext, inputs: dict[str, ObjectRef], params: dict[str, Any],
             produce: Callable[[str], tuple[list[ObjectRef], dict[str, Any]]]) -> mf.Manifest:
    """A whole-run stage: skip when its manifest matches, refuse when it differs, else produce and record.

    ``produce(fingerprint)`` does the work and returns (outputs, details).
    """
    clock = mf.Stopwatch()
    fingerprint = mf.fingerprint(inputs, params, mf.code_version())
    key = layout.manifest_key(ctx.run_id, ctx.stage)
    existing = mf.read(ctx.store, key)
    if existing is not None:
        if existing.fingerprint == fingerprint:
            log.info("already complete, skipped")
            return existing
        raise ConflictError(f"run {ctx.run_id}: stage '{ctx.stage}' already completed with other inputs, "
                            "parameters or code; completed output is never overwritten: start a new run id")
    outputs, details = produce(fingerprint)
    record = mf.Manifest(stage=ctx.stage, run_id=ctx.run_id, fingerprint=fingerprint,
                         code_version=mf.code_version(), params=params, inputs=mf.entries(inputs),
                         outputs=mf.entries(outputs), details=details, **clock.stamp())
    mf.write(ctx.store, key, record)
    return record


def refs_of(record: mf.Manifest, prefix: str = "") -> dict[str, ObjectRef]:
    return {k: ObjectRef(k, e.etag, e.size, e.sha256) for k, e in record.outputs.items() if k.startswith(prefix)}


@dataclass
class StageOutcome:
    ok: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    quarantined: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "skipped": self.skipped, "quarantined": self.quarantined}


def _quarantine(ctx: StageContext, case: str, reason: str, file: str | None, inputs: dict[str, ObjectRef],
                params: dict[str, Any], fingerprint: str, clock: mf.Stopwatch) -> None:
    key = layout.manifest_key(ctx.run_id, ctx.stage, case)
    existing = mf.read(ctx.store, key)
    if existing is not None and existing.ok:
        # Later stages may already have used this output: it must not turn into "set aside" under them.
        raise ConflictError(f"case {case}: stage '{ctx.stage}' already completed in run {ctx.run_id} and now "
                            f"fails ({reason}); completed output is never overwritten: start a new run id")
    error = f"{file}: {reason}" if file else reason
    if existing is not None and existing.fingerprint == fingerprint and existing.error == error:
        return  # set aside before for the same reason: the record stands
    entry = {"stage": ctx.stage, "case": case, "reason": reason, "file": file, "run_id": ctx.run_id}
    ctx.store.put_json(layout.quarantine_key(ctx.run_id, ctx.stage, case), entry)
    mf.write(ctx.store, key, mf.Manifest(
        stage=ctx.stage, run_id=ctx.run_id, case=case, status="quarantined",
        error=error, fingerprint=fingerprint, code_version=mf.code_version(),
        params=params, inputs=mf.entries(inputs), details={"quarantine": entry}, **clock.stamp()))


def run_case(stage: CaseStage, ctx: StageContext, case: str, outcome: StageOutcome) -> None:
    clock = mf.Stopwatch()
    params = stage.params(ctx)
    try:
        inputs = stage.inputs(ctx, case)
    except (CaseFailed, InputError) as exc:
        # Upstream set the case aside: record it here too, so every stage accounts for every case.
        fingerprint = mf.fingerprint({}, params, mf.code_version())
        _quarantine(ctx, case, exc.reason, getattr(exc, "file", None), {}, params, fingerprint, clock)
        outcome.quarantined[case] = exc.reason
        ctx.metrics.cases.labels("quarantined").inc()
        return
    fingerprint = mf.fingerprint(inputs, params, mf.code_version())
    key = layout.manifest_key(ctx.run_id, ctx.stage, case)
    existing = mf.read(ctx.store, key)
    if existing is not None and existing.fingerprint == fingerprint:
        log.info("already complete, skipped", extra={"status": existing.status})
        if existing.ok:
            outcome.skipped.append(case)
        else:
            outcome.quarantined[case] = existing.error or ""
        ctx.metrics.cases.labels("skipped" if existing.ok else "quarantined").inc()
        return
    if existing is not None and existing.ok:
        raise ConflictError(
            f"case {case}: stage '{ctx.stage}' already completed in run {ctx.run_id} with other inputs, "
            "parameters or code; completed output is never overwritten: start a new run id")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"liverseg-{ctx.stage}-") as tmp:
        try:
            result = stage.process(ctx, case, inputs, Path(tmp))
        except (InputError, CaseFailed) as exc:
            reason, file = exc.reason, getattr(exc, "file", None)
            log.error("case set aside", extra={"reason": reason, "file": file})
            _quarantine(ctx, case, reason, file, inputs, params, fingerprint, clock)
            outcome.quarantined[case] = f"{file}: {reason}" if file else reason
            ctx.metrics.cases.labels("quarantined").inc()
            return
    mf.write(ctx.store, key, mf.Manifest(
        stage=ctx.stage, run_id=ctx.run_id, case=case, fingerprint=fingerprint, code_version=mf.code_version(),
        params=params, inputs=mf.entries(inputs), outputs=mf.entries(result.outputs), details=result.details,
        **clock.stamp()))
    if existing is not None:  # it was set aside before: the reason no longer holds
        ctx.store.delete(layout.quarantine_key(ctx.run_id, ctx.stage, case))
    ctx.metrics.case_seconds.observe(time.perf_counter() - started)
    ctx.metrics.cases.labels("ok").inc()
    outcome.ok.append(case)


def run_cases(stage: CaseStage, ctx: StageContext, cases: Iterable[str]) -> StageOutcome:
    """Run ``stage`` over ``cases`` one by one; bad data sets a case aside and the others go on."""
    cases = list(cases)
    outcome = StageOutcome()
    for n, case in enumerate(cases, start=1):
        with logs.bound(case=case):
            log.info("case started", extra={"progress": f"{n}/{len(cases)}"})
            try:
                run_case(stage, ctx, case, outcome)
            except (StageError, ConflictError, StoreError, MinioException):  # the store, not the case
                raise
            except Exception as exc:
                # A bug or an unexpected file must not cost the other cases: set this one aside, keep the trace.
                log.error("case failed unexpectedly", extra={"error": f"{type(exc).__name__}: {exc}",
                                                             "trace": traceback.format_exc(limit=8)})
                reason = f"internal error: {type(exc).__name__}: {exc}"
                _quarantine(ctx, case, reason, None, {}, stage.params(ctx),
                            mf.fingerprint({}, stage.params(ctx), mf.code_version()), mf.Stopwatch())
                outcome.quarantined[case] = reason
                ctx.metrics.cases.labels("quarantined").inc()
    log.info("stage finished", extra={"ok": len(outcome.ok), "skipped": len(outcome.skipped),
                                      "quarantined": len(outcome.quarantined)})
    return outcome
