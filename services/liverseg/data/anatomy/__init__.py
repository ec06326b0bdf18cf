"""Synthetic abdominal CT with the anatomy of a real scan, for a starter model that transfers to real CT.

``make_phantom(rng)`` draws a patient (body, organs, contrast phase, lesions), a scan of it (range, field of
view, sampling) and renders it: int16 HU and a uint8 label (1 liver, 2 tumour) in the MSD Task03_Liver
convention, with a RAS+ affine. Deterministic for a given generator state. The modules: ``body`` (torso,
diaphragm, ribs, liver shape), ``organs`` (everything else, in painting order), ``tissues`` (HU per phase),
``shapes``/``fields`` (implicit shapes and smooth random fields in world mm), ``render`` (slab painter and
scanner), ``grids`` (scan ranges and samplings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from liverseg.data.anatomy.grids import PIPELINE_RANGES, SCAN_RANGES, msd_grid, pipeline_grid, scan_range
from liverseg.data.anatomy.organs import Patient, build_structures, draw_patient
from liverseg.data.anatomy.render import Scanner, Structure, render_grid
from liverseg.data.anatomy.tissues import Palette, draw_palette
from liverseg.data.phantom import GridSpec, Phantom

__all__ = ["SIZES", "VERSION", "Case", "draw_case", "make_phantom"]

SIZES = ("pipeline", "msd")
# Names the generator's output: bump it whenever a change alters the phantoms a seed gives, so data folders and
# store datasets made by an older version are never mistaken for this one's.
VERSION = "anatomy-1"


@dataclass(frozen=True)
class Case:
    """Everything drawn for one phantom before rendering (kept for tests and inspection)."""

    patient: Patient
    palette: Palette
    structures: list[Structure]
    grid: GridSpec
    affine: np.ndarray
    scanner: Scanner


def draw_case(rng: np.random.Generator, size: str = "pipeline", matrix: tuple[int, int] = (256, 320),
              randomise: float = 0.0, slices: int | None = None) -> Case:
    """Draw a patient, its structures and a scan of it.

    Args:
        rng: the case's generator (consumed in a fixed order: same state, same case).
        size: ``pipeline`` (the default matrix, field of view following the body) or ``msd`` (MSD liver grids).
        matrix: pipeline matrix bounds in pixels.
        randomise: probability that a case draws its soft tissues' HU at random (``tissues.draw_palette``).
        slices: ``msd`` only: the scan's slice count instead of a drawn one (``grids.msd_grid``).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    if slices is not None and size != "msd":
        raise ValueError("a slice count is for msd-size grids only")
    patient = draw_patient(rng)
    palette = draw_palette(rng, randomise=randomise)
    structures = build_structures(rng, patient, palette)
    top, bottom = scan_range(rng, patient.h, tuple(SCAN_RANGES) if size == "msd" else PIPELINE_RANGES)
    coverage = top - bottom
    if size == "msd":
        grid = msd_grid(rng, coverage, slices)
    else:
        grid = pipeline_grid(rng, patient.body_half_width(), coverage, matrix)
    fr = patient.frame
    fov = grid.shape[0] * grid.spacing[0]
    slack = max(0.0, fov / 2 - patient.body_half_width())
    centre = np.array([fr.cx + rng.uniform(-0.3, 0.3) * slack + rng.uniform(-10, 10),
                       fr.cy - 0.1 * patient.torso.back + rng.uniform(-25, 25),
                       fr.dome_z + (top + bottom) / 2])
    # Thicker slices cover the same range with fewer of them; keep the range's middle where it was drawn.
    affine = grid.affine(centre)
    # Noise grows with the patient's size; one scan in six is low-dose (screening, colonography: 22-50 HU).
    dose = rng.uniform(6, 20) if rng.random() > 1 / 6 else rng.uniform(22, 50)
    noise = float(dose * np.clip(patient.body_half_width() / 170, 0.8, 1.25))
    circle = fov / 2 * float(rng.uniform(0.97, 1.0)) if rng.random() < 0.6 else None
    scanner = Scanner(noise_hu=noise, noise_corr_mm=float(rng.uniform(0.5, 1.1)), blur_mm=float(rng.uniform(0.4, 0.9)),
                      circle_mm=circle, padding=int(rng.choice([-1024, -2048, -3024])), seed=int(rng.integers(2**62)))
    return Case(patient, palette, structures, grid, affine, scanner)


def make_phantom(rng: np.random.Generator, size: str = "pipeline", matrix: tuple[int, int] = (256, 320),
                 randomise: float = 0.0, slices: int | None = None) -> Phantom:
    """Draw and render one phantom (see ``draw_case`` for the arguments)."""
    case = draw_case(rng, size, matrix, randomise, slices)
    image, label = render_grid(case.structures, case.affine, case.grid.shape, case.scanner)
    return Phantom(image=image, label=label, affine=case.affine)
