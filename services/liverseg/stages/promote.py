"""promote: register the run's model and let it replace the champion only if it is not worse.

Reads  runs/<run>/evaluate/_manifest.json, runs/<run>/train/model.pt, the held-out studies (to score the champion)
Writes models/<run>/… (the new version), models/decisions/…, models/champion.json (only when promoting)

Both models are compared on the same cases: the new model's held-out cases that the champion neither trained nor
validated on (those would inflate its score); the decision records which cases were dropped and why. When the
champion was never scored on that set, it is scored now, and that score is kept under
models/<champion>/evaluations/ for the next time.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import manifest as mf
from liverseg.errors import StageError
from liverseg.graph import MODEL, STEPS, SUMMARY
from liverseg.imaging import nifti
from liverseg.ml.model import pick_device
from liverseg.ml.modelfile import LoadedModel, from_bytes
from liverseg.registry import Registry, held_out_id
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import StageContext, StageOutput
from liverseg.stages.infer import score
from liverseg.store import ObjectRef, ObjectStore

STEP = STEPS["promote"]
log = logging.getLogger(__name__)


def gate(challenger: float, champion: float, tolerance: float) -> tuple[bool, str]:
    """Promote when the challenger's mean Dice is at least the champion's minus ``tolerance``."""
    if challenger >= champion - tolerance:
        return True, f"challenger mean Dice {challenger:.4f} >= champion {champion:.4f} - tolerance {tolerance}"
    return False, f"challenger mean Dice {challenger:.4f} < champion {champion:.4f} - tolerance {tolerance}"


def score_model(store: ObjectStore, model_key: str, cases: dict[str, dict[str, str]], device: str | None = None
                ) -> dict[str, dict[str, float]]:
    """Segment each case's image with the model and score it against its label (liver = label >= 1)."""
    model = LoadedModel.from_bytes(store.get_bytes(model_key), pick_device(device), model_key)
    scores = {}
    with tempfile.TemporaryDirectory(prefix="liverseg-promote-") as tmp:
        for case, keys in sorted(cases.items()):
            image = nifti.load(store.get_file(keys["image"], Path(tmp) / case / "image.nii.gz"))
            label = nifti.load(store.get_file(keys["label"], Path(tmp) / case / "label.nii.gz"), kind="label")
            scores[case] = score(model.segment(image).mask, label, image)
            log.info("champion scored", extra={"case": case, **scores[case]})
    return scores


def held_out_of(store: ObjectStore, cases: dict[str, dict[str, str]]) -> str:
    """``held_out_id`` of cases given by store keys, from the objects' content hashes (the ETag for an object
    uploaded without a sha256, so two different sets never share an identity)."""
    digests: dict[str, dict[str, str]] = {}
    for case, keys in cases.items():
        for role, key in keys.items():
            ref = store.stat(key)
            if ref is None:
                raise StageError(f"case {case}: its {role} {key} is no longer in the store")
            digests.setdefault(case, {})[role] = ref.sha256 or ref.etag
    return held_out_id(digests)


