"""Voxel grids in world space: NIfTI's RAS+ affines and DICOM's LPS+ slice geometry.

Conventions used everywhere in liverseg: arrays are indexed (i, j, k) = (column, row, slice) of the DICOM
slices, i.e. (x, y, z) in nibabel order; an affine maps (i, j, k, 1) to RAS+ millimetres. DICOM positions and
direction cosines are LPS+, so the two differ by a sign flip of the first two world axes.

The geometry is plain Python on 3-vectors (tuples of floats) and 4×4 affines (any nested sequence: lists, tuples
or numpy arrays are read the same; affines are returned as tuples of row tuples). It is a few hundred slices at
most, where numpy buys nothing, and the ``liverseg dicom`` converters run it without importing numpy (numpy's
import alone costs more than dcm2niix's whole conversion). The numpy paths call the very same functions; only
``same_grid`` and ``reindex``, which move arrays, import numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from liverseg.errors import InputError

# Axis labels of RAS+ (nibabel's axcodes): negative then positive end of each world axis.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

if TYPE_CHECKING:
    import numpy as np

Vec = tuple[float, float, float]
Affine = tuple[tuple[float, float, float, float], ...]
# Direction cosines are stored with ~6 decimals in DICOM; allow for that when checking orthogonality.
ORTHO_TOL = 1e-4
# Beyond these a "CT" voxel size is a unit error (metres, microns) or a broken header.
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 50.0


@dataclass(frozen=True)
class Volume:
    """A 3D image: ``array`` indexed (i, j, k) and ``affine`` (4×4, voxel index → RAS+ mm)."""

    array: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return spacing(self.affine)


@dataclass(frozen=True)
class Grid:
    """A voxel grid without its voxels: what a label is checked against when the image is never decoded."""

    shape: tuple[int, int, int]
    affine: Affine


# -- 3-vectors -----------------------------------------------------------------------------------------------
def dot(a: Sequence[float], b: Sequence[float]) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def cross(a: Sequence[float], b: Sequence[float]) -> Vec:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def norm(a: Sequence[float]) -> float:
    return math.sqrt(dot(a, a))


def sub(a: Sequence[float], b: Sequence[float]) -> Vec:
    return (a[0] - b[0], a[1] - b[1], a[2] - b[2])


def scaled(a: Sequence[float], factor: float) -> Vec:
    return (a[0] * factor, a[1] * factor, a[2] * factor)


def unit(a: Sequence[float]) -> Vec:
    length = norm(a)
    return (a[0] / length, a[1] / length, a[2] / length)


def column(affine, c: int) -> Vec:
    return (float(affine[0][c]), float(affine[1][c]), float(affine[2][c]))


def spacing(affine) -> tuple[float, float, float]:
    """Voxel size along i, j, k: the lengths of the affine's first three columns."""
    return tuple(norm(column(affine, c)) for c in range(3))


def _det3(m) -> float:
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


# -- checks --------------------------------------------------------------------------------------------------
def check_affine(affine) -> Affine:
    """The affine as floats (tuple of row tuples), or an ``InputError``: not a finite 4×4, or singular."""
    try:
        rows = tuple(tuple(float(v) for v in row) for row in affine)
    except (TypeError, ValueError):
        rows = ()
    if len(rows) != 4 or any(len(r) != 4 for r in rows) or not all(math.isfinite(v) for r in rows for v in r):
        raise InputError("affine is not a finite 4x4 matrix")
    if abs(_det3(rows)) < 1e-9:
        raise InputError("affine is singular (a zero or collinear voxel axis)")
    return rows


def check_grid(shape: Sequence[int], affine, *, kind: str, file: str | None) -> Affine:
    """The checks every image grid passes before it is used (whatever reads it): a non-empty 3D shape, an
    orientation (``affine`` None when the NIfTI has neither qform nor sform), a finite non-singular affine and a
    plausible voxel size. Returns the affine as floats."""
    if min(shape) < 1:
        raise InputError(f"{kind} has an empty axis, shape {tuple(shape)}", file=file)
    if affine is None:
        raise InputError(f"{kind} has neither qform nor sform: its orientation is unknown", file=file)
    try:
        rows = check_affine(affine)
    except InputError as exc:
        exc.file = file
        raise
    sizes = spacing(rows)
    if min(sizes) < MIN_SPACING_MM or max(sizes) > MAX_SPACING_MM:
        raise InputError(f"{kind} voxel spacing {[round(s, 4) for s in sizes]} mm is outside "
                         f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}]", file=file)
    return rows


# -- DICOM slices <-> affine ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceGeometry:
    """What DICOM's Image Plane module needs for a grid: per-slice positions and shared orientation/spacing."""

    orientation: tuple[float, ...]          # ImageOrientationPatient: row direction (i), column direction (j), LPS
    pixel_spacing: tuple[float, float]     # PixelSpacing: [between rows (Δj), between columns (Δi)] mm
    positions: tuple[Vec, ...]             # ImagePositionPatient of each slice, LPS mm
    slice_step: float                      # signed distance between consecutive slices along the normal, mm

    @property
    def normal(self) -> Vec:
        return cross(self.orientation[:3], self.orientation[3:])


