"""What every phantom generator shares: the phantom and grid types, the label values, the world coordinates of an
axis-aligned grid and random rotations.

Two generators use them: the legacy one (``data.synth.make_phantom``) and the anatomy one (``data.anatomy``);
``data.synth.write_dataset`` writes either as an MSD Task03_Liver folder.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LIVER", "TUMOUR", "GridSpec", "Phantom", "axis_coords", "rotation"]

LIVER, TUMOUR = 1, 2


@dataclass(frozen=True)
class Phantom:
    """One synthetic case: ``image`` int16 HU and ``label`` uint8 (0 background, 1 liver, 2 tumour), both (x, y, z)
    voxel order, with ``affine`` mapping voxel indices to RAS+ millimetres (nibabel convention)."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True)
class GridSpec:
    """How a case is sampled: voxel counts, spacing in mm and the sign of each axis in RAS+."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    flips: tuple[bool, bool, bool]

    def affine(self, centre_mm: np.ndarray) -> np.ndarray:
        signs = np.where(self.flips, -1.0, 1.0)
        steps = signs * np.asarray(self.spacing)
        affine = np.diag([*steps, 1.0])
        # Place the grid so its centre lands on centre_mm.
        half = (np.asarray(self.shape) - 1) / 2.0
        affine[:3, 3] = centre_mm - steps * half
        return affine


def axis_coords(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World coordinates (mm, float32) of the voxel centres along each axis of a grid with an axis-aligned
    ``affine`` (flips only): each world axis depends on one voxel axis, so three vectors describe every voxel."""
    xs, ys, zs = ((affine[i, i] * np.arange(shape[i]) + affine[i, 3]).astype(np.float32) for i in range(3))
    return xs, ys, zs


def rotation(rng: np.random.Generator, degrees: float | tuple[float, float, float]) -> np.ndarray:
    """A random 3×3 rotation: angles about x, y and z drawn within ±``degrees`` (one bound or one per axis),
    applied x first, then y, then z."""
    limit = np.broadcast_to(np.asarray(degrees, dtype=np.float64), (3,))
    ax, ay, az = np.deg2rad(rng.uniform(-limit, limit))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx
