"""Voxel grids for a drawn patient: how much of the body a scan covers and at what sampling.

Scan ranges (mm relative to the right hemidiaphragm's dome, reference adult) go from liver-only to
chest–abdomen–pelvis, with a few that cut the liver at the top or the bottom. Two samplings:

- ``pipeline``: the matrix the default ``make run`` uses (256–320 px, 64–160 slices). The field of view
  follows the body (1.0–1.25× its width, sometimes a little narrower: a cut-off flank), so pixels are 1–2 mm:
  real adult anatomy at real size does not fit the 154–320 mm the old 0.6–1.0 mm pixels gave on this matrix
  (real scans here: 415 and 550 mm; the MSD liver set 287–512 mm).
- ``msd``: the Medical Segmentation Decathlon liver set's ranges (512×512, 0.56–1.0 mm pixels, 74–987 slices
  of 0.7–5 mm); the field of view does not follow the body, so large patients are cut at the sides.
"""

from __future__ import annotations

import numpy as np

from liverseg.data.phantom import GridSpec

__all__ = ["MSD_PIXEL", "MSD_SLICES", "MSD_THICKNESS", "PIPELINE_RANGES", "PIPELINE_SLICES", "PIPELINE_THICKNESS",
           "SCAN_RANGES", "msd_grid", "pipeline_grid", "scan_range"]

# (weight, top range, bottom range): t (mm above the dome) of the scan's first and last slice. The MSD size
# draws from all of them; the pipeline size leaves out the longest (chest to pelvis, 650-750 mm): every other
# range still holds the heart's lower half or the lung bases, and the network's cost grows with the volume.
SCAN_RANGES = {
    "liver": (0.22, (5.0, 50.0), (-240.0, -170.0)),
    "abdomen": (0.26, (20.0, 110.0), (-340.0, -260.0)),
    "abdomen_pelvis": (0.2, (20.0, 80.0), (-470.0, -400.0)),
    "chest_abdomen": (0.16, (160.0, 260.0), (-300.0, -200.0)),
    "chest_abdomen_pelvis": (0.08, (220.0, 280.0), (-470.0, -400.0)),
    "cut_liver": (0.08, (-70.0, 30.0), (-160.0, -90.0)),
}
PIPELINE_RANGES = ("liver", "abdomen", "abdomen_pelvis", "chest_abdomen", "cut_liver")
PIPELINE_SLICES = (64, 160)
PIPELINE_THICKNESS = (0.625, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
MSD_SLICES = (74, 987)
MSD_THICKNESS = (0.7, 0.8, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
MSD_PIXEL = (0.56, 1.0)


def scan_range(rng: np.random.Generator, height_scale: float, names: tuple[str, ...] = tuple(SCAN_RANGES)
               ) -> tuple[float, float]:
    """(top, bottom) t in mm of a scan of a patient of height scale ``height_scale``, of one of the ``names``
    ranges drawn by weight."""
    weights = np.array([SCAN_RANGES[n][0] for n in names])
    _, top, bottom = SCAN_RANGES[names[int(rng.choice(len(names), p=weights / weights.sum()))]]
    return float(rng.uniform(*top) * height_scale), float(rng.uniform(*bottom) * height_scale)


def _slices(rng: np.random.Generator, coverage: float, thicknesses, limits: tuple[int, int]) -> tuple[int, float]:
    """A slice thickness from ``thicknesses`` that covers ``coverage`` mm within ``limits`` slices (the closest
    to the limits when none fits), and the slice count."""
    counts = np.array([coverage / t for t in thicknesses])
    fits = np.flatnonzero((counts >= limits[0]) & (counts <= limits[1]))
    if fits.size:
        thickness = float(thicknesses[int(rng.choice(fits))])
    else:
        thickness = float(thicknesses[int(np.argmin(np.minimum(abs(counts - limits[0]), abs(counts - limits[1]))))])
    return int(np.clip(round(coverage / thickness), *limits)), thickness


def pipeline_grid(rng: np.random.Generator, body_half_width: float, coverage: float,
                  matrix: tuple[int, int] = (256, 320)) -> GridSpec:
    """A grid on the pipeline's matrix (multiples of 32 within ``matrix``) whose field of view follows the body.

    Args:
        body_half_width: the widest half-width of the body (mm), arms included.
        coverage: z extent to cover (mm).
    """
    n_xy = int(rng.integers(matrix[0] // 32, matrix[1] // 32 + 1)) * 32
    fill = rng.uniform(0.85, 0.98) if rng.random() < 0.15 else rng.uniform(1.0, 1.25)
    pixel = float(np.round(2 * body_half_width * fill / n_xy, 3))
    n_z, thickness = _slices(rng, coverage, PIPELINE_THICKNESS, PIPELINE_SLICES)
    flips = tuple(bool(b) for b in rng.integers(0, 2, size=3))
    return GridSpec(shape=(n_xy, n_xy, n_z), spacing=(pixel, pixel, thickness), flips=flips)


def msd_grid(rng: np.random.Generator, coverage: float, slices: int | None = None) -> GridSpec:
    """A grid drawn like the MSD liver set's: 512×512, 0.56–1.0 mm pixels, 74–987 slices of 0.7–5 mm.

    Args:
        coverage: z extent to cover (mm).
        slices: this many slices instead of a drawn count; their thickness is ``coverage / slices`` within
            0.7–5 mm (so a count outside what the range needs covers a little more or less of the body).
    """
    pixel = float(np.round(rng.uniform(*MSD_PIXEL), 3))
    if slices is None:
        n_z, thickness = _slices(rng, coverage, MSD_THICKNESS, MSD_SLICES)
    else:
        n_z, thickness = slices, float(np.clip(np.round(coverage / slices, 2), 0.7, 5.0))
    flips = tuple(bool(b) for b in rng.integers(0, 2, size=3))
    return GridSpec(shape=(512, 512, n_z), spacing=(pixel, pixel, thickness), flips=flips)
