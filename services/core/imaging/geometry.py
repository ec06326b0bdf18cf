"""Voxel grids in world space: NIfTI's RAS+ affines and DICOM's LPS+ slice geometry.

Conventions used everywhere in liverseg: arrays are indexed (i, j, k) = (column, row, slice) of the DICOM
slices, i.e. (x, y, z) in nibabel order; an affine maps (i, j, k, 1) to RAS+ millimetres. DICOM positions and
direction cosines are LPS+, so the two differ by a sign flip of the first two world axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Direction cosines are stored with ~6 decimals in DICOM; allow for that when checking orthogonality.
ORTHO_TOL = 1e-4


@dataclass(frozen=True)
class Volume:
    """A 3D image: ``array`` indexed (i, j, k) and ``affine`` (4×4, voxel index → RAS+ mm)."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


@dataclass(frozen=True)
class SliceGeometry:
    """What DICOM's Image Plane module needs for a grid: per-slice positions and shared orientation/spacing."""

    orientation: tuple[float, ...]          # ImageOrientationPatient: row direction (i), column direction (j), LPS
    pixel_spacing: tuple[float, float]     # PixelSpacing: [between rows (Δj), between columns (Δi)] mm
    positions: np.ndarray                  # (k, 3) ImagePositionPatient of each slice, LPS mm
    slice_step: float                      # signed distance between consecutive slices along the normal, mm


def check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError("affine is not a finite 4x4 matrix")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError("affine is singular (a zero or collinear voxel axis)")
    return affine


def slice_geometry(affine: np.ndarray, n_slices: int) -> SliceGeometry:
    """DICOM slice geometry of a RAS+ grid. Refuses grids DICOM cannot hold as a stack of parallel slices:
    non-orthogonal in-plane axes, or slices not stacked along their normal (sheared, like a gantry tilt)."""
    lps = LPS_FROM_RAS @ check_affine(affine)
    col_step, row_step, slice_vec = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    d_i, d_j = np.linalg.norm(col_step), np.linalg.norm(row_step)
    row_dir, col_dir = col_step / d_i, row_step / d_j
    if abs(row_dir @ col_dir) > ORTHO_TOL:
        raise InputError("in-plane voxel axes are not orthogonal; DICOM slices need a rectangular pixel grid")
    normal = np.cross(row_dir, col_dir)
    step = float(slice_vec @ normal)
    if np.linalg.norm(slice_vec - step * normal) > ORTHO_TOL * max(abs(step), 1.0) * 10:
        angle = np.degrees(np.arccos(min(1.0, abs(step) / np.linalg.norm(slice_vec))))
        raise InputError(f"slices are sheared by {angle:.2f} degrees from their normal (gantry tilt); "
                         "resample to an orthogonal grid first")
    positions = lps[:3, 3][None, :] + np.arange(n_slices)[:, None] * slice_vec[None, :]
    return SliceGeometry(orientation=tuple(float(v) for v in (*row_dir, *col_dir)),
                         pixel_spacing=(float(d_j), float(d_i)), positions=positions, slice_step=step)


def affine_from_slices(orientation, pixel_spacing, first_position, slice_vector) -> np.ndarray:
    """RAS+ affine of a slice stack: ``slice_vector`` is the LPS offset from one slice's position to the next."""
    row_dir = np.asarray(orientation[:3], dtype=np.float64)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * float(pixel_spacing[1])
    lps[:3, 1] = col_dir * float(pixel_spacing[0])
    lps[:3, 2] = np.asarray(slice_vector, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    return LPS_FROM_RAS @ lps


def same_grid(a: np.ndarray, b: np.ndarray, shape_a, shape_b, tol_mm: float = 1e-3) -> bool:
    """True when two grids put every voxel at the same place (within ``tol_mm``, NIfTI stores float32)."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    corners = np.array([[i, j, k, 1] for i in (0, shape_a[0] - 1) for j in (0, shape_a[1] - 1)
                        for k in (0, shape_a[2] - 1)], dtype=np.float64).T
    return bool(np.max(np.abs(a @ corners - b @ corners)) <= tol_mm)


def reindex(source: Volume, target_affine: np.ndarray, target_shape, tol_mm: float = 1e-3) -> np.ndarray | None:
    """``source``'s array laid out on a target grid that holds the same voxel centres in another axis order or
    direction (a mask stored LAS beside an RAS image, a transposed array): flips and axis permutations only, no
    interpolation. None when the grids differ in any other way."""
    target_affine = np.asarray(target_affine, dtype=np.float64)
    m = np.linalg.inv(target_affine) @ source.affine
    spacing = np.linalg.norm(target_affine[:3, :3], axis=0)
    tol = tol_mm / float(spacing.min())
    rounded = np.round(m)
    if not np.allclose(m[:3], rounded[:3], atol=tol):
        return None
    perm = rounded[:3, :3].astype(int)
    if not (np.all(np.abs(perm).sum(axis=0) == 1) and np.all(np.abs(perm).sum(axis=1) == 1)):
        return None
    src_axis_for = [int(np.flatnonzero(perm[r])[0]) for r in range(3)]
    arr = np.transpose(source.array, src_axis_for)
    if arr.shape != tuple(target_shape):
        return None
    for r in range(3):
        sign, offset = perm[r, src_axis_for[r]], int(rounded[r, 3])
        # Target index r = sign · source index + offset must run over exactly 0..n-1.
        if (sign > 0 and offset != 0) or (sign < 0 and offset != arr.shape[r] - 1):
            return None
        if sign < 0:
            arr = np.flip(arr, axis=r)
    return arr
