"""Shared command-line plumbing of the stage entry points: options, logging, metrics, exit codes.

Exit codes: 0 the stage ran (cases may have been set aside: see the JSON on stdout and the manifests);
1 the stage could not run (store unreachable, missing plan, upstream incomplete, conflicting output);
2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from minio.error import MinioException

from . import logs
from .config import ConfigError
from .errors import ConflictError
from .metrics import StageMetrics
from .registry import RegistryError
from .settings import ENV_WORKER, SettingsError
from .stagekit import CaseStage, StageContext, StageError, load_plan, run_cases
from .store import ObjectStore, StoreError

log = logging.getLogger(__name__)
EXIT_OK, EXIT_STAGE_FAILED, EXIT_USAGE = 0, 1, 2


def add_run_options(parser: argparse.ArgumentParser, per_case: bool = True) -> None:
    parser.add_argument("--run-id", required=True, help="the run to work in (runs/<run-id>/ in the store)")
    if per_case:
        parser.add_argument("--case", action="append", default=[], metavar="CASE",
                            help="only this case (repeatable; default: every case the stage covers)")
        parser.add_argument("--workers", type=int, default=1, metavar="N",
                            help="process the cases in N worker processes (default 1)")


def execute(stage: str, args: argparse.Namespace, body: Callable[[StageContext], dict[str, Any]],
            needs_plan: bool = True) -> int:
    """Run ``body`` with a ready context; log failures as one JSON line; push metrics; return the exit code."""
    cases = getattr(args, "case", None) or []
    logs.configure(stage=stage, run_id=args.run_id, case=cases[0] if len(cases) == 1 else None)
    metrics = StageMetrics(stage, args.run_id, cases[0] if len(cases) == 1 else None)
    started = time.monotonic()
    store = None
    code = EXIT_OK
    try:
        store = ObjectStore.from_env()
        plan = load_plan(store, args.run_id) if needs_plan else None
        ctx = StageContext(store=store, run_id=args.run_id, stage=stage, metrics=metrics, plan=plan)
        result = body(ctx)
        metrics.last_success.set_to_current_time()
        print(json.dumps(result, default=str))
    except (ConfigError, SettingsError, ValueError) as exc:
        log.error("cannot run", extra={"error": str(exc)})
        code = EXIT_USAGE
    except (StageError, ConflictError, RegistryError, StoreError, MinioException) as exc:
        log.error("stage failed", extra={"error": str(exc)})
        code = EXIT_STAGE_FAILED
    finally:
        metrics.duration.set(time.monotonic() - started)
        if store is not None:
            metrics.bytes.labels("in").inc(store.bytes_read)
            metrics.bytes.labels("out").inc(store.bytes_written)
        metrics.push()
    sys.stdout.flush()
    return code


def run_per_case(stage: CaseStage, args: argparse.Namespace, default_cases: str = "cases") -> int:
    """Entry point body of a per-case stage: the given ``--case``s, or the plan's cases (or its test cases).

    With ``--workers N`` the cases are dealt round-robin to N child processes of this same command (each an
    ordinary stage process with its own ``--case`` list), and their results merged.
    """
    def body(ctx: StageContext) -> dict[str, Any]:
        chosen = args.case or (list(ctx.plan.cases) if default_cases == "cases" else ctx.plan.split["test"])
        unknown = [c for c in chosen if c not in ctx.plan.cases]
        if unknown:
            raise StageError(f"cases not in run {ctx.run_id}'s plan: {', '.join(unknown)}")
        workers = min(getattr(args, "workers", 1), len(chosen))
        if workers > 1:
            return _in_workers(args.command_line, chosen, workers)
        return run_cases(stage, ctx, chosen).as_dict()
    return execute(stage.name, args, body)


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
