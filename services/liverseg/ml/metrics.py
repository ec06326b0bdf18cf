"""Segmentation metrics: hard foreground Dice, 95th-percentile Hausdorff distance, and the seed's figure.

The seed reported "Dice" as 1 − DiceLoss(to_onehot_y, sigmoid, squared_pred) over both channels, background
included; on a liver that fills a few percent of the volume, background pulls that figure up. It is computed here
only to put it beside the honest numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.losses import DiceLoss
from scipy import ndimage


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Hard Dice of two boolean masks (foreground only). Both empty → 1.0."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th percentile of symmetric surface distances in mm; inf when exactly one mask is empty."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float("inf")
    # Distances are only needed near the two surfaces: crop to their joint bounding box plus a margin.
    both = np.argwhere(pred | truth)
    lo = np.maximum(both.min(0) - 2, 0)
    hi = both.max(0) + 3
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    p, t = pred[box], truth[box]
    sp, st = _surface(p), _surface(t)
    dist_to_t = ndimage.distance_transform_edt(~st, sampling=spacing)
    dist_to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([dist_to_t[sp], dist_to_p[st]])
    return float(np.percentile(distances, 95))


_seed_loss = DiceLoss(to_onehot_y=True, sigmoid=True, squared_pred=True)


def seed_style_dice(logits: torch.Tensor, label: torch.Tensor) -> float:
    """The seed's figure: 1 − soft Dice loss over background and liver. ``logits`` (N, 2, …), ``label`` (N, 1, …)."""
    with torch.no_grad():
        return 1.0 - float(_seed_loss(logits.float(), label.float()))
