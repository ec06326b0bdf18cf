"""The training input pipeline: each case prepared once, random patches drawn in loader workers, batches streamed.

The deterministic part is done once per case and cached (MONAI ``CacheDataset``): the preprocess stage's arrays
(orientation, spacing, window, crop to the body), padding to the patch size and the liver's voxel indices. The
random part runs for every draw: patches centred on liver or background (``RandCropByPosNegLabeld`` with those
indices), spatial and intensity augmentation, then (``train.thin_slab``) some patches cut to a thin slab
(``augment``). With ``train.loader_workers`` > 0 it runs in DataLoader worker processes, which prefetch batches
(into pinned memory on CUDA) while the device trains on the previous ones; with 0 it runs in the training process,
one batch at a time. Only the batches in flight are in memory, never an epoch of them.

Reproducibility: the transforms of the training process are seeded from (seed, epoch, rank), exactly as the
single-process loop always did, and each worker's copy from (seed, epoch, rank, worker) through the loader's
generator and MONAI's ``worker_init_fn``; the draw order comes from the same seed. A run killed and resumed with the
same processes and workers therefore draws the same patches.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as T
from monai.data import CacheDataset, MetaTensor
from monai.data.utils import worker_init_fn
from torch.utils.data import DataLoader

from liverseg.config import TrainConfig
from liverseg.errors import ConfigError
from liverseg.ml.augment import RandLiverContrastd, RandThinSlabd

__all__ = ["EveryVoxel", "LiverIndicesd", "batches", "collate_patches", "draw_order", "rank_seed",
           "share_of_batch", "training_dataset"]

FG_KEY, BG_KEY = "fg_indices", "bg_indices"
NOISE_PROB = 0.15  # nnU-Net's probability for gaussian noise
PREFETCH_BATCHES = 2  # per worker: batches waiting while the device trains
THIN_SLAB_SLICES = (1, 8)  # train.thin_slab's slab thickness, voxels (at 3 mm: a 3-24 mm series)
LIVER_CONTRAST_SHIFT = 0.2  # train.liver_contrast's largest offset, window units: steatosis lowers the liver ~65 HU


class EveryVoxel:
    """The flat indices 0…size-1 of a volume, as ``RandCropByPosNegLabeld``'s background candidates.

    Given a uint8 label (ours), MONAI's own ``map_binary_to_indices`` returns every voxel as background (``~`` of
    torch's uint8 ``any`` is never 0), so a "negative" patch has always been centred anywhere in the volume, liver
    included (like nnU-Net's unforced draws). This keeps exactly that without an int64 array of every voxel per
    cached case (8 bytes a voxel, twice the image); not a ``Sequence``, which MONAI would turn into that array.
    """

    def __init__(self, size: int):
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, k: int) -> int:
        if not 0 <= k < self._size:
            raise IndexError(k)
        return k


class LiverIndicesd(T.MapTransform):
    """Adds the liver's flat voxel indices (``fg_indices``) and the candidates for negative patches
    (``bg_indices``, ``EveryVoxel``) of ``label`` (1, X, Y, Z), as ``RandCropByPosNegLabeld`` takes them
    precomputed: once per case instead of at every draw."""

    def __init__(self, label_key: str = "label"):
        super().__init__([label_key])
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        label = np.asarray(d[self.label_key])
        d[FG_KEY] = np.flatnonzero(label.any(axis=0))  # as monai.transforms.utils.map_binary_to_indices
        d[BG_KEY] = EveryVoxel(label[0].size)
        return d


def _transforms(cfg: TrainConfig) -> list[T.Transform]:
    """Deterministic steps first (cached), then the random ones (every draw), in the order their seeds are dealt."""
    keys = ["image", "label"]
    steps: list[T.Transform] = []
    if cfg.patch is not None:
        steps += [T.SpatialPadd(keys, cfg.patch), LiverIndicesd("label"),
                  T.RandCropByPosNegLabeld(keys, "label", cfg.patch, pos=1, neg=1, num_samples=cfg.samples_per_volume,
                                           fg_indices_key=FG_KEY, bg_indices_key=BG_KEY)]
    if cfg.rotate_deg or cfg.scale_range:
        # Small rotations and zooms only: flips would move the liver to the patient's left, which never happens.
        steps.append(T.RandAffined(keys, prob=cfg.spatial_prob, rotate_range=[math.radians(cfg.rotate_deg)] * 3,
                                   scale_range=[cfg.scale_range] * 3, mode=("bilinear", "nearest"),
                                   padding_mode="border"))
    if cfg.augment:
        steps += [T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                  T.RandShiftIntensityd("image", offsets=0.05, prob=0.5)]
    if cfg.liver_contrast:
        steps.append(RandLiverContrastd("image", "label", prob=cfg.liver_contrast, shift=LIVER_CONTRAST_SHIFT))
    if cfg.noise_std:
        steps.append(T.RandGaussianNoised("image", prob=NOISE_PROB, std=cfg.noise_std))
    if cfg.thin_slab:
        # Last: the slices it zeroes must stay what inference pads with, whatever came before.
        steps.append(RandThinSlabd(keys, "label", prob=cfg.thin_slab, slices=THIN_SLAB_SLICES))
    return steps


def training_dataset(images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor], cfg: TrainConfig) -> CacheDataset:
    """The training units with their deterministic preparation cached.

    Args:
        images: float32 (1, X, Y, Z) in 0..1, one per unit.
        labels: uint8 (1, X, Y, Z), liver 0/1, one per unit.
        cfg: the patch size, patches per unit and augmentation.
    """
    data = [{"image": image, "label": label} for image, label in zip(images, labels, strict=True)]
    return CacheDataset(data, T.Compose(_transforms(cfg)), cache_rate=1.0, num_workers=None, progress=False)


def rank_seed(epoch_seed: int, rank: int) -> int:
    """The seed of one process's draws in an epoch: rank 0 keeps the epoch's seed (a single process draws exactly
    as it always did), the others get their own."""
    return epoch_seed if rank == 0 else int(np.random.SeedSequence([epoch_seed, rank]).generate_state(1)[0] >> 1)


def share_of_batch(batch_size: int, samples_per_volume: int, world_size: int) -> tuple[int, int]:
    """(volumes, patches per volume) one of ``world_size`` processes takes of a step's ``batch_size`` volumes x
    ``samples_per_volume`` patches: every step trains on the same number of patches whatever the number of
    processes (as one process would), N processes taking 1/N of them each.

    Raises:
        ConfigError: the patches of a step do not split evenly among the processes.
    """
    patches = batch_size * samples_per_volume
    if patches % world_size:
        raise ConfigError(f"train.processes {world_size}: the {patches} patches of a step (train.batch_size "
                          f"{batch_size} x train.samples_per_volume {samples_per_volume}) do not split evenly")
    share = patches // world_size
    volumes = max(1, batch_size // world_size)
    return (volumes, share // volumes) if share % volumes == 0 else (1, share)


def draw_order(units: int, batch_size: int, steps: int | None, seed: int) -> list[int]:
    """The units one process draws in an epoch, in order.

    Args:
        units: training units this process holds (at least one).
        batch_size: units this process draws per step.
        steps: steps in the epoch (every process of a run takes as many), or None for exactly one pass over the
            units (a single process; the last batch may be smaller).
        seed: this process's seed for the epoch (``rank_seed``).
    """
    rng = np.random.default_rng(seed)
    if steps is None:
        return rng.permutation(units).tolist()
    order: list[int] = []
    while len(order) < steps * batch_size:  # one permutation after another: every unit as often as the others, ±1
        order += rng.permutation(units).tolist()
    return order[:steps * batch_size]


def _plain(value: Any) -> torch.Tensor:
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


def collate_patches(items: list[dict | list[dict]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches of a batch, unit after unit, as float32 ``image`` and ``label`` (B, 1, X, Y, Z). Plain tensors: the
    step needs no metadata, and pinning or sending MetaTensors would copy theirs for every batch."""
    patches = [d for item in items for d in (item if isinstance(item, list) else [item])]
    return (torch.stack([_plain(d["image"]) for d in patches]).float(),
            torch.stack([_plain(d["label"]) for d in patches]).float())


def batches(dataset: CacheDataset, order: list[int], cfg: TrainConfig, seed: int,
            device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches, (image, label) float32 (B, 1, X, Y, Z), streamed as the training consumes them.

    Args:
        dataset: ``training_dataset``.
        order: ``draw_order`` of this process for the epoch.
        cfg: batch size and loader workers.
        seed: this process's seed for the epoch; its workers' seeds are drawn from it.
        device: where the batches go (CUDA: pinned memory, so the copy to the device can overlap the step).
    """
    dataset.transform.set_random_state(seed=seed)  # draws in this process (no workers) continue this stream
    workers = cfg.loader_workers
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, num_workers=workers,
                        collate_fn=collate_patches, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(seed), worker_init_fn=worker_init_fn,
                        prefetch_factor=PREFETCH_BATCHES if workers else None)
    yield from loader
