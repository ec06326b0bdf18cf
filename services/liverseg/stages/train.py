"""train: preprocessed training and validation cases → a trained U-Net, with checkpoints and per-epoch metrics.

Reads  runs/<run>/preprocess/<case>/*.npz                 train and val cases of the plan's split (never test)
Writes runs/<run>/train/checkpoints/epoch_NNNN.pt          full state every N epochs (last two kept)
       runs/<run>/train/metrics.json                      per-epoch loss, validation Dice, seconds
       runs/<run>/train/model.pt                          the selected model: weights + profile + provenance
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverseg import manifest as mf
from liverseg.errors import CaseFailed, ConflictError, StageError
from liverseg.graph import ARRAYS, CHECKPOINTS, METRICS, MODEL, STEPS
from liverseg.ml.model import pick_device
from liverseg.ml.modelfile import from_bytes, model_payload, to_bytes
from liverseg.ml.training import Sample, Trainer, TrainState
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import StageContext, StageOutput
from liverseg.store import ObjectRef

STEP = STEPS["train"]
KEEP_CHECKPOINTS = 2
_EPOCH = re.compile(r"epoch_(\d+)\.pt$")
log = logging.getLogger(__name__)


def case_of(key: str) -> str:
    """The case a preprocessed object belongs to: ``runs/<run>/preprocess/<case>/<unit>.npz``."""
    return key.rsplit("/", 2)[-2]


def load_samples(ctx: StageContext, refs: dict[str, ObjectRef], work: Path) -> list[Sample]:
    samples = []
    for key in sorted(refs):
        with np.load(ctx.store.get_file(key, work / key)) as arrays:
            samples.append(Sample(name=f"{case_of(key)}/{Path(key).stem}", image=torch.from_numpy(arrays["image"]),
                                  label=torch.from_numpy(arrays["label"])))
    return samples


class TrainStage:
    """Whole-run stage: one process trains on every train case, validates on every val case. Cases set aside
    upstream are listed in the record, not used."""

    def __init__(self, resume: str = "auto", device: str | None = None):
        self.resume = resume
        self.device = pick_device(device)
        self.excluded: dict[str, str] = {}

    def inputs(self, ctx: StageContext) -> dict[str, ObjectRef]:
        refs: dict[str, ObjectRef] = {}
        for case in [*ctx.planned.split["train"], *ctx.planned.split["val"]]:
            try:
                refs.update(ctx.read(ARRAYS, case))
            except CaseFailed as exc:
                self.excluded[case] = exc.reason
        if not any(ctx.planned.split_of(case_of(k)) == "train" for k in refs):
            raise StageError("no training case survived preprocessing")
        return refs

    def params(self, ctx: StageContext) -> dict[str, Any]:
        cfg = ctx.config
        return {"train": cfg.train.model_dump(mode="json"), "infer": cfg.infer.model_dump(mode="json"),
                "split": ctx.planned.split}

    @staticmethod
    def _checkpoints(ctx: StageContext) -> list[tuple[int, str]]:
        found = []
        for ref in ctx.store.list(CHECKPOINTS.prefix(ctx.run_id) + "/checkpoints/"):
            match = _EPOCH.search(ref.key)
            if match and CHECKPOINTS.owns(ref.key, ctx.run_id):
                found.append((int(match.group(1)), ref.key))
        return sorted(found)

    def _resume_state(self, ctx: StageContext, fingerprint: str) -> TrainState | None:
        found = self._checkpoints(ctx)
        if not found:
            if self.resume == "require":
                raise StageError(f"--resume: run {ctx.run_id} has no training checkpoint")
            return None
        epoch, key = found[-1]
        payload = from_bytes(ctx.store.get_bytes(key))
        if payload["fingerprint"] != fingerprint:
            raise ConflictError(f"checkpoint {key} was made with other inputs or settings; start a new run id")
        log.info("resuming from checkpoint", extra={"epoch": epoch, "key": key})
        return TrainState.from_dict(payload["state"])

    def _discard_checkpoints(self, ctx: StageContext) -> None:
        """A fresh start abandons earlier attempts: their checkpoints would outrank the new ones when pruning keeps
        the highest epochs, and a later resume would load the abandoned state."""
        found = self._checkpoints(ctx)
        if found:
            log.warning("--no-resume: deleting the checkpoints of an earlier, abandoned training attempt",
                        extra={"keys": [key for _, key in found]})
            for _, key in found:
                ctx.store.delete(key)

    def produce(self, ctx: StageContext, inputs: dict[str, ObjectRef], work: Path, fingerprint: str) -> StageOutput:
        cfg = ctx.config
        parts = {part: {k: r for k, r in inputs.items() if ctx.planned.split_of(case_of(k)) == part}
                 for part in ("train", "val")}
        train, val = load_samples(ctx, parts["train"], work), load_samples(ctx, parts["val"], work)
        log.info("training", extra={"train_units": len(train), "val_units": len(val), "device": str(self.device),
                                    "excluded_cases": self.excluded})
        trainer = Trainer(cfg.train, cfg.infer, self.device)
        if self.resume == "never":
            self._discard_checkpoints(ctx)
            state = None
        else:
            state = self._resume_state(ctx, fingerprint)

        def on_epoch(state: TrainState, improved: bool) -> None:
            last = state.epoch == cfg.train.epochs or (
                cfg.train.time_budget_s is not None and state.elapsed_s >= cfg.train.time_budget_s)
            ctx.metrics.train_epoch.set(state.epoch)
            ctx.metrics.train_loss.set(state.history[-1]["loss"])
            if "val_dice" in state.history[-1]:
                ctx.metrics.train_dice.set(state.history[-1]["val_dice"])
            if state.epoch % cfg.train.checkpoint_every == 0 or last:
                ctx.store.put_bytes(CHECKPOINTS.key(ctx.run_id, path=f"checkpoints/epoch_{state.epoch:04d}.pt"),
                                    to_bytes({"fingerprint": fingerprint, "state": state.to_dict()}))
                ctx.store.put_json(METRICS.key(ctx.run_id), state.history)
                for _, old in self._checkpoints(ctx)[:-KEEP_CHECKPOINTS]:
                    ctx.store.delete(old)
                ctx.metrics.push()

        state = trainer.fit(train, val, state, on_epoch)
        if state.best_model is None:
            raise StageError("training ended without a model to keep (no epoch completed)")
        payload = model_payload(
            state.best_model, ctx.planned.profile, best_epoch=state.best_epoch, best_metric=state.best_metric,
            selection=cfg.train.selection, epochs_run=state.epoch, train_fingerprint=fingerprint,
            code_version=mf.code_version(), run_id=ctx.run_id, train_cases=sorted(ctx.planned.split["train"]),
            val_cases=sorted(ctx.planned.split["val"]))
        outputs = [ctx.store.put_json(METRICS.key(ctx.run_id), state.history),
                   ctx.store.put_bytes(MODEL.key(ctx.run_id), to_bytes(payload))]
        details = {"best_epoch": state.best_epoch, "best_metric": state.best_metric, "epochs_run": state.epoch,
                   "selection": cfg.train.selection, "train_seconds": round(state.elapsed_s, 1),
                   "device": str(self.device), "train_units": len(train), "val_units": len(val),
                   "excluded_cases": self.excluded, "model": MODEL.key(ctx.run_id)}
        return StageOutput(outputs, details)

    def result(self, ctx: StageContext, record: mf.Manifest) -> dict[str, Any]:
        return {k: record.details[k] for k in ("model", "best_epoch", "best_metric", "epochs_run")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const="require", default="auto",
                        help="continue from the last checkpoint, which must exist (default: continue from one if "
                             "present, else start)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                        help="ignore checkpoints and train from scratch")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def main(args: argparse.Namespace) -> int:
    return run_step(STEP, args, TrainStage(resume=args.resume, device=args.device))
