"""Segment a CT volume with a trained model and return the liver mask on the volume's own grid.

The image goes through the same preprocessing as training; the liver probability is mapped back through the
inverse transforms (resize, crop, spacing, orientation) with linear interpolation and thresholded there, so the
mask is evaluated at the original geometry, not at the network's.

Seed models saw 64-slice groups resized to 128×128×64: the volume is cut into the same groups (the last one
overlapping, so every slice is covered), each group is segmented whole, and overlapping probabilities are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from scipy import ndimage

from ..config import Profile
from ..imaging.geometry import Volume
from ..imaging.grouping import plan_groups
from .training import Trainer
from .transforms import as_meta, preprocessing


@dataclass
class Segmentation:
    """``mask`` uint8 (i, j, k) on the input grid (1 = liver) and the liver ``probability`` float32 there."""

    mask: np.ndarray
    probability: np.ndarray


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component (the liver is one organ; islands are false positives)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _probability(trainer: Trainer, model: torch.nn.Module, volume: Volume, profile: Profile) -> np.ndarray:
    """Liver probability on ``volume``'s grid for one network input (a whole volume or one group)."""
    pipeline = preprocessing(profile.preprocess, with_label=False)
    data = pipeline({"image": as_meta(volume)})
    image: MetaTensor = data["image"]
    logits = trainer.predict_logits(model, image.as_tensor())
    prob = torch.softmax(logits[0], dim=0)[1:2]
    data["image"] = MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)
    restored = pipeline.inverse(data)["image"]
    return restored.as_tensor()[0].numpy().astype(np.float32)


def segment(model: torch.nn.Module, volume: Volume, profile: Profile, device: torch.device) -> Segmentation:
    trainer = Trainer(profile.train, profile.infer, device)
    model.eval()
    if profile.preprocess.unit == "group":
        size = min(profile.group.size, volume.array.shape[2])
        prob = np.zeros(volume.array.shape, dtype=np.float32)
        hits = np.zeros(volume.array.shape[2], dtype=np.float32)
        for g in plan_groups(volume.array.shape[2], size, "overlap"):
            affine = volume.affine.copy()
            affine[:3, 3] = (volume.affine @ np.array([0, 0, g.start, 1.0]))[:3]
            part = Volume(volume.array[:, :, g.start:g.stop], affine)
            prob[:, :, g.start:g.stop] += _probability(trainer, model, part, profile)
            hits[g.start:g.stop] += 1
        prob /= hits[None, None, :]
    else:
        prob = _probability(trainer, model, volume, profile)
    mask = prob > profile.infer.threshold
    if profile.infer.largest_component:
        mask = largest_component(mask)
    return Segmentation(mask=mask.astype(np.uint8), probability=prob)
