"""Segment a CT volume with a trained model and return the liver mask on the volume's own grid.

The image goes through the same preprocessing as training (``transforms.to_network``); the liver probability is
mapped back onto the study's own voxels (inverse crop and resize, then bilinear resampling) and thresholded there,
slab by slab (``transforms.to_original_grid``), so the mask is evaluated at the original geometry, not at the
network's, and no float copy of the original grid is ever held.

Seed models saw 64-slice groups resized to 128×128×64: the volume is cut into the same groups (the last one
overlapping, so every slice is covered), each group is segmented whole, and a slice covered by two groups is
liver when either says so at the threshold of their mean (the two probabilities are kept for those slices only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from liverseg.config import Profile
from liverseg.errors import InputError
from liverseg.imaging.geometry import Volume
from liverseg.imaging.grouping import plan_groups, slab
from liverseg.ml.metrics import seed_style_dice
from liverseg.ml.training import Trainer
from liverseg.ml.transforms import NetworkInput, has_body, to_network, to_original_grid

__all__ = ["Segmentation", "largest_component", "segment"]


@dataclass
class Segmentation:
    """``mask`` uint8 (i, j, k) on the input grid (1 = liver), and, when a label was given, the seed's own figure
    (1 − soft Dice loss with background, in the network's space)."""

    mask: np.ndarray
    seed_style_dice: float | None = None


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every non-zero voxel (None when there is none), from the three projections."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component (the liver is one organ; islands are false positives), labelling
    only the box that holds the mask: the same components, a fraction of the memory on a large study."""
    box = bounding_box(mask)
    if box is None:
        return mask
    structure = np.ones((3, 3, 3), dtype=bool)
    # uint16 labels take half the memory of scipy's default int32 (a 987-slice box: 0.5 GB, not 1 GB); scipy
    # refuses with RuntimeError when there are more components than uint16 holds, and then int32 is used.
    try:
        labels = np.empty(mask[box].shape, dtype=np.uint16)
        n = ndimage.label(mask[box], structure=structure, output=labels)
    except RuntimeError:
        del labels  # the int32 labels are made without the refused uint16 array beside them
        labels, n = ndimage.label(mask[box], structure=structure)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.zeros_like(mask)
    np.equal(labels, int(np.argmax(sizes)) + 1, out=kept[box], casting="unsafe")
    return kept


def _probability(trainer: Trainer, model: torch.nn.Module, volume: Volume, profile: Profile,
                 label: Volume | None) -> tuple[torch.Tensor, NetworkInput, float | None]:
    """The liver probability (1, X, Y, Z) on the network's grid for one input (a whole volume or one group), the
    network input it came from, and the seed-style figure against ``label`` when given."""
    network = to_network(volume, profile.preprocess, label)
    logits = trainer.predict_logits(model, network.image.as_tensor())
    soft = None
    if network.label is not None:
        soft = seed_style_dice(logits, (network.label.as_tensor() > 0.5)[None].float())
    return torch.softmax(logits[0], dim=0)[1:2], network, soft


def segment(model: torch.nn.Module, volume: Volume, profile: Profile, device: torch.device,
            label: Volume | None = None) -> Segmentation:
    if not has_body(volume.array, profile.preprocess):
        raise InputError(f"no voxel above {profile.preprocess.window[0]:g} HU: an empty scan, or not CT in HU")
    trainer = Trainer(profile.train, profile.infer, device)
    model.eval()
    threshold = profile.infer.threshold
    if profile.preprocess.unit == "group":
        mask, soft = _segment_groups(trainer, model, volume, profile, label)
    else:
        prob, network, soft = _probability(trainer, model, volume, profile, label)
        mask = to_original_grid(prob, network, volume, threshold)
    if profile.infer.largest_component:
        mask = largest_component(mask)
    return Segmentation(mask=mask.astype(np.uint8, copy=False), seed_style_dice=soft)


def _segment_groups(trainer: Trainer, model: torch.nn.Module, volume: Volume, profile: Profile,
                    label: Volume | None) -> tuple[np.ndarray, float | None]:
    """The seed's way: each group segmented whole. A slice two groups cover (the last group overlaps its
    neighbour) takes the mean of their probabilities, as the published method averages them; a group of air
    slices adds nothing to that mean but still counts in it. Only the shared slices' sums are kept."""
    n = volume.array.shape[2]
    groups = plan_groups(n, min(profile.group.size, n), "overlap")
    hits = np.zeros(n, dtype=np.int64)
    for g in groups:
        hits[g.start:g.stop] += 1
    shared = np.flatnonzero(hits > 1)
    sums = np.zeros((*volume.array.shape[:2], shared.size), dtype=np.float32)
    threshold = profile.infer.threshold
    mask = np.zeros(volume.array.shape, dtype=np.uint8)
    softs: list[float] = []
    for g in groups:
        part = slab(volume, g.start, g.stop)
        if not has_body(part.array, profile.preprocess):
            continue  # a group of air slices: no body to crop to, and no liver
        part_label = slab(label, g.start, g.stop) if label is not None else None
        prob, network, soft = _probability(trainer, model, part, profile, part_label)
        if soft is not None:
            softs.append(soft)
        local = to_original_grid(prob, network, part, threshold=None)
        alone = hits[g.start:g.stop] == 1
        mask[:, :, g.start:g.stop][:, :, alone] = local[:, :, alone] > threshold
        where = np.searchsorted(shared, np.arange(g.start, g.stop)[~alone])
        sums[:, :, where] += local[:, :, ~alone]
    for i, k in enumerate(shared):
        mask[:, :, k] = sums[:, :, i] / np.float32(hits[k]) > threshold
    return mask, float(np.mean(softs)) if softs else None
