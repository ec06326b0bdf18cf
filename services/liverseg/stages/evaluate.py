"""evaluate: per-case held-out scores → the run's summary (mean and minimum Dice, HD95, cases set aside).

Reads  runs/<run>/infer/<case>/_manifest.json for the plan's test cases, runs/<run>/train/_manifest.json
Writes runs/<run>/evaluate/summary.json, report.html      the held-out figures; the page with the overlays
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import layout
from liverseg import manifest as mf
from liverseg.errors import CaseFailed, StageError
from liverseg.graph import MASK, METRICS, MODEL, OVERLAYS, REPORT, STEPS, SUMMARY
from liverseg.report import VIEWS, ReportEntry, html_report, learning_curves_svg
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import StageContext, StageOutput
from liverseg.store import ObjectRef

STEP = STEPS["evaluate"]


def case_figures(details: dict[str, Any]) -> dict[str, Any]:
    """A case's figures from its infer record; an undefined HD95 is left out and its reason recorded instead.

    HD95 is infinite when exactly one of prediction and label is empty (no surface to measure to). The manifest's
    JSON turns that into null, so both forms mean "undefined" here. Dice stays (0 for such a case) and counts.
    """
    figures: dict[str, Any] = {k: details[k] for k in ("dice", "hd95_mm", "seed_style_dice", "liver_ml", "seconds")
                               if k in details}
    if "hd95_mm" in figures and (figures["hd95_mm"] is None or not math.isfinite(figures["hd95_mm"])):
        del figures["hd95_mm"]
        # liver_ml is the predicted volume (0.1 ml steps): 0 means the model found no liver, else the label has none.
        figures["hd95_undefined"] = "no liver predicted" if figures.get("liver_ml") == 0 else "no liver in the label"
    return figures


def summarize(per_case: dict[str, dict[str, Any]]) -> dict[str, Any]:
    scored = {c: r for c, r in per_case.items() if "dice" in r}
    dices = [r["dice"] for r in scored.values()]
    hd = [r["hd95_mm"] for r in scored.values() if "hd95_mm" in r]
    soft = [r["seed_style_dice"] for r in scored.values() if "seed_style_dice" in r]
    return {
        "held_out_cases": len(per_case), "scored_cases": len(scored),
        "mean_dice": round(float(np.mean(dices)), 5) if dices else None,
        "min_dice": round(float(np.min(dices)), 5) if dices else None,
        # HD95 mean and median are over the cases where it is defined; the others are listed with the reason.
        "mean_hd95_mm": round(float(np.mean(hd)), 3) if hd else None,
        "median_hd95_mm": round(float(np.median(hd)), 3) if hd else None,
        "hd95_cases": len(hd),
        "hd95_undefined": {c: r["hd95_undefined"] for c, r in scored.items() if "hd95_undefined" in r},
        # The seed's "Dice": 1 - soft loss with background, for comparison only.
        "mean_seed_style_dice": round(float(np.mean(soft)), 5) if soft else None,
    }


class EvaluateStage:
    """Whole-run stage: the held-out cases' figures as the infer stage recorded them, summarised."""

    def inputs(self, ctx: StageContext) -> dict[str, ObjectRef]:
        """The infer records of the held-out cases it scored (cases it set aside are listed, not inputs)."""
        inputs = {}
        for case in ctx.planned.split["test"]:
            try:
                ctx.record(MASK, case)
            except CaseFailed:
                continue
            key = layout.manifest_key(ctx.run_id, MASK.step, case)
            ref = ctx.store.stat(key)
            if ref is None:
                raise StageError(f"case {case}: the infer record {key} vanished while it was read")
            inputs[key] = ref
        return {**inputs, **ctx.read(METRICS)}  # the learning curves on the report

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return {}

    def produce(self, ctx: StageContext, inputs: dict[str, ObjectRef], work: Path, fingerprint: str) -> StageOutput:
        train = ctx.record(MODEL)
        per_case: dict[str, dict[str, Any]] = {}
        set_aside: dict[str, str] = {}
        for case in ctx.planned.split["test"]:
            try:
                per_case[case] = case_figures(ctx.record(MASK, case).details)
            except CaseFailed as exc:
                set_aside[case] = exc.reason
        model_key = train.details["model"]
        summary = {
            "run_id": ctx.run_id, "dataset": ctx.planned.dataset, "profile": ctx.planned.profile["name"],
            "split": {k: len(v) for k, v in ctx.planned.split.items()},
            "model": model_key, "model_sha256": train.outputs[model_key].sha256,
            "best_epoch": train.details["best_epoch"], "epochs_run": train.details["epochs_run"],
            "train_seconds": train.details["train_seconds"], "world_size": train.details.get("world_size", 1),
            **summarize(per_case), "cases": per_case, "set_aside": set_aside,
        }
        return StageOutput([ctx.store.put_json(SUMMARY.key(ctx.run_id), summary),
                            ctx.store.put_bytes(REPORT.key(ctx.run_id), run_report(ctx, summary).encode(),
                                                content_type="text/html")], summary)

    def result(self, ctx: StageContext, record: mf.Manifest) -> dict[str, Any]:
        return {k: record.details[k] for k in ("mean_dice", "min_dice", "scored_cases", "held_out_cases")}


def run_report(ctx: StageContext, summary: dict[str, Any]) -> str:
    """The run's HTML page: held-out figures and the overlays the infer stage drew, embedded."""
    entries = []
    for case, figures in summary["cases"].items():
        drawn = ctx.read(OVERLAYS, case)
        overlays = {v: ctx.store.get_bytes(key) for v in VIEWS
                    if (key := OVERLAYS.key(ctx.run_id, case, f"overlay_{v}.png")) in drawn}
        entries.append(ReportEntry(case, figures, overlays))
    notes = [f"run {ctx.run_id}, profile {summary['profile']}, model {summary['model']}",
             f"mean held-out Dice {summary['mean_dice']} (min {summary['min_dice']}); hard foreground Dice at each "
             "study's original geometry. seed_style_dice is the published method's figure (1 - soft loss with "
             "background), shown for comparison only.",
             f"mean HD95 {summary['mean_hd95_mm']} mm over the {summary['hd95_cases']} of {summary['scored_cases']} "
             "scored cases where it is defined"]
    notes += [f"{case}: HD95 undefined ({reason}); its Dice counts in the mean Dice"
              for case, reason in summary["hd95_undefined"].items()]
    notes += [f"{case} set aside: {reason}" for case, reason in summary["set_aside"].items()]
    history = ctx.store.get_json(METRICS.key(ctx.run_id))
    notes.append(f"training: {summary['epochs_run']} epochs in {summary['train_seconds']} s, "
                 f"{summary['world_size']} process(es); model from epoch {summary['best_epoch']}")
    return html_report(f"liverseg run {ctx.run_id}", entries, notes, [learning_curves_svg(history)])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)


def main(args: argparse.Namespace) -> int:
    return run_step(STEP, args, EvaluateStage())
