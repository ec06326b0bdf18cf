"""Paint a list of structures onto a voxel grid, slab by slab along z, then add what a scanner adds.

Painter's algorithm: each structure blends its HU into the voxels inside its shape (a partial-volume weight
over the last ``EDGE_MM`` of its edge) and, if it has a label, sets the label where it covers at least half of
a voxel. Later structures cover earlier ones, so an organ painted after the liver carves its own impression in
the liver and its label. Then, per slab: in-plane blur (the scanner's point spread), correlated noise and the
reconstruction circle.

Memory: the output is int16 HU and uint8 labels; float32 work arrays exist for one slab only (``SLAB`` slices),
so a 512×512×987 grid needs its output (~780 MB) plus ~100 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from liverseg.data.anatomy.fields import LatticeField
from liverseg.data.anatomy.shapes import Shape
from liverseg.data.phantom import LIVER, axis_coords

__all__ = ["EDGE_MM", "SLAB", "Scanner", "Structure", "paint_slab", "render_grid"]

EDGE_MM = 1.2
SLAB = 16  # slices per slab: bounds memory and keeps each structure's box small


@dataclass
class Structure:
    """One thing to paint.

    Args:
        name: what it is (for tests and debugging).
        shape: where it is.
        hu: mean HU.
        texture: (field, amplitude HU) pairs added to ``hu``.
        label: label value to set inside (None: leave labels alone).
        only: paint only over voxels already of this kind: ``liver`` (label ≥ 1), ``lung`` (HU < −400), ``fat``
            (HU < −30 and label 0) or ``not_liver`` (label 0).
    """

    name: str
    shape: Shape
    hu: float
    texture: Sequence[tuple[LatticeField, float]] = field(default_factory=tuple)
    label: int | None = None
    only: str | None = None


@dataclass(frozen=True)
class Scanner:
    """What the scanner adds: noise (HU std after filtering), its in-plane correlation and blur (mm), and the
    reconstruction circle (radius mm about the grid's in-plane centre; None: none) filled with ``padding`` HU."""

    noise_hu: float
    noise_corr_mm: float
    blur_mm: float
    circle_mm: float | None
    padding: int
    seed: int


def _only_mask(kind: str, hu: np.ndarray, label: np.ndarray) -> np.ndarray:
    if kind == "liver":
        return label >= LIVER
    if kind == "lung":
        return hu < -400
    if kind == "fat":
        return (hu < -30) & (label == 0)
    if kind == "not_liver":
        return label == 0
    raise ValueError(f"unknown restriction {kind!r}")


def _index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    inside = np.flatnonzero((coords >= lo) & (coords <= hi))
    return slice(inside[0], inside[-1] + 1) if inside.size else slice(0, 0)


def paint_slab(structures: Sequence[Structure], xs: np.ndarray, ys: np.ndarray, zs: np.ndarray,
               background: float) -> tuple[np.ndarray, np.ndarray]:
    """HU (float32) and labels (uint8) of the box spanned by world coordinate vectors ``xs``, ``ys``, ``zs``."""
    hu = np.full((len(xs), len(ys), len(zs)), background, dtype=np.float32)
    label = np.zeros(hu.shape, dtype=np.uint8)
    for s in structures:
        lo, hi = s.shape.bounds()
        box = tuple(_index_range(c, lo[i] - EDGE_MM, hi[i] + EDGE_MM) for i, c in enumerate((xs, ys, zs)))
        if any(b.stop <= b.start for b in box):
            continue
        bx, by, bz = xs[box[0]], ys[box[1]], zs[box[2]]
        d = s.shape.distance(bx[:, None, None], by[None, :, None], bz[None, None, :])
        d = np.broadcast_to(d, (len(bx), len(by), len(bz)))
        alpha = np.clip(np.float32(0.5) - d / np.float32(EDGE_MM), 0, 1)
        if s.only is not None:
            alpha = alpha * _only_mask(s.only, hu[box], label[box])
        covered = alpha >= 0.5
        if not alpha.any():
            continue
        value = np.float32(s.hu)
        for tex, amplitude in s.texture:
            value = value + np.float32(amplitude) * tex.sample(bx, by, bz)
        target = hu[box]
        target += alpha * (value - target)
        if s.label is not None:
            label[box][covered] = s.label
    return hu, label


def render_grid(structures: Sequence[Structure], affine: np.ndarray, shape: tuple[int, int, int], scanner: Scanner,
                background: float = -1000.0) -> tuple[np.ndarray, np.ndarray]:
    """The whole grid as (int16 HU, uint8 label), both (x, y, z) voxel order, for an axis-aligned ``affine``."""
    xs, ys, zs = axis_coords(affine, shape)
    spacing = np.abs(np.diag(affine)[:2])
    image = np.empty(shape, dtype=np.int16)
    label = np.empty(shape, dtype=np.uint8)
    blur = scanner.blur_mm / spacing
    corr = scanner.noise_corr_mm / spacing
    gain = _noise_gain(corr)
    circle = None
    if scanner.circle_mm is not None:
        cx, cy = xs.mean(), ys.mean()
        circle = ((xs[:, None] - cx) ** 2 + (ys[None, :] - cy) ** 2) > scanner.circle_mm**2
    for start in range(0, shape[2], SLAB):
        stop = min(start + SLAB, shape[2])
        hu, lab = paint_slab(structures, xs, ys, zs[start:stop], background)
        ndimage.gaussian_filter(hu, sigma=(*blur, 0), output=hu, mode="nearest", truncate=3.0)
        rng = np.random.default_rng([scanner.seed, start])
        noise = rng.standard_normal(hu.shape, dtype=np.float32)
        ndimage.gaussian_filter(noise, sigma=(*corr, 0), output=noise, mode="wrap", truncate=3.0)
        hu += noise * np.float32(scanner.noise_hu * gain)
        if circle is not None:
            hu[circle] = scanner.padding
        np.clip(np.rint(hu), -3024, 3071, out=hu)
        image[:, :, start:stop] = hu
        label[:, :, start:stop] = lab
    return image, label


def _noise_gain(sigma_px: np.ndarray) -> float:
    """Factor that gives in-plane filtered unit white noise a standard deviation of 1 again."""
    probe = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    filtered = ndimage.gaussian_filter(probe, sigma=sigma_px, mode="wrap", truncate=3.0)
    return float(1.0 / filtered.std())
