"""The one entry point of every step command (``liverseg <step>``): options, logging, metrics, exit codes.

A step's module (``graph.Step.module``) adds its own options with ``add_run_options`` and calls ``run_step`` with
its stage object; this module does the rest the same way for all of them: the store, the plan, the cases a step
covers (or ``--case``), ``--workers``, the JSON result on stdout, metrics pushed, and the exit code from
``errors.exit_code`` (0 the stage ran, cases may have been set aside: see the JSON and the manifests).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liverseg import logs
from liverseg.errors import EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, StageError, exit_code
from liverseg.graph import PLAN, Step
from liverseg.metrics import StageMetrics
from liverseg.settings import ENV_WORKER
from liverseg.stagekit import CaseStage, RunStage, StageContext, load_plan, run_cases, run_once
from liverseg.store import ObjectStore

__all__ = ["add_run_options", "execute", "run_step", "worker_command_line"]

log = logging.getLogger(__name__)


def add_run_options(parser: argparse.ArgumentParser, step: Step) -> None:
    parser.add_argument("--run-id", required=True, help="the run to work in (runs/<run-id>/ in the store)")
    if step.covers != "run":
        parser.add_argument("--case", action="append", default=[], metavar="CASE",
                            help="only this case (repeatable; default: every case the step covers)")
        parser.add_argument("--workers", type=int, default=1, metavar="N",
                            help="process the cases in N worker processes (default 1)")


def execute(step: Step, args: argparse.Namespace, body: Callable[[StageContext], dict[str, Any]],
            needs_plan: bool = True) -> int:
    """Run ``body`` with a ready context; log a failure as one JSON line; push metrics; return the exit code."""
    cases = getattr(args, "case", None) or []
    case = cases[0] if len(cases) == 1 else None
    logs.configure(stage=step.name, run_id=args.run_id, **({"case": case} if case else {}))
    metrics = StageMetrics(step.name, args.run_id, case)
    started = time.monotonic()
    store = None
    code = EXIT_OK
    try:
        store = ObjectStore.from_env()
        plan = load_plan(store, args.run_id) if needs_plan else None
        ctx = StageContext(store=store, run_id=args.run_id, step=step, metrics=metrics, plan=plan)
        result = body(ctx)
        metrics.last_success.set_to_current_time()
        print(json.dumps(result, default=str))
    except Exception as exc:
        code = exit_code(exc)
        extra = {"error": str(exc)}
        if code == EXIT_INTERNAL:
            extra.update(error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc(limit=12))
        log.error("cannot run" if code == EXIT_USAGE else "stage failed", extra=extra)
    finally:
        metrics.duration.set(time.monotonic() - started)
        if store is not None:
            metrics.bytes.labels("in").inc(store.bytes_read)
            metrics.bytes.labels("out").inc(store.bytes_written)
        metrics.push()
    sys.stdout.flush()
    return code


def run_step(step: Step, args: argparse.Namespace, stage: CaseStage | RunStage, *,
             cases: list[str] | None = None, needs_plan: bool | None = None) -> int:
    """The body of every step command. A whole-run step produces once (``run_once``); a per-case step works on
    ``--case``s, or the given ``cases``, or the cases its step covers in the plan, in ``--workers`` processes."""
    needs_plan = PLAN in step.reads if needs_plan is None else needs_plan
    body: Callable[[StageContext], dict[str, Any]]
    if isinstance(stage, RunStage):
        run_stage = stage

        def body(ctx: StageContext) -> dict[str, Any]:
            with tempfile.TemporaryDirectory(prefix=f"liverseg-{step.name}-") as tmp:
                return run_stage.result(ctx, run_once(ctx, run_stage, Path(tmp)))
    else:
        case_stage = stage

        def body(ctx: StageContext) -> dict[str, Any]:
            chosen = args.case or cases or ctx.planned.covered(step.covers)
            known = cases if cases is not None else ctx.planned.cases
            unknown = [c for c in chosen if c not in known]
            if unknown:
                raise StageError(f"cases not in run {ctx.run_id}'s {'plan' if cases is None else 'studies'}: "
                                 f"{', '.join(unknown)}")
            workers = min(args.workers, len(chosen))
            if workers > 1:
                return _in_workers(args.command_line, chosen, workers)
            return run_cases(case_stage, ctx, chosen).as_dict()
    if isinstance(stage, RunStage) != (step.covers == "run"):
        raise TypeError(f"step {step.name} covers {step.covers!r}: its stage must be a "
                        f"{'RunStage' if step.covers == 'run' else 'CaseStage'}")
    return execute(step, args, body, needs_plan)


def worker_command_line(command_line: list[str], cases: list[str]) -> list[str]:
    """The parent's command line with its ``--case``/``--workers`` options replaced by ``cases``: every other
    option (``--model``, ``--device``, …) reaches the worker unchanged."""
    kept: list[str] = []
    tokens = iter(command_line)
    for token in tokens:
        name, has_value, _ = token.partition("=")
        # argparse accepts unambiguous prefixes (--work 2), so match those too
        if len(name) > 2 and any(option.startswith(name) for option in ("--case", "--workers")):
            if not has_value:
                next(tokens, None)
            continue
        kept.append(token)
    return [*kept, *(a for case in cases for a in ("--case", case))]


def _in_workers(command_line: list[str], cases: list[str], workers: int) -> dict[str, Any]:
    chunks = [cases[i::workers] for i in range(workers)]
    children = [subprocess.Popen([sys.executable, "-m", "liverseg", *worker_command_line(command_line, chunk)],
                                 stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                                 env={**os.environ, ENV_WORKER: str(n)})
                for n, chunk in enumerate(chunks)]
    merged: dict[str, Any] = {"ok": [], "skipped": [], "quarantined": {}}
    failed = []
    for child, chunk in zip(children, chunks, strict=True):
        out, _ = child.communicate()
        lines = out.strip().splitlines()
        if child.returncode != 0 or not lines:
            failed.append(f"worker for {chunk[0]}… exited with {child.returncode}")
            continue
        result = json.loads(lines[-1])
        merged["ok"] += result["ok"]
        merged["skipped"] += result["skipped"]
        merged["quarantined"].update(result["quarantined"])
    if failed:
        raise StageError("; ".join(failed))
    return merged
