"""train: preprocessed training and validation cases → a trained U-Net, with checkpoints and per-epoch metrics.

Reads  runs/<run>/preprocess/<case>/*.npz                 train and val cases of the plan's split (never test)
Writes runs/<run>/train/checkpoints/epoch_NNNN.pt          full state every N epochs (last two kept)
       runs/<run>/train/metrics.json                      per-epoch loss, validation Dice, seconds
       runs/<run>/train/model.pt                          the selected model: weights + profile + provenance
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverseg import layout
from liverseg import manifest as mf
from liverseg.errors import ConflictError
from liverseg.ml.model import pick_device
from liverseg.ml.training import Sample, Trainer, TrainState
from liverseg.stagekit import CaseFailed, StageContext, StageError, refs_of, run_once, upstream
from liverseg.store import ObjectRef

NAME = "train"
KEEP_CHECKPOINTS = 2
_EPOCH = re.compile(r"epoch_(\d+)\.pt$")
log = logging.getLogger(__name__)


def to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Any:
    # weights_only: a model file from the store is data, never code.
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_samples(ctx: StageContext, refs: dict[str, ObjectRef], work: Path) -> list[Sample]:
    samples = []
    for key in sorted(refs):
        with np.load(ctx.store.get_file(key, work / key)) as arrays:
            samples.append(Sample(name=key.split("/preprocess/", 1)[1].removesuffix(".npz"),
                                  image=torch.from_numpy(arrays["image"]), label=torch.from_numpy(arrays["label"])))
    return samples


class TrainStage:
    """Whole-run stage: one process trains on every train case, validates on every val case."""

    name = NAME

    def __init__(self, ctx: StageContext, resume: str = "auto", device: str | None = None):
        self.ctx, self.resume = ctx, resume
        self.device = pick_device(device)
        self.prefix = layout.stage_prefix(ctx.run_id, NAME)

    def _inputs(self) -> tuple[dict[str, ObjectRef], dict[str, ObjectRef], dict[str, str]]:
        """Preprocessed objects of the train and val cases; cases set aside upstream are listed, not used."""
        parts: dict[str, dict[str, ObjectRef]] = {"train": {}, "val": {}}
        excluded = {}
        for part in parts:
            for case in self.ctx.plan.split[part]:
                try:
                    parts[part].update(refs_of(upstream(self.ctx, "preprocess", case)))
                except CaseFailed as exc:
                    excluded[case] = exc.reason
        if not parts["train"]:
            raise StageError("no training case survived preprocessing")
        return parts["train"], parts["val"], excluded

    def params(self) -> dict[str, Any]:
        cfg = self.ctx.config
        return {"train": cfg.train.model_dump(mode="json"), "infer": cfg.infer.model_dump(mode="json"),
                "split": self.ctx.plan.split}

    def _checkpoints(self) -> list[tuple[int, str]]:
        found = []
        for ref in self.ctx.store.list(f"{self.prefix}/checkpoints/"):
            match = _EPOCH.search(ref.key)
            if match:
                found.append((int(match.group(1)), ref.key))
        return sorted(found)

    def _resume_state(self, fingerprint: str) -> TrainState | None:
        found = self._checkpoints()
        if not found:
            if self.resume == "require":
                raise StageError(f"--resume: run {self.ctx.run_id} has no training checkpoint")
            return None
        epoch, key = found[-1]
        payload = from_bytes(self.ctx.store.get_bytes(key))
        if payload["fingerprint"] != fingerprint:
            raise ConflictError(f"checkpoint {key} was made with other inputs or settings; start a new run id")
        log.info("resuming from checkpoint", extra={"epoch": epoch, "key": key})
        return TrainState.from_dict(payload["state"])

    def _discard_checkpoints(self) -> None:
        """A fresh start abandons earlier attempts: their checkpoints would outrank the new ones when pruning keeps
        the highest epochs, and a later resume would load the abandoned state."""
        found = self._checkpoints()
        if found:
            log.warning("--no-resume: deleting the checkpoints of an earlier, abandoned training attempt",
                        extra={"keys": [key for _, key in found]})
            for _, key in found:
                self.ctx.store.delete(key)

    def run(self, work: Path) -> mf.Manifest:
        train_refs, val_refs, excluded = self._inputs()

        def produce(fingerprint: str) -> tuple[list[ObjectRef], dict[str, Any]]:
            return self._train(work, train_refs, val_refs, excluded, fingerprint)

        return run_once(self.ctx, {**train_refs, **val_refs}, self.params(), produce)

    def _train(self, work: Path, train_refs: dict[str, ObjectRef], val_refs: dict[str, ObjectRef],
               excluded: dict[str, str], fingerprint: str) -> tuple[list[ObjectRef], dict[str, Any]]:
        cfg = self.ctx.config
        train, val = load_samples(self.ctx, train_refs, work), load_samples(self.ctx, val_refs, work)
        log.info("training", extra={"train_units": len(train), "val_units": len(val), "device": str(self.device),
                                    "excluded_cases": excluded})
        trainer = Trainer(cfg.train, cfg.infer, self.device)
        if self.resume == "never":
            self._discard_checkpoints()
            state = None
        else:
            state = self._resume_state(fingerprint)
        metrics_key = f"{self.prefix}/metrics.json"

        def on_epoch(state: TrainState, improved: bool) -> None:
            last = state.epoch == cfg.train.epochs or (
                cfg.train.time_budget_s is not None and state.elapsed_s >= cfg.train.time_budget_s)
            self.ctx.metrics.train_epoch.set(state.epoch)
            self.ctx.metrics.train_loss.set(state.history[-1]["loss"])
            if "val_dice" in state.history[-1]:
                self.ctx.metrics.train_dice.set(state.history[-1]["val_dice"])
            if state.epoch % cfg.train.checkpoint_every == 0 or last:
                self.ctx.store.put_bytes(f"{self.prefix}/checkpoints/epoch_{state.epoch:04d}.pt",
                                         to_bytes({"fingerprint": fingerprint, "state": state.to_dict()}))
                self.ctx.store.put_json(metrics_key, state.history)
                for _, old in self._checkpoints()[:-KEEP_CHECKPOINTS]:
                    self.ctx.store.delete(old)
                self.ctx.metrics.push()

        state = trainer.fit(train, val, state, on_epoch)
        model_payload = {
            "format": "liverseg.model/v1", "state_dict": state.best_model, "profile": self.ctx.plan.profile,
            "best_epoch": state.best_epoch, "best_metric": state.best_metric, "selection": cfg.train.selection,
            "epochs_run": state.epoch, "train_fingerprint": fingerprint, "code_version": mf.code_version(),
            "run_id": self.ctx.run_id, "train_cases": sorted(self.ctx.plan.split["train"]),
            "val_cases": sorted(self.ctx.plan.split["val"]),
        }
        outputs = [self.ctx.store.put_json(metrics_key, state.history),
                   self.ctx.store.put_bytes(f"{self.prefix}/model.pt", to_bytes(model_payload))]
        details = {"best_epoch": state.best_epoch, "best_metric": state.best_metric, "epochs_run": state.epoch,
                   "selection": cfg.train.selection, "train_seconds": round(state.elapsed_s, 1),
                   "device": str(self.device), "train_units": len(train), "val_units": len(val),
                   "excluded_cases": excluded, "model": f"{self.prefix}/model.pt"}
        return outputs, details
