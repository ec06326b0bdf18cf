"""The local runner: every step of ``graph.PIPELINE`` in its own process, in dependency order, over the store.

Each step process starts in a fresh, empty working folder with only the store settings in its environment, so a
stage can only see what earlier stages put in the store, exactly as in the cluster. The runner then reads the
run's summary from the store and writes ``summary.json`` (per-case and mean held-out Dice, stage timings, model,
output keys) to ``<report-dir>/<run-id>/``, with ``<report-dir>/latest`` pointing at it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverseg import layout
from liverseg.config import ENV_CONFIG
from liverseg.errors import CannotRun
from liverseg.graph import PIPELINE, REPORT, SUMMARY, Step, topological
from liverseg.settings import ENV_HOME, StoreSettings
from liverseg.store import ObjectStore


class RunFailed(CannotRun):
    """A step of the run exited with an error (its log is named)."""


@dataclass
class RunSpec:
    """One run's arguments. ``overrides`` carries every override (environment ones first, then ``--set``):
    steps see no ``LIVERSEG__*`` variables, so the plan records exactly what the run was checked with."""

    run_id: str
    dataset: str
    profile: str
    overrides: list[str] = field(default_factory=list)
    max_cases: int = 0

    def values(self) -> dict[str, str]:
        return {"run_id": self.run_id, "dataset": self.dataset, "profile": self.profile,
                "overrides": ";".join(self.overrides), "max_cases": str(self.max_cases)}


def step_command(step: Step, spec: RunSpec, case: str | None = None) -> list[str]:
    """The child process a step runs as: ``python -m liverseg <step.args>`` (one process covers every case)."""
    return [sys.executable, "-m", "liverseg", *step.args(spec.values(), case)]


def run_step(step: Step, spec: RunSpec, settings: StoreSettings, log_dir: Path) -> dict[str, Any]:
    """One step as a child process in an empty folder; its JSON log lines go to ``log_dir/<step>.log``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVERSEG")}
    env.update(settings.to_env())
    env[ENV_HOME] = str(log_dir / "home")  # nothing from the caller's project folder leaks in
    for name in ("LIVERSEG_PUSHGATEWAY", "LIVERSEG_LOG_LEVEL", "LIVERSEG_CODE_VERSION", "LIVERSEG_S3_RETRY_ATTEMPTS"):
        if name in os.environ:
            env[name] = os.environ[name]
    if ENV_CONFIG in os.environ:  # the profiles file the run was checked against; the step runs elsewhere
        env[ENV_CONFIG] = str(Path(os.environ[ENV_CONFIG]).resolve())
    log_file = log_dir / f"{step.name}.log"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"liverseg-{step.name}-") as cwd, open(log_file, "wb") as log:
        done = subprocess.run(step_command(step, spec), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=log,
                              stdin=subprocess.DEVNULL, check=False)
    seconds = round(time.monotonic() - started, 2)
    if done.returncode != 0:
        tail = log_file.read_text(errors="replace").strip().splitlines()[-3:]
        raise RunFailed(f"step '{step.name}' exited with {done.returncode} after {seconds} s; log {log_file}:\n"
                        + "\n".join(tail))
    lines = done.stdout.decode().strip().splitlines()
    return {"seconds": seconds, "result": json.loads(lines[-1]) if lines else None}


def output_keys(run_id: str) -> dict[str, str]:
    return {s.name: layout.stage_prefix(run_id, s.name) + "/" for s in PIPELINE}


def run_pipeline(spec: RunSpec, settings: StoreSettings, report_dir: Path, echo=print) -> dict[str, Any]:
    """Run every step; write and return the run's summary."""
    out_dir = Path(report_dir) / spec.run_id
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    results: dict[str, Any] = {}
    for step in topological():
        echo(f"  {step.name:<11} {step.summary} ...", end="", flush=True)
        outcome = run_step(step, spec, settings, out_dir / "logs")
        timings[step.name] = outcome["seconds"]
        results[step.name] = outcome["result"]
        quarantined = (outcome["result"] or {}).get("quarantined") or {}
        note = f", {len(quarantined)} set aside" if quarantined else ""
        echo(f" {outcome['seconds']:.1f} s{note}")
    store = ObjectStore(settings)
    summary = store.get_json(SUMMARY.key(spec.run_id))
    # The registered version and a local copy of its weights, for people who want the file.
    model_file = store.get_file(summary["model"], out_dir / "model.pt")
    store.get_file(REPORT.key(spec.run_id), out_dir / "report.html")
    summary.update({"model_version": spec.run_id, "model_file": str(model_file.resolve()),
                    "promotion": results.get("promote")})
    set_aside = {s: r.get("quarantined") for s, r in results.items() if isinstance(r, dict) and r.get("quarantined")}
    summary.update({"stage_seconds": timings, "total_seconds": round(sum(timings.values()), 1),
                    "outputs": output_keys(spec.run_id), "set_aside_by_stage": set_aside,
                    "store": {"endpoint": settings.endpoint, "bucket": settings.bucket}})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    latest = Path(report_dir) / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(spec.run_id, target_is_directory=True)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    nan = float("nan")
    rows = ["", f"run {summary['run_id']}  profile {summary['profile']}  dataset {summary['dataset']}  "
                f"split {summary['split']}", "",
            "  held-out case       Dice   HD95 mm   seed-style*   liver ml"]
    for case, r in summary["cases"].items():
        rows.append(f"  {case:<18} {r.get('dice', nan):6.4f}  {r.get('hd95_mm', nan):8.2f}  "
                    f"{r.get('seed_style_dice', nan):11.4f}  {r.get('liver_ml', nan):9.1f}")
    rows.append(f"  {'mean':<18} {summary['mean_dice'] or nan:6.4f}  {summary['mean_hd95_mm'] or nan:8.2f}  "
                f"{summary['mean_seed_style_dice'] or nan:11.4f}   (min Dice {summary['min_dice']})")
    rows.append("  * the published method's figure: 1 - soft Dice loss with background (not a Dice of the liver)")
    for case, reason in summary.get("set_aside", {}).items():
        rows.append(f"  {case:<18} set aside: {reason}")
    rows += ["", "  stage        seconds   outputs"]
    for stage, seconds in summary["stage_seconds"].items():
        rows.append(f"  {stage:<11} {seconds:8.1f}   {summary['outputs'][stage]}")
    rows.append(f"  {'total':<11} {summary['total_seconds']:8.1f}")
    rows.append(f"\n  model version {summary['model_version']} (best epoch {summary['best_epoch']} of "
                f"{summary['epochs_run']}, sha256 {str(summary['model_sha256'])[:12]}…)")
    rows.append(f"  weights {summary['model_file']}")
    promotion = summary.get("promotion") or {}
    if promotion:
        rows.append(f"  champion: {'promoted' if promotion['promoted'] else 'not promoted'} ({promotion['reason']})")
    return "\n".join(rows)
