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

from liverseg.config import Profile
from liverseg.errors import InputError
from liverseg.imaging.geometry import Volume
from liverseg.imaging.grouping import plan_groups
from liverseg.ml.metrics import seed_style_dice
from liverseg.ml.training import Trainer
from liverseg.ml.transforms import as_meta, has_body, preprocessing


@dataclass
class Segmentation:
    """``mask`` uint8 (i, j, k) on the input grid (1 = liver), the liver ``probability`` float32 there, and, when a
    label was given, the seed's own figure (1 − soft Dice loss with background, in the network's space)."""

    mask: np.ndarray
    probability: np.ndarray
    seed_style_dice: float | None = None


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected component (the liver is one organ; islands are false positives)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    if n <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return labels == (int(np.argmax(sizes)) + 1)


def _network_pass(trainer: Trainer, model: torch.nn.Module, volume: Volume, profile: Profile,
                  label: Volume | None) -> tuple[np.ndarray, float | None]:
    """Liver probability on ``volume``'s grid for one network input (a whole volume or one group), and the
    seed-style figure against ``label`` when given."""
    pipeline = preprocessing(profile.preprocess, with_label=label is not None)
    data = {"image": as_meta(volume)}
    if label is not None:
        data["label"] = as_meta(label)
    data = pipeline(data)
    image: MetaTensor = data["image"]
    logits = trainer.predict_logits(model, image.as_tensor())
    soft = None
    if label is not None:
        soft = seed_style_dice(logits, (data["label"].as_tensor() > 0.5)[None].float())
    prob = torch.softmax(logits[0], dim=0)[1:2]
    data["image"] = MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)
    restored = pipeline.inverse(data)["image"]
    return restored.as_tensor()[0].numpy().astype(np.float32), soft


def _slab(volume: Volume, start: int, stop: int) -> Volume:
    affine = volume.affine.copy()
    affine[:3, 3] = (volume.affine @ np.array([0, 0, start, 1.0]))[:3]
    return Volume(volume.array[:, :, start:stop], affine)


def segment(model: torch.nn.Module, volume: Volume, profile: Profile, device: torch.device,
            label: Volume | None = None) -> Segmentation:
    if not has_body(volume.array, profile.preprocess):
        raise InputError(f"no voxel above {profile.preprocess.window[0]:g} HU: an empty scan, or not CT in HU")
    trainer = Trainer(profile.train, profile.infer, device)
    model.eval()
    if profile.preprocess.unit == "group":
        size = min(profile.group.size, volume.array.shape[2])
        prob = np.zeros(volume.array.shape, dtype=np.float32)
        hits = np.zeros(volume.array.shape[2], dtype=np.float32)
        softs = []
        for g in plan_groups(volume.array.shape[2], size, "overlap"):
            hits[g.start:g.stop] += 1
            slab = _slab(volume, g.start, g.stop)
            if not has_body(slab.array, profile.preprocess):
                continue  # a group of air slices: no body to crop to, and no liver
            part_label = _slab(label, g.start, g.stop) if label is not None else None
            part, soft = _network_pass(trainer, model, slab, profile, part_label)
            prob[:, :, g.start:g.stop] += part
            softs.append(soft)
        prob /= hits[None, None, :]
        soft = float(np.mean(softs)) if label is not None and softs else None
    else:
        prob, soft = _network_pass(trainer, model, volume, profile, label)
    mask = prob > profile.infer.threshold
    if profile.infer.largest_component:
        mask = largest_component(mask)
    return Segmentation(mask=mask.astype(np.uint8), probability=prob, seed_style_dice=soft)