def _lps(v: Sequence[float]) -> Vec:
    """RAS+ ↔ LPS+ (the same flip both ways; 0.0 - x keeps zeros positive, so no "-0" reaches a DS value)."""
    return (0.0 - v[0], 0.0 - v[1], v[2])


def slice_geometry(affine, n_slices: int) -> SliceGeometry:
    """DICOM slice geometry of a RAS+ grid. Refuses grids DICOM cannot hold as a stack of parallel slices:
    non-orthogonal in-plane axes, or slices not stacked along their normal (sheared, like a gantry tilt)."""
    rows = check_affine(affine)
    col_step, row_step, slice_vec, origin = (_lps(column(rows, c)) for c in range(4))
    d_i, d_j = norm(col_step), norm(row_step)
    row_dir, col_dir = unit(col_step), unit(row_step)
    if abs(dot(row_dir, col_dir)) > ORTHO_TOL:
        raise InputError("in-plane voxel axes are not orthogonal; DICOM slices need a rectangular pixel grid")
    normal = cross(row_dir, col_dir)
    step = dot(slice_vec, normal)
    if norm(sub(slice_vec, scaled(normal, step))) > ORTHO_TOL * max(abs(step), 1.0) * 10:
        angle = math.degrees(math.acos(min(1.0, abs(step) / norm(slice_vec))))
        raise InputError(f"slices are sheared by {angle:.2f} degrees from their normal (gantry tilt); "
                         "resample to an orthogonal grid first")
    positions = tuple((origin[0] + k * slice_vec[0], origin[1] + k * slice_vec[1], origin[2] + k * slice_vec[2])
                      for k in range(n_slices))
    return SliceGeometry(orientation=(*row_dir, *col_dir), pixel_spacing=(d_j, d_i), positions=positions,
                         slice_step=step)


def affine_from_slices(orientation: Sequence[float], pixel_spacing: Sequence[float], first_position: Sequence[float],
                       slice_vector: Sequence[float]) -> Affine:
    """RAS+ affine of a slice stack: ``slice_vector`` is the LPS offset from one slice's position to the next."""
    columns = (scaled(orientation[:3], float(pixel_spacing[1])), scaled(orientation[3:], float(pixel_spacing[0])),
               tuple(float(v) for v in slice_vector), tuple(float(v) for v in first_position))
    ras = [_lps(c) for c in columns]
    return (*(tuple(ras[c][r] for c in range(4)) for r in range(3)), (0.0, 0.0, 0.0, 1.0))


# -- grids of arrays (numpy) ---------------------------------------------------------------------------------
def same_grid(a, b, shape_a, shape_b, tol_mm: float = 1e-3) -> bool:
    """True when two grids put every voxel at the same place (within ``tol_mm``, NIfTI stores float32)."""
    import numpy as np

    if tuple(shape_a) != tuple(shape_b):
        return False
    corners = np.array([[i, j, k, 1] for i in (0, shape_a[0] - 1) for j in (0, shape_a[1] - 1)
                        for k in (0, shape_a[2] - 1)], dtype=np.float64).T
    return bool(np.max(np.abs(np.asarray(a) @ corners - np.asarray(b) @ corners)) <= tol_mm)


def reindex(source: Volume, target_affine, target_shape, tol_mm: float = 1e-3):
    """``source``'s array laid out on a target grid that holds the same voxel centres in another axis order or
    direction (a mask stored LAS beside an RAS image, a transposed array): flips and axis permutations only, no
    interpolation. None when the grids differ in any other way."""
    import numpy as np

    target_affine = np.asarray(target_affine, dtype=np.float64)
    m = np.linalg.inv(target_affine) @ np.asarray(source.affine, dtype=np.float64)
    tol = tol_mm / min(spacing(target_affine))
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


def ras_view(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The volume's array in RAS axis order as a numpy view (flips and a transpose: nothing copied), and the 4×4
    map from RAS voxel indices to the original ones (``Orientationd(axcodes="RAS")``'s reordering; the RAS affine
    is ``volume.affine @`` that map)."""
    import nibabel as nib
    import numpy as np

    ornt = nib.orientations.ornt_transform(nib.io_orientation(np.asarray(volume.affine, dtype=np.float64)),
                                           nib.orientations.axcodes2ornt("RAS", labels=RAS_LABELS))
    array = volume.array
    flips = tuple(axis for axis, flip in enumerate(ornt[:, 1]) if flip == -1)
    if flips:
        array = np.flip(array, axis=flips)
    return array.transpose(np.argsort(ornt[:, 0])), nib.orientations.inv_ornt_aff(ornt, volume.array.shape)