def challenge(store: ObjectStore, registry: Registry, champion: str, dataset: str, cases: dict[str, dict[str, str]],
              challenger_cases: dict[str, dict[str, Any]], tolerance: float) -> tuple[bool, str, dict[str, Any]]:
    """Gate the challenger against ``champion`` on the held-out ``cases`` (of ``dataset``) the champion never saw.

    Returns (promote, reason, evidence); ``challenger_cases`` are the challenger's per-case scores (with "dice").
    Case ids name patients within one dataset only: a champion trained on another dataset has seen none of these.
    """
    seen: dict[str, str] = {}
    if registry.card(champion).get("dataset") == dataset:
        payload = from_bytes(store.get_bytes(registry.model_key(champion)))
        seen = {**{c: f"champion {champion} validated on it" for c in payload["val_cases"]},
                **{c: f"champion {champion} trained on it" for c in payload["train_cases"]}}
    dropped = {c: seen[c] for c in cases if c in seen}
    compared = {c: keys for c, keys in cases.items() if c not in seen}
    evidence: dict[str, Any] = {"compared_cases": len(compared), "dropped_cases": dropped, "tolerance": tolerance}
    if not compared:
        return False, (f"no held-out case of this run is unseen by champion {champion}: no fair comparison, "
                       "not promoted automatically"), evidence
    held_out = held_out_of(store, compared)
    eval_key = registry.evaluation_key(champion, held_out)
    if store.stat(eval_key) is None:
        per_case = score_model(store, registry.model_key(champion), compared)
        store.put_json(eval_key, {"held_out": held_out, "cases": per_case, "mean_dice": round(
            float(np.mean([s["dice"] for s in per_case.values()])), 5)})
    champion_dice = store.get_json(eval_key)["mean_dice"]
    challenger_dice = round(float(np.mean([challenger_cases[c]["dice"] for c in compared])), 5)
    promoted, reason = gate(challenger_dice, champion_dice, tolerance)
    return promoted, reason, {**evidence, "held_out": held_out, "challenger_dice": challenger_dice,
                              "champion_dice": champion_dice}


class PromoteStage:
    """Whole-run stage: register this run's model as a version, then let the gate decide on the champion."""

    def inputs(self, ctx: StageContext) -> dict[str, ObjectRef]:
        model = MODEL.key(ctx.run_id)
        return {model: ctx.read(MODEL)[model], **ctx.read(SUMMARY)}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return ctx.config.promote.model_dump(mode="json")

    def produce(self, ctx: StageContext, inputs: dict[str, ObjectRef], work: Path, fingerprint: str) -> StageOutput:
        summary = ctx.record(SUMMARY).details
        train = ctx.record(MODEL)
        model_key = MODEL.key(ctx.run_id)
        scored = sorted(c for c, r in summary["cases"].items() if "dice" in r)
        # A scored case has a label: it was scored against it.
        cases = {c: {"image": ctx.planned.cases[c].image, "label": str(ctx.planned.cases[c].label)} for c in scored}
        held_out = held_out_of(ctx.store, cases)
        registry = Registry(ctx.store)
        version = ctx.run_id
        challenger = {"held_out": held_out, "mean_dice": summary["mean_dice"], "cases": summary["cases"]}
        card = {"run_id": ctx.run_id, "dataset": ctx.planned.dataset, "profile": ctx.planned.profile["name"],
                "code_version": train.code_version, "train_fingerprint": train.fingerprint,
                "training_data": {k: e.sha256 or e.etag for k, e in train.inputs.items()},
                "best_epoch": train.details["best_epoch"], "epochs_run": train.details["epochs_run"],
                "evaluation": challenger}
        refs = [registry.register(version, ctx.store.get_bytes(model_key), card)]
        refs.append(ctx.store.put_json(registry.evaluation_key(version, held_out), challenger))
        champion = registry.champion()
        tolerance = ctx.config.promote.tolerance
        if summary["mean_dice"] is None:
            decision = registry.decide(version, False, "no held-out case was scored", {"held_out": held_out},
                                       gated_against=champion)
        elif champion is None:
            decision = registry.decide(version, True, "first model: no champion yet",
                                       {"held_out": held_out, "challenger_dice": summary["mean_dice"]},
                                       gated_against=None)
        elif champion == version:
            decision = {"promoted": False, "reason": "already the champion", "champion": champion}
        else:
            promoted, reason, evidence = challenge(ctx.store, registry, champion, ctx.planned.dataset, cases,
                                                   summary["cases"], tolerance)
            decision = registry.decide(version, promoted, reason, evidence, gated_against=champion)
        log.info("promotion decided", extra={"promoted": decision["promoted"], "reason": decision["reason"]})
        return StageOutput(refs, {"version": version, "decision": decision})

    def result(self, ctx: StageContext, record: mf.Manifest) -> dict[str, Any]:
        decision = record.details["decision"]
        return {"version": record.details["version"], "promoted": decision["promoted"], "reason": decision["reason"]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)


def main(args: argparse.Namespace) -> int:
    return run_step(STEP, args, PromoteStage())
