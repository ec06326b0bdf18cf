"""promote: register the run's model and let it replace the champion only if it is not worse.

Reads  runs/<run>/evaluate/_manifest.json, runs/<run>/train/model.pt, the held-out studies (to score the champion)
Writes models/<run>/… (the new version), models/decisions/…, models/champion.json (only when promoting)

Both models are compared on the same cases: the new model's held-out set. When the champion was never scored on
that set, it is scored now, and that score is kept under models/<champion>/evaluations/ for the next time.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.imaging import nifti
from liverseg.registry import Registry, held_out_id
from liverseg.stagekit import StageContext, completed, refs_of, run_once
from liverseg.store import ObjectRef, ObjectStore
from liverseg.train.stage import from_bytes

from .stage import LoadedModel, score

NAME = "promote"
log = logging.getLogger(__name__)


def gate(challenger: float, champion: float, tolerance: float) -> tuple[bool, str]:
    """Promote when the challenger's mean Dice is at least the champion's minus ``tolerance``."""
    if challenger >= champion - tolerance:
        return True, f"challenger mean Dice {challenger:.4f} >= champion {champion:.4f} - tolerance {tolerance}"
    return False, f"challenger mean Dice {challenger:.4f} < champion {champion:.4f} - tolerance {tolerance}"


def score_model(store: ObjectStore, model_key: str, cases: dict[str, dict[str, str]], device: str | None = None
                ) -> dict[str, dict[str, float]]:
    """Segment each case's image with the model and score it against its label (liver = label >= 1)."""
    from liverseg.ml.model import pick_device

    model = LoadedModel(from_bytes(store.get_bytes(model_key)), pick_device(device))
    scores = {}
    with tempfile.TemporaryDirectory(prefix="liverseg-promote-") as tmp:
        for case, keys in sorted(cases.items()):
            image = nifti.load(store.get_file(keys["image"], Path(tmp) / case / "image.nii.gz"))
            label = nifti.load(store.get_file(keys["label"], Path(tmp) / case / "label.nii.gz"), kind="label")
            scores[case] = score(model.segment(image).mask, label, image)
            log.info("champion scored", extra={"case": case, **scores[case]})
    return scores


def promote(ctx: StageContext) -> dict[str, Any]:
    evaluation = completed(ctx, "evaluate")
    summary = evaluation.details
    train = completed(ctx, "train")
    model_key = train.details["model"]
    scored = sorted(summary["cases"])
    cases = {c: {"image": ctx.plan.cases[c].image, "label": ctx.plan.cases[c].label} for c in scored}
    held_out = held_out_id({c: {role: ctx.store.stat(key).sha256 for role, key in keys.items()}
                            for c, keys in cases.items()})
    inputs = {**refs_of(train, model_key), **refs_of(evaluation)}

    def produce(_: str) -> tuple[list[ObjectRef], dict[str, Any]]:
        registry = Registry(ctx.store)
        version = ctx.run_id
        challenger = {"held_out": held_out, "mean_dice": summary["mean_dice"], "cases": summary["cases"]}
        card = {"run_id": ctx.run_id, "dataset": ctx.plan.dataset, "profile": ctx.plan.profile["name"],
                "code_version": train.code_version, "train_fingerprint": train.fingerprint,
                "training_data": {k: e.sha256 or e.etag for k, e in train.inputs.items()},
                "best_epoch": train.details["best_epoch"], "epochs_run": train.details["epochs_run"],
                "evaluation": challenger}
        refs = [registry.register(version, ctx.store.get_bytes(model_key), card)]
        refs.append(ctx.store.put_json(registry.evaluation_key(version, held_out), challenger))
        champion = registry.champion()
        tolerance = ctx.config.promote.tolerance
        if summary["mean_dice"] is None:
            decision = registry.decide(version, False, "no held-out case was scored", {"held_out": held_out})
        elif champion is None:
            decision = registry.decide(version, True, "first model: no champion yet",
                                       {"held_out": held_out, "challenger_dice": summary["mean_dice"]})
        elif champion == version:
            decision = {"promoted": False, "reason": "already the champion", "champion": champion}
        else:
            eval_key = registry.evaluation_key(champion, held_out)
            if ctx.store.stat(eval_key) is None:
                per_case = score_model(ctx.store, registry.model_key(champion), cases)
                ctx.store.put_json(eval_key, {"held_out": held_out, "cases": per_case, "mean_dice": round(
                    float(np.mean([s["dice"] for s in per_case.values()])), 5)})
            champion_dice = ctx.store.get_json(eval_key)["mean_dice"]
            promoted, reason = gate(summary["mean_dice"], champion_dice, tolerance)
            decision = registry.decide(version, promoted, reason, {
                "held_out": held_out, "challenger_dice": summary["mean_dice"], "champion_dice": champion_dice,
                "tolerance": tolerance})
        log.info("promotion decided", extra={"promoted": decision["promoted"], "reason": decision["reason"]})
        return refs, {"version": version, "decision": decision}

    return run_once(ctx, inputs, ctx.config.promote.model_dump(mode="json"), produce).details
