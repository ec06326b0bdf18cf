"""Synthetic abdominal CT phantoms in the Medical Segmentation Decathlon Task03_Liver layout.

Two generators write the same layout (``write_dataset``): ``anatomy`` (the default; ``data.anatomy``: an adult
patient at real size, chest to pelvis, contrast phases, the scanner; docs/PHANTOMS.md) and ``legacy``, this
module's first phantom generator (``make_phantom``), kept as the reference the benchmarks compare against and for
the tests that need a small, fast phantom. What follows describes ``legacy``.

A phantom is built in world space (RAS+, millimetres) from implicit shapes, then sampled onto a voxel grid whose
spacing, size and axis directions vary per case, so resampling, reorientation and cropping in the pipeline see
the same variety they see on real scans. Intensities are Hounsfield units stored as int16, like MSD images.

Anatomy (all sizes scale with a per-case body size, from child to small adult):
body wall (skin, subcutaneous fat, muscle), visceral fat, liver (lobed, textured, with vessels and optional
hypodense tumours, label 2), spleen and kidneys with liver-like HU as distractors, aorta, spine and ribs,
bowel with gas and fluid, gaussian noise with scanner-like correlation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from liverseg.data import anatomy
from liverseg.data.phantom import LIVER, TUMOUR, GridSpec, Phantom, axis_coords, rotation
from liverseg.errors import UsageError

__all__ = ["GENERATORS", "GridSpec", "Phantom", "check_settings", "dataset_case", "make_phantom", "random_grid",
           "write_dataset", "write_msd_cases"]

GENERATORS = ("anatomy", "legacy")


def random_grid(rng: np.random.Generator, matrix: tuple[int, int] = (256, 320)) -> GridSpec:
    """In-plane 0.6–1.0 mm on a square matrix, slices 1–5 mm, 64–160 slices, any axis flip (LPS, RAS, LAS…)."""
    n_xy = int(rng.integers(matrix[0] // 32, matrix[1] // 32 + 1)) * 32
    in_plane = float(np.round(rng.uniform(0.6, 1.0), 3))
    thickness = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0]))
    # Enough slices for at least one 64-slice group, and z coverage of 140–330 mm like an abdominal scan.
    n_z = int(np.clip(rng.uniform(140, 330) / thickness, 64, 160))
    flips = tuple(bool(b) for b in rng.integers(0, 2, size=3))
    return GridSpec(shape=(n_xy, n_xy, n_z), spacing=(in_plane, in_plane, thickness), flips=flips)


class _World:
    """World coordinates (mm) of every voxel of a grid, as three broadcastable arrays.

    Grids here are axis-aligned (flips only), so each world axis depends on one voxel axis and the
    coordinates cost O(nx + ny + nz) memory until an expression broadcasts them.
    """

    def __init__(self, affine: np.ndarray, shape: tuple[int, int, int]):
        xs, ys, zs = axis_coords(affine, shape)
        self.x, self.y, self.z = xs[:, None, None], ys[None, :, None], zs[None, None, :]
        self.shape = shape

    def _box(self, centre, reach: float) -> tuple[slice, slice, slice]:
        """Index ranges of the voxels within ``reach`` mm of ``centre`` along each world axis."""
        box = []
        for axis, coords in enumerate((self.x.ravel(), self.y.ravel(), self.z.ravel())):
            near = np.flatnonzero(np.abs(coords - centre[axis]) <= reach)
            box.append(slice(near[0], near[-1] + 1) if near.size else slice(0, 0))
        return tuple(box)

    def ellipsoid(self, centre, radii, rotation: np.ndarray | None = None) -> np.ndarray:
        """Implicit ellipsoid: < 1 inside, float32 (x, y, z); evaluated only in its bounding box (inf elsewhere)."""
        field = np.full(self.shape, np.inf, dtype=np.float32)
        box = self._box(centre, float(np.max(radii)))
        dx = self.x[box[0]] - np.float32(centre[0])
        dy = self.y[:, box[1]] - np.float32(centre[1])
        dz = self.z[:, :, box[2]] - np.float32(centre[2])
        if rotation is not None:
            r = rotation.T.astype(np.float32)
            dx, dy, dz = (r[0, 0] * dx + r[0, 1] * dy + r[0, 2] * dz,
                          r[1, 0] * dx + r[1, 1] * dy + r[1, 2] * dz,
                          r[2, 0] * dx + r[2, 1] * dy + r[2, 2] * dz)
        field[box] = (dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2
        return field

    def elliptic_cylinder(self, centre_xy, radii_xy) -> np.ndarray:
        """Implicit cylinder along z: < 1 inside, (x, y, 1) broadcastable."""
        return ((self.x - centre_xy[0]) / radii_xy[0]) ** 2 + ((self.y - centre_xy[1]) / radii_xy[1]) ** 2


def _smooth_field(rng: np.random.Generator, world: _World, wavelength_mm: float, amplitude: float,
                  terms: int = 8) -> np.ndarray:
    """Low-frequency random field in world space (sum of separable cosines), values roughly in ±amplitude.

    Defined on world coordinates, so the same anatomy comes out whatever grid samples it.
    """
    field = np.zeros(world.shape, dtype=np.float32)
    for _ in range(terms):
        k = rng.uniform(0.5, 1.5, size=3) * 2 * np.pi / wavelength_mm
        phase = rng.uniform(0, 2 * np.pi, size=3)
        field += (np.cos(k[0] * world.x + phase[0]) * np.cos(k[1] * world.y + phase[1])
                  * np.cos(k[2] * world.z + phase[2]))
    return field * np.float32(amplitude * 2 / np.sqrt(terms))


def make_phantom(rng: np.random.Generator, grid: GridSpec | None = None) -> Phantom:
    """Draw one abdominal CT phantom. Deterministic for a given generator state."""
    grid = grid or random_grid(rng)
    # Body half-width in mm: the field of view is 1.1–1.25× the body, so the body fills most of the matrix.
    fov = grid.shape[0] * grid.spacing[0]
    half_width = fov / 2 / rng.uniform(1.1, 1.25)
    s = half_width / 160.0  # anatomy scale relative to a 32 cm wide adult abdomen
    # Liver dome sits near the top of the scan; jitter so the liver is sometimes cut at an edge, as in real scans.
    z_extent = grid.shape[2] * grid.spacing[2]
    liver_z = rng.uniform(-0.1, 0.15) * z_extent
    affine = grid.affine(centre_mm=np.array([rng.uniform(-8, 8), rng.uniform(-8, 8), 0.0]))
    w = _World(affine, grid.shape)

    hu = np.full(grid.shape, -1000.0, dtype=np.float32)
    label = np.zeros(grid.shape, dtype=np.uint8)

    # Body outline varies slowly along z (breathing, anatomy).
    ap = half_width * rng.uniform(0.68, 0.82)
    wall_wobble = 1.0 + 0.02 * np.sin(w.z / (40.0 * s) + rng.uniform(0, 6.3))
    body = w.elliptic_cylinder((0.0, 0.0), (half_width * wall_wobble, ap * wall_wobble))
    fat_in = w.elliptic_cylinder((0.0, 0.0), ((half_width - 18 * s) * wall_wobble, (ap - 16 * s) * wall_wobble))
    muscle_in = w.elliptic_cylinder((0.0, 0.0), ((half_width - 28 * s) * wall_wobble, (ap - 26 * s) * wall_wobble))
    inside_body = body < 1
    hu[inside_body] = rng.uniform(-3, 3) - 40  # skin and dermis (thin, mostly overwritten)
    hu[np.broadcast_to(fat_in < 1, grid.shape) & inside_body] = rng.uniform(-115, -85)
    muscle_hu = rng.uniform(38, 55)
    hu[np.broadcast_to((muscle_in >= 1) & (fat_in < 0.93), grid.shape)] = muscle_hu
    cavity = np.broadcast_to(muscle_in < 1, grid.shape)
    hu[cavity] = rng.uniform(-105, -75)  # visceral fat

    # Contrast phase decides organ enhancement: non-contrast, arterial or portal venous.
    phase = rng.choice(["native", "arterial", "portal"])
    liver_hu = {"native": 58.0, "arterial": 75.0, "portal": 110.0}[phase] + rng.uniform(-8, 8)
    # Distractors overlap the liver's range on purpose: HU alone must not separate them.
    spleen_hu = liver_hu + rng.uniform(-12, 12)
    kidney_hu = {"native": 32.0, "arterial": 160.0, "portal": 150.0}[phase] + rng.uniform(-10, 10)
    aorta_hu = {"native": 45.0, "arterial": 280.0, "portal": 160.0}[phase] + rng.uniform(-15, 15)

    # Bowel: blobs of fluid and gas in the lower anterior cavity.
    for _ in range(int(rng.integers(6, 12))):
        c = (rng.uniform(-0.5, 0.5) * half_width, rng.uniform(-0.1, 0.5) * ap, liver_z - rng.uniform(60, 170) * s)
        r = rng.uniform(12, 26, size=3) * s
        blob = (w.ellipsoid(c, r) < 1) & cavity
        hu[blob] = rng.uniform(0, 25)
        gas = (w.ellipsoid(c, r * rng.uniform(0.3, 0.6)) < 1) & cavity
        hu[gas] = -950

    # Spine (vertebral body + canal) and aorta just anterior to it.
    spine_c = (0.0, -ap + 45 * s)
    vertebra = np.broadcast_to(w.elliptic_cylinder(spine_c, (20 * s, 17 * s)) < 1, grid.shape)
    # Discs every ~30 mm make the spine look segmented along z.
    disc = np.broadcast_to(np.abs(np.sin(w.z / (30 * s) * np.pi)) < 0.12, grid.shape)
    hu[vertebra] = rng.uniform(200, 300)
    hu[vertebra & disc] = rng.uniform(70, 100)
    cortex = np.broadcast_to(
        (w.elliptic_cylinder(spine_c, (20 * s, 17 * s)) < 1) & (w.elliptic_cylinder(spine_c, (16 * s, 13 * s)) >= 1),
        grid.shape)
    hu[cortex & ~disc] = rng.uniform(600, 900)
    canal = np.broadcast_to(w.elliptic_cylinder((0.0, spine_c[1] - 22 * s), (8 * s, 7 * s)) < 1, grid.shape)
    hu[canal] = rng.uniform(10, 30)
    aorta = np.broadcast_to(w.elliptic_cylinder((rng.uniform(-12, 0) * s, spine_c[1] + 30 * s), (11 * s, 11 * s)) < 1,
                            grid.shape)
    hu[aorta] = aorta_hu
    # Psoas muscles beside the spine in the lower part.
    for side in (-1, 1):
        psoas = (w.ellipsoid((side * 38 * s, spine_c[1] + 5 * s, liver_z - 170 * s), (16 * s, 18 * s, 90 * s)) < 1)
        hu[psoas] = muscle_hu

    # Liver: right lobe, left lobe crossing the midline, caudate; unioned and deformed by a smooth field.
    liver_rot = rotation(rng, 10)
    lobes = [
        ((85 * s, 5 * s, liver_z - 35 * s), np.array([62, 70, 78]) * s),          # right lobe
        ((20 * s, 35 * s, liver_z - 25 * s), np.array([55, 38, 45]) * s),         # medial / left lobe
        ((-35 * s, 40 * s, liver_z - 15 * s), np.array([40, 25, 30]) * s),        # left lateral tip
        ((40 * s, -20 * s, liver_z - 45 * s), np.array([25, 25, 35]) * s),        # caudate
    ]
    liver_field = np.full(grid.shape, np.inf, dtype=np.float32)
    for centre, radii in lobes:
        radii = radii * rng.uniform(0.85, 1.15, size=3)
        centre = np.asarray(centre) + rng.uniform(-6, 6, size=3) * s
        np.minimum(liver_field, w.ellipsoid(centre, radii, liver_rot), out=liver_field)
    liver_field += _smooth_field(rng, w, wavelength_mm=160 * s, amplitude=0.25)
    liver = (liver_field < 1) & cavity
    # Ribs wrap the liver: thin bright arcs near the body wall in the upper abdomen.
    rib_band = (muscle_in >= 0.80) & (muscle_in < 0.9)
    for k in range(int(rng.integers(3, 6))):
        rib_z = liver_z + 10 * s - k * rng.uniform(22, 30) * s
        rib = np.broadcast_to(rib_band & (np.abs(w.z - rib_z) < 5 * s), grid.shape) & ~vertebra
        hu[rib] = rng.uniform(400, 800)
    liver &= np.broadcast_to(muscle_in < 0.8, grid.shape)  # the liver stays inside the rib cage

    texture = _smooth_field(rng, w, wavelength_mm=50 * s, amplitude=6.0)
    hu[liver] = liver_hu + texture[liver]
    label[liver] = LIVER
    # Hepatic vessels: a few tubes with their own enhancement, still labelled liver (as in MSD).
    vessel_hu = {"native": 40.0, "arterial": 120.0, "portal": 170.0}[phase]
    for _ in range(int(rng.integers(2, 5))):
        c = np.array(lobes[0][0]) + rng.uniform(-30, 30, size=3) * s
        vessel = (w.ellipsoid(c, np.array([4, 4, 45]) * s, rotation(rng, 60)) < 1) & liver
        hu[vessel] = vessel_hu
    # Tumours: hypodense spheres inside the liver (label 2), none in some cases.
    for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):
        idx = np.argwhere(liver)
        if idx.size == 0:
            break
        centre_vox = idx[rng.integers(len(idx))]
        centre = (affine @ np.append(centre_vox, 1.0))[:3]
        lesion = (w.ellipsoid(centre, rng.uniform(6, 18, size=3) * s) < 1) & liver
        hu[lesion] = liver_hu - rng.uniform(25, 55)
        label[lesion] = TUMOUR

    # Spleen (left, posterior, liver-like HU) and kidneys (posterior, either side of the spine).
    spleen = (w.ellipsoid((-85 * s, -35 * s, liver_z - 50 * s), np.array([30, 48, 55]) * s * rng.uniform(0.8, 1.2),
                          rotation(rng, 15)) < 1) & cavity & ~liver
    hu[spleen] = spleen_hu + texture[spleen]
    for side in (-1, 1):
        kc = (side * 62 * s, -ap + 70 * s, liver_z - rng.uniform(95, 120) * s)
        kidney = (w.ellipsoid(kc, np.array([24, 30, 50]) * s, rotation(rng, 20)) < 1) & cavity & ~liver
        hu[kidney] = kidney_hu
        hu[kidney & (w.ellipsoid(kc, np.array([10, 12, 30]) * s) < 1)] = rng.uniform(0, 20)  # renal sinus fat/urine

    # Scanner noise: gaussian, slightly correlated in-plane like filtered back projection.
    noise = rng.standard_normal(grid.shape).astype(np.float32) * rng.uniform(10, 22)
    noise = ndimage.gaussian_filter(noise, sigma=(0.7, 0.7, 0), mode="nearest") * 1.6
    hu += noise
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Phantom(image=image, label=label, affine=affine)


def check_settings(generator: str, size: str, randomise: float) -> None:
    """Raises ``UsageError`` for an unknown generator or size, or settings the legacy generator does not have."""
    if generator not in GENERATORS:
        raise UsageError(f"generator must be one of {GENERATORS}, not {generator!r}")
    if size not in anatomy.SIZES:
        raise UsageError(f"size must be one of {anatomy.SIZES}, not {size!r}")
    if not 0 <= randomise <= 1:
        raise UsageError(f"randomise is a share of the cases, 0 to 1, not {randomise:g}")
    if generator == "legacy" and (size != "pipeline" or randomise):
        raise UsageError("the legacy generator has pipeline-size grids and no intensity randomisation")


def dataset_case(seed: int, i: int, generator: str = "anatomy", size: str = "pipeline",
                 matrix: tuple[int, int] = (256, 320), randomise: float = 0.0) -> Phantom:
    """Case ``i`` of the data set ``write_dataset`` writes with these settings: it depends only on them and
    ``(seed, i)``, so growing a data set keeps its earlier cases identical.

    Args:
        seed: data set seed.
        i: case index.
        generator: ``anatomy`` or ``legacy`` (see the module docstring).
        size: ``pipeline`` grids (``matrix``, 64–160 slices) or ``msd`` (the MSD liver set's 512×512, 74–987
            slices); ``anatomy`` only.
        matrix: in-plane matrix bounds (pixels) of ``pipeline``-size grids.
        randomise: share of ``anatomy`` cases whose soft tissues get random HU (``data.anatomy.tissues``).

    Raises:
        UsageError: see ``check_settings``.
    """
    check_settings(generator, size, randomise)
    rng = np.random.default_rng([seed, i])
    if generator == "legacy":
        return make_phantom(rng, random_grid(rng, matrix))
    return anatomy.make_phantom(rng, size=size, matrix=matrix, randomise=randomise)


def write_dataset(out: Path, cases: int, seed: int, matrix: tuple[int, int] = (256, 320), generator: str = "anatomy",
                  size: str = "pipeline", randomise: float = 0.0) -> list[str]:
    """Write ``cases`` phantoms (``dataset_case`` 0, 1, …: see it for the arguments) as an MSD Task03_Liver folder
    (``dataset.json``, ``imagesTr``, ``labelsTr``). Returns the case ids. Settings are checked before anything is
    written (``check_settings``)."""
    check_settings(generator, size, randomise)
    if generator == "legacy":  # as before there were two generators: a legacy data set is written byte for byte
        description = f"Synthetic abdominal CT phantoms (liverseg synth, seed {seed})"
    else:
        description = (f"Synthetic abdominal CT phantoms (liverseg synth, generator {anatomy.VERSION}, size {size}, "
                       f"randomise {randomise:g}, seed {seed})")
    return _write_msd_folder(Path(out), lambda i: dataset_case(seed, i, generator, size, matrix, randomise), cases,
                             description)


def write_msd_cases(out: Path, slices: list[int], seed: int) -> list[str]:
    """Write one Decathlon-size phantom per entry of ``slices`` (its slice count, on a 512x512 grid) as an MSD
    Task03_Liver folder, for memory and time measurements at real size. Case ``i`` depends only on ``(seed, i,
    slices[i])``. Returns the case ids.

    The phantoms come from the anatomy generator (``data.anatomy``, ``msd`` size with the slice count given), which
    paints a grid slab by slab: a case needs little more than its int16 image and uint8 label. Measured on 2 cores
    (``/usr/bin/time -v``, the NIfTI writing included): a 987-slice case (259 M voxels) peaks at 1.0 GiB resident
    and takes about 40 s; the legacy ``make_phantom``, with whole-grid float32 arrays, peaks at 3.6 GiB for 300
    slices of that matrix, about 12 GiB for 987 (docs/BENCHMARKS.md, ``make bench-synth``).
    """
    def draw(i: int) -> Phantom:
        return anatomy.make_phantom(np.random.default_rng([seed, i, slices[i]]), size="msd", slices=slices[i])

    description = f"Decathlon-size phantoms (liverseg synth --msd-slices, generator {anatomy.VERSION}, seed {seed})"
    return _write_msd_folder(Path(out), draw, len(slices), description)


def _write_msd_folder(out: Path, draw: Callable[[int], Phantom], cases: int, description: str) -> list[str]:
    """Draw case ``i`` with ``draw(i)`` and write it, one case in memory at a time; then ``dataset.json``."""
    import nibabel as nib

    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(cases):
        phantom = draw(i)
        case_id = f"liver_{i}"
        for folder, array in (("imagesTr", phantom.image), ("labelsTr", phantom.label)):
            img = nib.Nifti1Image(array, phantom.affine)
            img.header.set_xyzt_units("mm", "sec")
            img.header.set_qform(phantom.affine, code=1)
            img.header.set_sform(phantom.affine, code=1)
            nib.save(img, out / folder / f"{case_id}.nii.gz")
        del phantom
        ids.append(case_id)
    dataset = {
        "name": "LiverSynthetic",
        "description": description,
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": len(ids),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids],
        "test": [],
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    return ids
