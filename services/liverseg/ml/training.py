"""The training loop: tensors in, a trained state out. No store, no files: the train stage does I/O.

Batches come from the input pipeline (``loader``), streamed while the device trains. With several processes
(``distributed``) each holds its share of the units and trains one replica (PyTorch DDP: gradients averaged every
step) on its share of every step's patches; the loss, validation and model selection are computed over all of them,
the same on every rank.

Validation and the final model use batch-norm statistics re-estimated for the weights of that moment from
``train.norm_recalibration`` batches of training patches (Wu and Johnson, "Rethinking 'Batch' in BatchNorm",
2021: precise BN; torch's ``swa_utils.update_bn``), not the running averages of training: with 1-2 patches a step
and a high learning rate those lag the weights, and the validation Dice of the same run swung between 0.0 and 0.85
from one validation to the next (2026-12-01, the make-run phantoms). With several processes each draws its share
of those batches and the synchronised batch norms (``syncnorm``) measure them over all ranks. Training itself
normalises by each batch, so nothing else changes.

Reproducibility: every epoch re-seeds torch, numpy and the MONAI transforms from (seed, epoch) (and the rank and
loader worker), so resuming from a checkpoint taken after epoch k replays epochs k+1… exactly as an uninterrupted
run with the same processes and workers (bit-exact on CPU). The RNG states are still saved in checkpoints, for
inspection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.data import CacheDataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import update_bn

from liverseg.config import InferConfig, TrainConfig
from liverseg.errors import ConfigError
from liverseg.ml import distributed
from liverseg.ml.distributed import Ranks
from liverseg.ml.loader import batches, draw_order, rank_seed, share_of_batch, training_dataset
from liverseg.ml.metrics import dice, seed_style_dice
from liverseg.ml.model import bf16_native, build_unet, memory_format
from liverseg.ml.syncnorm import synchronise_norms

__all__ = ["PROGRESS_EVERY_S", "Sample", "TrainState", "Trainer"]

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 60.0  # a progress line within an epoch at most this often


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


def _recalibration_seed(seed: int, epoch: int) -> int:
    # Its own stream: the patches that measure the statistics are not the epoch's training patches again.
    return (_epoch_seed(seed, epoch) + 104_729) % (2**31 - 1)


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


def _eta(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


class _ForwardBy(torch.nn.Module):
    """``net`` (its modules, so its batch norms) called through ``forward``, e.g. ``Trainer._forward``."""

    def __init__(self, net: torch.nn.Module, forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.net, self._by = net, forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._by(self.net, x)


class Trainer:
    """Trains the U-Net on ``Sample``s with a ``TrainConfig``; validation uses the inference settings.

    ``ranks``: this process's place among data-parallel processes (``distributed.launch``); each passes ``fit``
    its own share of the units: training units ``[rank::world_size]``, validation units likewise.
    """

    def __init__(self, cfg: TrainConfig, infer_cfg: InferConfig, device: torch.device, ranks: Ranks | None = None):
        self.cfg, self.infer_cfg, self.device, self.ranks = cfg, infer_cfg, device, ranks or Ranks()
        self.fmt = memory_format(device)
        self.amp = cfg.precision == "auto" and bf16_native(device)
        if cfg.loss == "dice_ce":
            self.loss_fn: torch.nn.Module = DiceCELoss(to_onehot_y=True, softmax=True)
        else:  # the seed's loss
            self.loss_fn = DiceLoss(to_onehot_y=True, sigmoid=True, squared_pred=True)

    @contextlib.contextmanager
    def _memory_named(self, work: str) -> Iterator[None]:
        """An out-of-memory on the device as a one-line error that names the sizes to lower."""
        try:
            yield
        except torch.OutOfMemoryError:
            total = torch.cuda.get_device_properties(self.device).total_memory / 2**30 if self.device.type == "cuda" \
                else None
            card = f"{torch.cuda.get_device_name(self.device)}, {total:.0f} GiB" if total else str(self.device)
            raise ConfigError(f"out of memory on {self.device} ({card}) {work}") from None

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

    def _forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            return model(x)

    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor) -> float:
        """One optimisation step; returns the batch's loss.

        Args:
            model: the network (or its DDP wrapper), in training mode.
            optimizer: over its parameters.
            x: image patches, float32 (B, 1, X, Y, Z) in 0..1.
            y: their liver labels, float32 (B, 1, X, Y, Z) 0/1.
        """
        patch = "x".join(map(str, x.shape[2:]))
        with self._memory_named(f"training a batch of {x.shape[0]} patches of {patch} voxels "
                                f"(train.batch_size {self.cfg.batch_size} x train.samples_per_volume "
                                f"{self.cfg.samples_per_volume}): lower them or train.patch"):
            optimizer.zero_grad(set_to_none=True)
            logits = self._forward(model, x)
            loss = self.loss_fn(logits.float(), y.to(self.device, non_blocking=True))
            loss.backward()
            optimizer.step()
            return loss.detach().item()

    def predict_logits(self, model: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Logits (1, 2, X, Y, Z) for one (1, X, Y, Z) input: sliding window for patch-trained models, one pass
        for whole-input (seed) models."""
        x = image[None].float()
        windows = f"{self.infer_cfg.sw_batch_size} window(s) of {'x'.join(map(str, self.cfg.patch or x.shape[2:]))}"
        with torch.no_grad(), self._memory_named(f"segmenting a {'x'.join(map(str, x.shape[2:]))} volume, "
                                                 f"{windows} voxels at a time (infer.sw_batch_size)"):
            if self.cfg.patch is None:
                return self._forward(model, x).float().cpu()
            return sliding_window_inference(
                x.to(self.device), roi_size=self.cfg.patch, sw_batch_size=self.infer_cfg.sw_batch_size,
                predictor=lambda w: self._forward(model, w).float(), overlap=self.infer_cfg.overlap,
                mode=self.infer_cfg.blend).cpu()

    def validate(self, model: torch.nn.Module, samples: Sequence[Sample]) -> dict[str, float]:
        """Mean hard Dice and seed-style figure over the validation units (of every rank: each scores its own
        share, and the means are taken over all of them in their original order, the same on every rank)."""
        model.eval()
        hard, soft = [], []
        for s in samples:
            logits = self.predict_logits(model, s.image)
            pred = logits.argmax(1)[0].numpy() == 1
            hard.append(dice(pred, s.label[0].numpy() > 0))
            soft.append(seed_style_dice(logits, s.label[None].float()))
        if self.ranks.distributed:
            hard, soft = (distributed.interleave(distributed.gather(values)) for values in (hard, soft))
        return {"val_dice": float(np.mean(hard)), "val_seed_soft": float(np.mean(soft))}

    def recalibrate_norms(self, net: torch.nn.Module, dataset: CacheDataset, units: int, cfg: TrainConfig,
                          epoch: int) -> None:
        """Re-estimate ``net``'s batch-norm statistics from ``cfg.norm_recalibration`` fresh batches of training
        patches (drawn from ``dataset``'s ``units`` with a seed of (seed, epoch, rank): the same on a resumed run),
        over all ranks' patches (``replica`` synchronised the norms). ``cfg``: this rank's share of a step."""
        if not self.cfg.norm_recalibration:
            return
        seed = rank_seed(_recalibration_seed(self.cfg.seed, epoch), self.ranks.rank)
        order = draw_order(units, cfg.batch_size, self.cfg.norm_recalibration, seed)
        inputs = (x for x, _ in batches(dataset, order, cfg, seed, self.device))
        # Autocast around each forward pass only (``_forward``), not around the loop: loader workers started inside
        # an autocast block inherit it, and their spatial transforms then compute in bf16 (RandAffined fails on it).
        update_bn(inputs, _ForwardBy(net, self._forward))

    def replica(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` as this rank trains it: with several ranks, its batch norms synchronised and wrapped in DDP
        (gradients averaged over the ranks at every step), else as it is."""
        if not self.ranks.distributed:
            return net
        # Batch norm over all ranks' patches, as one process normalises its whole batch (ml/syncnorm.py); in place,
        # so ``net`` (validation, checkpoints) is the same module with the same state dict.
        synchronise_norms(net, self.device)
        # 1x1x1 kernels in channels_last_3d: their gradients' strides differ from DDP's bucket views only in size-1
        # dimensions (the same memory layout), which DDP reports as a possible slowdown on every rank.
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        return DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _threads(self) -> None:
        """CPU threads: the configured number, else (several processes) an even share of the cores."""
        if self.cfg.num_threads or self.ranks.distributed:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            torch.set_num_threads(self.cfg.num_threads or max(1, cores // self.ranks.world_size))

    def fit(self, train: Sequence[Sample], val: Sequence[Sample], state: TrainState | None = None,
            on_epoch: Callable[[TrainState, bool], None] | None = None) -> TrainState:
        """Train from ``state`` (or from scratch) to ``cfg.epochs`` or the time budget.

        ``train`` and ``val`` are this rank's share (all of them in a single process). ``on_epoch(state,
        improved)`` is called after every epoch, e.g. to write checkpoints (by rank 0 only: the states agree).
        """
        if not train:
            raise ValueError("no training samples")
        self._threads()
        ranks, lead = self.ranks, self.ranks.rank == 0
        state = state or self.new_state()
        net = build_unet().to(self.device).to(memory_format=self.fmt)
        net.load_state_dict(state.model)
        model = self.replica(net)
        optimizer = self._optimizer(net)
        optimizer.load_state_dict(state.optimizer)
        started = time.monotonic() - state.elapsed_s
        if state.epoch and self.cfg.time_budget_s and state.elapsed_s >= self.cfg.time_budget_s:
            return state  # resumed from the budget's last checkpoint: training was over
        # Each step trains on batch_size x samples_per_volume patches whatever the number of processes, so N
        # processes make the same optimisation steps as one, N times faster on N devices; each takes its share.
        local = self.cfg
        steps = self.cfg.iterations_per_epoch
        if ranks.distributed:
            volumes, patches = share_of_batch(self.cfg.batch_size, self.cfg.samples_per_volume, ranks.world_size)
            local = self.cfg.model_copy(update={"batch_size": volumes, "samples_per_volume": patches})
            # One pass over all ranks' units takes as many steps as in one process; each rank repeats its own.
            steps = steps or math.ceil(distributed.sum_of(len(train), self.device) / self.cfg.batch_size)
        dataset = training_dataset([s.image for s in train], [s.label for s in train], local)
        has_val = distributed.sum_of(len(val), self.device) > 0 if ranks.distributed else bool(val)
        resumed_at, clock = state.epoch, time.monotonic()
        for epoch in range(state.epoch + 1, self.cfg.epochs + 1):
            t0 = time.monotonic()
            seed = _epoch_seed(self.cfg.seed, epoch)
            _seed_everything(seed)
            for group in optimizer.param_groups:
                group["lr"] = self._lr(epoch)
            model.train()
            draws = rank_seed(seed, ranks.rank)
            order = draw_order(len(train), local.batch_size, steps, draws)
            in_epoch, losses, shown = math.ceil(len(order) / local.batch_size), [], time.monotonic()
            for x, y in batches(dataset, order, local, draws, self.device):
                losses.append(self.step(model, optimizer, x, y))
                if lead and time.monotonic() - shown >= PROGRESS_EVERY_S:
                    shown = time.monotonic()
                    rate = (shown - t0) / len(losses)  # seconds per step in this epoch
                    log.info("training", extra={"epoch": epoch, "step": f"{len(losses)}/{in_epoch}",
                                                "eta": _eta(rate * ((self.cfg.epochs - epoch + 1) * in_epoch
                                                                    - len(losses)))})
            loss = distributed.mean_of(losses, self.device) if ranks.distributed else float(np.mean(losses))
            record: dict[str, Any] = {"epoch": epoch, "loss": loss, "lr": self._lr(epoch)}
            out_of_time = bool(self.cfg.time_budget_s) and time.monotonic() - started >= self.cfg.time_budget_s
            if ranks.distributed:
                out_of_time = distributed.broadcast_flag(out_of_time, self.device)
                distributed.sync_buffers(net)
            last = epoch == self.cfg.epochs or out_of_time
            improved = False
            if has_val and (epoch % self.cfg.val_interval == 0 or last):
                self.recalibrate_norms(net, dataset, len(train), local, epoch)
                record.update(self.validate(net, val))
                metric = record["val_dice"] if self.cfg.selection == "dice" else record["val_seed_soft"]
                if metric > state.best_metric:
                    improved = True
                    state.best_metric, state.best_epoch = metric, epoch
                    state.best_model = {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}
            elif not has_val:
                # Nothing to select on: the last epoch is the model.
                if last:
                    self.recalibrate_norms(net, dataset, len(train), local, epoch)
                improved = True
                state.best_epoch = epoch
                state.best_model = {k: v.detach().clone().cpu() for k, v in net.state_dict().items()}
            record["seconds"] = round(time.monotonic() - t0, 3)
            state.epoch = epoch
            state.model = {k: v.detach().cpu() for k, v in net.state_dict().items()}
            state.optimizer = optimizer.state_dict()
            state.history.append(record)
            state.rng = _rng_states()
            state.elapsed_s = time.monotonic() - started
            if lead:
                remaining = (time.monotonic() - clock) / (epoch - resumed_at) * (self.cfg.epochs - epoch)
                if self.cfg.time_budget_s:
                    remaining = min(remaining, max(0.0, self.cfg.time_budget_s - state.elapsed_s))
                log.info("epoch done", extra={**record, "progress": f"{epoch}/{self.cfg.epochs}",
                                              "best_epoch": state.best_epoch, "eta": _eta(remaining)})
            if on_epoch:
                on_epoch(state, improved)
            if out_of_time:
                if lead:
                    log.info("time budget reached", extra={"epoch": epoch, "budget_s": self.cfg.time_budget_s})
                break
        return state
