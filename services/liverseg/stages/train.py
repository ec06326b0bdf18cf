"""train: preprocessed training and validation cases → a trained U-Net, with checkpoints and per-epoch metrics.

Reads  runs/<run>/preprocess/<case>/*.npz                 train and val cases of the plan's split (never test)
Writes runs/<run>/train/checkpoints/epoch_NNNN.pt          full state every N epochs (last two kept)
       runs/<run>/train/metrics.json                      per-epoch loss, validation Dice, seconds
       runs/<run>/train/model.pt                          the selected model: weights + profile + provenance

With ``train.processes`` (or ``--gpus``) N > 1 it trains N data-parallel processes (``ml.distributed``): this
one is rank 0 and the only one with the store, so only it writes; the others read their share of the downloaded
arrays from the work folder.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverseg import logs
from liverseg import manifest as mf
from liverseg.config import InferConfig, TrainConfig
from liverseg.errors import CaseFailed, ConfigError, ConflictError, StageError
from liverseg.graph import ARRAYS, CHECKPOINTS, METRICS, MODEL, STEPS
from liverseg.ml.distributed import Ranks, launch
from liverseg.ml.loader import share_of_batch
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


# How the training runs, not what it trains: kept out of the fingerprint, so a checkpoint resumes on another shape.
EXECUTION_FIELDS = {"processes", "loader_workers"}


def download(ctx: StageContext, refs: dict[str, ObjectRef], work: Path) -> list[tuple[str, Path]]:
    """The arrays of ``refs`` in ``work``, as (key, local path), in key order."""
    return [(key, ctx.store.get_file(key, work / key)) for key in sorted(refs)]


def load_samples(files: list[tuple[str, Path]]) -> list[Sample]:
    samples = []
    for key, path in files:
        with np.load(path) as arrays:
            samples.append(Sample(name=f"{case_of(key)}/{Path(key).stem}", image=torch.from_numpy(arrays["image"]),
                                  label=torch.from_numpy(arrays["label"])))
    return samples


def train_rank(ranks: Ranks, train_cfg: TrainConfig, infer_cfg: InferConfig, device_type: str,
               train_files: list[tuple[str, Path]], val_files: list[tuple[str, Path]], state: bytes | None,
               run_id: str) -> None:
    """A data-parallel rank other than 0 (``ml.distributed.launch``'s target): its share of the units, no store.
    ``state``: the checkpoint to resume from, as bytes (a tensor passed to a spawned process shares its memory
    with rank 0's, and both optimizers would update it in place)."""
    logs.configure(stage=STEP.name, run_id=run_id, rank=str(ranks.rank))
    share = slice(ranks.rank, None, ranks.world_size)
    Trainer(train_cfg, infer_cfg, ranks.device(device_type), ranks).fit(
        load_samples(train_files[share]), load_samples(val_files[share]),
        TrainState.from_dict(from_bytes(state)) if state else None)


class TrainStage:
    """Whole-run stage: one process trains on every train case, validates on every val case. Cases set aside
    upstream are listed in the record, not used."""

    def __init__(self, resume: str = "auto", device: str | None = None, gpus: int | None = None,
                 loader_workers: int | None = None):
        self.resume = resume
        # The pod's shape, when the workflow gives it, overrides train.processes and train.loader_workers: one
        # process per GPU; none, one process on the CPU.
        self.device = torch.device("cpu") if gpus == 0 and device is None else pick_device(device)
        self.excluded: dict[str, str] = {}
        shape = {"processes": max(gpus, 1) if gpus is not None else None, "loader_workers": loader_workers}
        self.shape = {k: v for k, v in shape.items() if v is not None}
        if gpus and self.device.type != "cuda":
            raise ConfigError(f"--gpus {gpus}: this machine has no CUDA device (torch {torch.__version__})")

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
        return {"train": cfg.train.model_dump(mode="json", exclude=EXECUTION_FIELDS),
                "infer": cfg.infer.model_dump(mode="json"), "split": ctx.planned.split}

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
        train_cfg = cfg.train.model_copy(update=self.shape)
        world = train_cfg.processes
        split_of = ctx.planned.split_of
        parts = {part: download(ctx, {k: r for k, r in inputs.items() if split_of(case_of(k)) == part}, work)
                 for part in ("train", "val")}
        units = {part: len(files) for part, files in parts.items()}
        if world > units["train"]:
            raise ConfigError(f"train.processes {world}: more processes than training units ({units['train']})")
        share_of_batch(train_cfg.batch_size, train_cfg.samples_per_volume, world)  # refused before any rank starts
        if self.device.type == "cuda" and world > torch.cuda.device_count():
            raise ConfigError(f"train.processes {world}: one GPU per process, and {torch.cuda.device_count()} "
                              "are visible")
        log.info("training", extra={"train_units": units["train"], "val_units": units["val"], "processes": world,
                                    "loader_workers": train_cfg.loader_workers, "device": str(self.device),
                                    "excluded_cases": self.excluded})
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

        if world == 1:
            state = Trainer(train_cfg, cfg.infer, self.device).fit(
                load_samples(parts["train"]), load_samples(parts["val"]), state, on_epoch)
        else:
            resume = to_bytes(state.to_dict()) if state else None

            def rank0(ranks: Ranks) -> TrainState:
                share = slice(0, None, world)
                return Trainer(train_cfg, cfg.infer, ranks.device(self.device.type), ranks).fit(
                    load_samples(parts["train"][share]), load_samples(parts["val"][share]), state, on_epoch)

            state = launch(world, self.device.type, work / "ranks", rank0, train_rank,
                           (train_cfg, cfg.infer, self.device.type, parts["train"], parts["val"], resume, ctx.run_id))
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
                   "device": str(self.device), "world_size": world, "loader_workers": train_cfg.loader_workers,
                   "train_units": units["train"], "val_units": units["val"], "excluded_cases": self.excluded,
                   "model": MODEL.key(ctx.run_id)}
        return StageOutput(outputs, details)

    def result(self, ctx: StageContext, record: mf.Manifest) -> dict[str, Any]:
        return {k: record.details[k] for k in ("model", "best_epoch", "best_metric", "epochs_run")}


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least {minimum}")
        return int(text)
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const="require", default="auto",
                        help="continue from the last checkpoint, which must exist (default: continue from one if "
                             "present, else start)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                        help="ignore checkpoints and train from scratch")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--gpus", type=_at_least(0), default=None, metavar="N",
                        help="the GPUs this pod has: a data-parallel process on each; 0: one process on the CPU "
                             "(default: the profile's train.processes, on cuda when available)")
    parser.add_argument("--loader-workers", type=_at_least(0), default=None, metavar="N",
                        help="input-pipeline workers per process (default: the profile's train.loader_workers)")


def main(args: argparse.Namespace) -> int:
    return run_step(STEP, args, TrainStage(resume=args.resume, device=args.device, gpus=args.gpus,
                                           loader_workers=args.loader_workers))
