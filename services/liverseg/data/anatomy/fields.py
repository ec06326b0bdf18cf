"""Smooth random fields defined in world millimetres, sampled onto any axis-aligned voxel box.

A field is a lattice of standard-normal values ``spacing`` mm apart, interpolated with cubic B-splines. Because
it lives in world space, a phantom's anatomy and texture do not depend on the grid that samples it, and a grid
can be rendered slab by slab: each slab asks for its own box and gets exactly the voxels a whole-grid call would.
Interpolation along each axis is a small matrix, so sampling a box is three matrix products over the part of
the lattice that box touches (no whole-grid coordinate arrays).
"""

from __future__ import annotations

import numpy as np

__all__ = ["LatticeField"]


def _bspline_weights(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lattice index of the first of four neighbours and their cubic B-spline weights, for positions ``t`` in
    lattice units. Returns ``(first (n,), weights (n, 4))``."""
    first = np.floor(t).astype(np.int64) - 1
    f = (t - np.floor(t)).astype(np.float64)
    w = np.stack([(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6,
                  f**3 / 6], axis=1)
    return first, w


# Standard deviation of a B-spline-interpolated unit-normal lattice, averaged over positions: sqrt of the mean
# of sum(w^2) per axis, cubed over three axes. Dividing by it gives fields of about unit standard deviation.
_F = np.linspace(0, 1, 1001)[:-1]
_PER_AXIS = float(np.mean(np.sum(_bspline_weights(_F)[1] ** 2, axis=1)))
_STD = _PER_AXIS ** 1.5


class LatticeField:
    """A smooth random field of about unit standard deviation with features ``spacing`` mm across.

    Args:
        rng: source of the lattice values (drawn once, here).
        lo: world corner (3,) in mm that the lattice must cover; ``hi`` the opposite corner.
        spacing: lattice step in mm; the field varies over about this distance.
    """

    def __init__(self, rng: np.random.Generator, lo, hi, spacing: float):
        self.lo = np.asarray(lo, dtype=np.float64)
        self.spacing = float(spacing)
        counts = np.ceil((np.asarray(hi, dtype=np.float64) - self.lo) / self.spacing).astype(int) + 4
        self.values = rng.standard_normal(tuple(counts)).astype(np.float32) / np.float32(_STD)

    def _basis(self, coords: np.ndarray, axis: int) -> tuple[np.ndarray, slice]:
        n = self.values.shape[axis]
        t = np.clip((np.asarray(coords, dtype=np.float64) - self.lo[axis]) / self.spacing + 1.0, 1.0, n - 2.0001)
        first, w = _bspline_weights(t)
        start, stop = int(first.min()), int(first.max()) + 4
        matrix = np.zeros((len(coords), stop - start), dtype=np.float32)
        rows = np.arange(len(coords))[:, None]
        matrix[rows, first[:, None] - start + np.arange(4)] = w
        return matrix, slice(start, stop)

    def sample(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """The field at every (x, y, z) of the box spanned by three world coordinate vectors (mm).

        Returns float32 of shape (len(xs), len(ys), len(zs)).
        """
        bx, sx = self._basis(xs, 0)
        by, sy = self._basis(ys, 1)
        bz, sz = self._basis(zs, 2)
        lattice = self.values[sx, sy, sz]
        t = lattice @ bz.T                                   # (a, b, nz)
        t = np.tensordot(by, t, axes=(1, 1))                 # (ny, a, nz)
        return np.tensordot(bx, t, axes=(1, 1))              # (nx, ny, nz)
