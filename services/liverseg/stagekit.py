"""The edge every stage shares: the run's plan, the two stage shapes, manifests, quarantine and the contract.

A stage is one of two shapes:

- ``CaseStage`` (a step that covers cases): for each case, which store objects it reads (``inputs``), the
  parameters that shape its output (``params``), and the work (``process``: inputs downloaded into an empty
  folder, outputs uploaded). ``run_cases`` decides per case whether the work is needed (manifest fingerprint),
  sets the case aside when the data is bad (``InputError``: quarantine entry + manifest with status
  ``quarantined``) and writes the manifest last;
- ``RunStage`` (a step that covers the whole run): the same three for the run as a whole (``produce`` instead of
  ``process``), and ``result``, what its command prints; ``run_once`` skips, refuses or produces.

The ``StageContext`` holds each stage to its step's declaration in the stage graph (``graph``): ``read`` and
``record`` give only outputs the step declares it reads, and no manifest records an object none of the step's
outputs covers. Stages therefore never touch another stage's local files: only declared objects in the store.
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel

from liverseg import layout, logs
from liverseg import manifest as mf
from liverseg.config import Profile, profile_from_dict
from liverseg.errors import CannotRun, CaseFailed, ConflictError, ContractError, InputError, StageError
from liverseg.graph import PLAN, SOURCE, Output, Step
from liverseg.metrics import StageMetrics
from liverseg.store import ObjectRef, ObjectStore, StoreError

__all__ = [
    "CaseEntry", "CaseStage", "Plan", "RunStage", "StageContext", "StageOutcome", "StageOutput", "load_plan",
    "run_case", "run_cases", "run_once",
]

log = logging.getLogger(__name__)


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

    def created(self) -> datetime | None:
        """The creation time stages give the DICOM objects they make: the same for every pod, so a case written
        twice at once is the same bytes twice."""
        return datetime.fromisoformat(self.planned_at) if self.planned_at else None

    def split_of(self, case: str) -> str:
        return next(part for part, cases in self.split.items() if case in cases)

    def covered(self, covers: str) -> list[str]:
        """The cases a step that covers ``covers`` works on (``cases``: all; ``test``: the held-out ones)."""
        return list(self.cases) if covers == "cases" else list(self.split["test"])


def load_plan(store: ObjectStore, run_id: str) -> Plan:
    record = mf.read(store, layout.manifest_key(run_id, PLAN.step))
    if record is None:
        raise StageError(f"run {run_id} has no plan: run 'liverseg plan --run-id {run_id} --dataset NAME' first")
    return Plan.model_validate(record.details["plan"])


@dataclass
class StageOutput:
    """What a stage's work produced: the objects it wrote and the details its manifest records."""

    outputs: list[ObjectRef]
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    store: ObjectStore
    run_id: str
    step: Step
    metrics: StageMetrics
    plan: Plan | None = None

    @property
    def stage(self) -> str:
        return self.step.name

    @property
    def planned(self) -> Plan:
        """The run's plan; a ``StageError`` for a stage run without one (study mode)."""
        if self.plan is None:
            raise StageError("this stage needs a plan")
        return self.plan

    @property
    def config(self) -> Profile:
        return self.planned.config()

    def _declared(self, output: Output) -> None:
        if output not in self.step.reads and output.step != self.step.name:
            raise ContractError(f"step '{self.step.name}' reads {output}, which its declaration in the stage graph "
                                f"does not list (reads: {', '.join(map(str, self.step.reads)) or 'nothing'})")

    def record(self, output: Output, case: str | None = None) -> mf.Manifest:
        """The manifest of the step that writes ``output`` (for ``case`` when it is per case). ``StageError``
        when that step has not completed it; ``CaseFailed`` with its reason when it set the case aside."""
        self._declared(output)
        case = case if output.per_case else None
        record = mf.read(self.store, layout.manifest_key(self.run_id, output.step, case))
        where = f"case {case}: " if case else f"run {self.run_id}: "
        if record is None:
            raise StageError(f"{where}step '{output.step}' has not completed (no manifest) in run {self.run_id}")
        if not record.ok:
            raise CaseFailed(case or "", f"set aside by {output.step}: {record.error}")
        return record

    def read(self, output: Output, case: str | None = None) -> dict[str, ObjectRef]:
        """The objects of ``output`` that its step recorded (see ``record``), key -> ref."""
        record = self.record(output, case)
        case = case if output.per_case else None
        return {k: ObjectRef(k, e.etag, e.size, e.sha256) for k, e in record.outputs.items()
                if output.owns(k, self.run_id, case)}

    def sources(self, case: str) -> dict[str, ObjectRef]:
        """The case's ingested image (and label, when it has one) as the plan names them, checked present."""
        self._declared(SOURCE)
        entry = self.planned.cases[case]
        refs = {}
        for role, key in (("image", entry.image), ("label", entry.label)):
            if key is None:
                continue
            ref = self.store.stat(key)
            if ref is None:
                raise InputError(f"{role} object {key} is missing from the store")
            refs[role] = ref
        return refs

    def check_writes(self, refs: Iterable[ObjectRef], case: str | None = None) -> None:
        """Every object a manifest is about to record belongs to one of the step's declared outputs."""
        dataset = self.plan.dataset if self.plan else None
        stray = [r.key for r in refs if not any(o.owns(r.key, self.run_id, case, dataset) for o in self.step.writes)]
        if stray:
            raise ContractError(f"step '{self.step.name}' wrote {', '.join(stray[:3])}, which none of its declared "
                                f"outputs ({', '.join(map(str, self.step.writes))}) covers")


@runtime_checkable
class CaseStage(Protocol):
    """A stage that covers cases, one at a time."""

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]: ...

    def params(self, ctx: StageContext) -> dict[str, Any]: ...

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> StageOutput: ...


@runtime_checkable
class RunStage(Protocol):
    """A stage that covers the whole run in one process (``run_step`` tells the shapes apart by ``produce``)."""

    def inputs(self, ctx: StageContext) -> dict[str, ObjectRef]: ...

    def params(self, ctx: StageContext) -> dict[str, Any]: ...

    def produce(self, ctx: StageContext, inputs: dict[str, ObjectRef], work: Path,
                fingerprint: str) -> StageOutput: ...

    def result(self, ctx: StageContext, record: mf.Manifest) -> dict[str, Any]:
        """What the command prints (one JSON object), once the step's record exists."""
        ...


def run_once(ctx: StageContext, stage: RunStage, work: Path) -> mf.Manifest:
    """A whole-run stage: skip when its manifest matches, refuse when it differs, else produce and record."""
    clock = mf.Stopwatch()
    inputs, params = stage.inputs(ctx), stage.params(ctx)
    fingerprint = mf.fingerprint(inputs, params, mf.code_version())
    key = layout.manifest_key(ctx.run_id, ctx.stage)
    existing = mf.read(ctx.store, key)
    if existing is not None:
        if existing.fingerprint == fingerprint:
            log.info("already complete, skipped")
            return existing
        raise ConflictError(f"run {ctx.run_id}: stage '{ctx.stage}' already completed with other inputs, "
                            "parameters or code; completed output is never overwritten: start a new run id")
    produced = stage.produce(ctx, inputs, work, fingerprint)
    ctx.check_writes(produced.outputs)
    record = mf.Manifest(stage=ctx.stage, run_id=ctx.run_id, fingerprint=fingerprint,
                         code_version=mf.code_version(), params=params, inputs=mf.entries(inputs),
                         outputs=mf.entries(produced.outputs), details=produced.details, **clock.stamp())
    mf.write(ctx.store, key, record)
    return record


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
    ctx.check_writes(result.outputs, case)
    mf.write(ctx.store, key, mf.Manifest(
        stage=ctx.stage, run_id=ctx.run_id, case=case, fingerprint=fingerprint, code_version=mf.code_version(),
        params=params, inputs=mf.entries(inputs), outputs=mf.entries(result.outputs), details=result.details,
        **clock.stamp()))
    if existing is not None:  # it was set aside before: the reason no longer holds
        ctx.store.delete(layout.quarantine_key(ctx.run_id, ctx.stage, case))
    ctx.metrics.case_seconds.observe(time.perf_counter() - started)
    ctx.metrics.cases.labels("ok").inc()
    outcome.ok.append(case)


def _is_store_failure(exc: BaseException) -> bool:
    """The store's fault, not the case's: the stage stops (exit 1, retried) rather than set the case aside."""
    return isinstance(exc, StoreError) or type(exc).__module__.split(".")[0] == "minio"


def run_cases(stage: CaseStage, ctx: StageContext, cases: Iterable[str]) -> StageOutcome:
    """Run ``stage`` over ``cases`` one by one; bad data sets a case aside and the others go on."""
    cases = list(cases)
    outcome = StageOutcome()
    for n, case in enumerate(cases, start=1):
        with logs.bound(case=case):
            log.info("case started", extra={"progress": f"{n}/{len(cases)}"})
            try:
                run_case(stage, ctx, case, outcome)
            except (CannotRun, ContractError):  # the stage cannot go on now (archive, registry, upstream): exit 1
                raise
            except Exception as exc:
                if _is_store_failure(exc):
                    raise
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
