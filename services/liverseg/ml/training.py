"""The training loop: tensors in, a trained state out. No store, no files: the train stage does I/O.

Reproducibility: every epoch re-seeds torch, numpy and the MONAI transforms from (seed, epoch), so resuming from
a checkpoint taken after epoch k replays epochs k+1… exactly as an uninterrupted run (bit-exact on CPU). The RNG
states are still saved in checkpoints, for inspection.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai import transforms as T
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss

from liverseg.config import InferConfig, TrainConfig
from liverseg.ml.metrics import dice, seed_style_dice
from liverseg.ml.model import build_unet, memory_format

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One training unit: ``image`` float32 (1, X, Y, Z) in 0..1, ``label`` uint8 (1, X, Y, Z) liver 0/1."""

    name: str
    image: torch.Tensor
    label: torch.Tensor


@dataclass
class TrainState:
    """Everything needed to continue training after ``epoch`` (1-based; 0 = not started)."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    best_metric: float = -math.inf
    best_epoch: int = 0
    best_model: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**data)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**31 - 1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_states() -> dict[str, Any]:
    """RNG states in types ``torch.load(weights_only=True)`` accepts."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)}}


class Trainer:
    """Trains the U-Net on ``Sample``s with a ``TrainConfig``; validation uses the inference settings."""

    def __init__(self, cfg: TrainConfig, infer_cfg: InferConfig, device: torch.device):
        self.cfg, self.infer_cfg, self.device = cfg, infer_cfg, device
        self.fmt = memory_format(device)
        self.amp = device.type == "cuda"
        if cfg.loss == "dice_ce":
            self.loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True)
        else:  # the seed's loss
            self.loss_fn = DiceLoss(to_onehot_y=True, sigmoid=True, squared_pred=True)
        self.augment = self._augmentations()

    def _augmentations(self) -> T.Compose:
        steps: list[T.Transform] = []
        if self.cfg.patch is not None:
            steps += [T.SpatialPadd(["image", "label"], self.cfg.patch),
                      T.RandCropByPosNegLabeld(["image", "label"], "label", self.cfg.patch, pos=1, neg=1,
                                               num_samples=self.cfg.samples_per_volume)]
        if self.cfg.augment:
            # Intensity only: flips would move the liver to the patient's left, which never happens.
            steps += [T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                      T.RandShiftIntensityd("image", offsets=0.05, prob=0.5)]
        return T.Compose(steps)

    def new_state(self) -> TrainState:
        torch.manual_seed(self.cfg.seed)
        model = build_unet()
        return TrainState(epoch=0, model=model.state_dict(), optimizer=self._optimizer(model).state_dict())

    def _optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        cls = torch.optim.AdamW if self.cfg.optimizer == "adamw" else torch.optim.Adam
        return cls(model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, amsgrad=self.cfg.amsgrad)

    def _lr(self, epoch: int) -> float:
        if self.cfg.schedule == "poly":
            return self.cfg.lr * (1 - (epoch - 1) / self.cfg.epochs) ** 0.9
        return self.cfg.lr

    def _batches(self, samples: Sequence[Sample], epoch_seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        order = np.random.default_rng(epoch_seed).permutation(len(samples))
        self.augment.set_random_state(seed=epoch_seed)
        batches = []
        for start in range(0, len(order), self.cfg.batch_size):
            items: list[dict[str, torch.Tensor]] = []
            for i in order[start:start + self.cfg.batch_size]:
                out = self.augment({"image": samples[i].image, "label": samples[i].label})
                items += out if isinstance(out, list) else [out]
            x = torch.stack([torch.as_tensor(d["image"]) for d in items]).float()
            y = torch.stack([torch.as_tensor(d["label"]) for d in items]).float()
            batches.append((x, y))
        return batches

    def _forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).contiguous(memory_format=self.fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return model(x)

    def predict_logits(self, model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Logits (1, 2, X, Y, Z) for one (1, X, Y, Z) input: sliding window for patch-trained models, one pass
        for whole-input (seed) models."""
        x = image[None].float()
        with torch.no_grad():
            if self.cfg.patch is None:
                return self._forward(model, x).float().cpu()
            return sliding_window_inference(
                x.to(self.device), roi_size=self.cfg.patch, sw_batch_size=1,
                predictor=lambda w: self._forward(model, w).float(), overlap=self.infer_cfg.overlap,
                mode=self.infer_cfg.blend).cpu()

    def validate(self, model: torch.nn.Module, samples: Sequence[Sample]) -> dict[str, float]:
        model.eval()
        hard, soft = [], []
        for s in samples:
            logits = self.predict_logits(model, s.image)
            pred = logits.argmax(1)[0].numpy() == 1
            hard.append(dice(pred, s.label[0].numpy() > 0))
            soft.append(seed_style_dice(logits, s.label[None].float()))
        return {"val_dice": float(np.mean(hard)), "val_seed_soft": float(np.mean(soft))}

    def fit(self, train: Sequence[Sample], val: Sequence[Sample], state: TrainState | None = None,
            on_epoch: Callable[[TrainState, bool], None] | None = None) -> TrainState:
        """Train from ``state`` (or from scratch) to ``cfg.epochs`` or the time budget.

        ``on_epoch(state, improved)`` is called after every epoch, e.g. to write checkpoints.
        """
        if not train:
            raise ValueError("no training samples")
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
        state = state or self.new_state()
        model = build_unet().to(self.device).to(memory_format=self.fmt)
        model.load_state_dict(state.model)
        optimizer = self._optimizer(model)
        optimizer.load_state_dict(state.optimizer)
        started = time.monotonic() - state.elapsed_s
        if state.epoch and self.cfg.time_budget_s and state.elapsed_s >= self.cfg.time_budget_s:
            return state  # resumed from the budget's last checkpoint: training was over
        for epoch in range(state.epoch + 1, self.cfg.epochs + 1):
            t0 = time.monotonic()
            seed = _epoch_seed(self.cfg.seed, epoch)
            _seed_everything(seed)
            for group in optimizer.param_groups:
                group["lr"] = self._lr(epoch)
            model.train()
            losses = []
            for x, y in self._batches(train, seed):
                optimizer.zero_grad(set_to_none=True)
                logits = self._forward(model, x)
                loss = self.loss_fn(logits.float(), y.to(self.device))
                loss.backward()
                optimizer.step()
                losses.append(loss.detach().item())
            record: dict[str, Any] = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": self._lr(epoch)}
            out_of_time = bool(self.cfg.time_budget_s) and time.monotonic() - started >= self.cfg.time_budget_s
            last = epoch == self.cfg.epochs or out_of_time
            improved = False
            if val and (epoch % self.cfg.val_interval == 0 or last):
                record.update(self.validate(model, val))
                metric = record["val_dice"] if self.cfg.selection == "dice" else record["val_seed_soft"]
                if metric > state.best_metric:
                    improved = True
                    state.best_metric, state.best_epoch = metric, epoch
                    state.best_model = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            elif not val:
                # Nothing to select on: the last epoch is the model.
                improved = True
                state.best_epoch = epoch
                state.best_model = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            record["seconds"] = round(time.monotonic() - t0, 3)
            state.epoch = epoch
            state.model = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            state.optimizer = optimizer.state_dict()
            state.history.append(record)
            state.rng = _rng_states()
            state.elapsed_s = time.monotonic() - started
            log.info("epoch done", extra={**record, "progress": f"{epoch}/{self.cfg.epochs}",
                                          "best_epoch": state.best_epoch})
            if on_epoch:
                on_epoch(state, improved)
            if out_of_time:
                log.info("time budget reached", extra={"epoch": epoch, "budget_s": self.cfg.time_budget_s})
                break
        return state
