"""What a trained model does on the real CT beside the repository (``../shared/data``): the check that phantoms
cannot give.

- ``dcmqi_ct3slice_liver``: 3 real, unenhanced slices with a human liver label. Segmented through the normal
  inference path (which pads the 3-slice input to the network's patch), Dice at the study's own grid.
- ``tcia_pancreas_ct_cb001_dicom``: a real 134-slice contrast CT from the lung bases' top to the pelvis, no label.
  The predicted liver volume (an adult liver is about 1,200–2,000 ml), two label-free plausibility figures of
  the mask (see ``mask_geography``) and a montage of overlays for a person to look at.

Neither scan is a benchmark to tune to (one has 3 slices, the other no label); together they say whether a model
transfers to real anatomy at all. ``liverseg run`` prints these figures after its summary, ``make bench-quality``
for each of its modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liverseg.imaging.geometry import Volume

__all__ = ["DCMQI", "TCIA", "RealCheck", "body_box", "body_mask", "check_model", "mask_geography", "montage",
           "shared_data"]

DCMQI = "dcmqi_ct3slice_liver"
TCIA = "tcia_pancreas_ct_cb001_dicom"
# Body outline for the geography figures: above this HU is patient (or table), below is air.
BODY_HU = -300.0
BODY_STEP = 4  # the body is found on every 4th voxel in-plane and every 2nd slice: plenty for its bounding box


def shared_data() -> Path:
    """``../shared/data`` beside the repository (the checkout's parent folder), where the real CT lives."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass(frozen=True)
class RealCheck:
    """Figures of one model on the real scans; ``None`` where a scan is not on this machine."""

    dcmqi_dice: float | None
    tcia_liver_ml: float | None
    tcia_left_fraction: float | None
    tcia_height_mm: float | None
    overlay: Path | None

    def line(self) -> str:
        def fmt(value: float | None, spec: str) -> str:
            return "n/a" if value is None else format(value, spec)

        return (f"dcmqi Dice {fmt(self.dcmqi_dice, '.4f')}  TCIA liver {fmt(self.tcia_liver_ml, '.0f')} ml "
                f"(far-left {fmt(self.tcia_left_fraction, '.1%')}, height {fmt(self.tcia_height_mm, '.0f')} mm)")


def body_mask(array: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """The patient in a CT array (HU) on a coarse grid (every ``BODY_STEP``-th voxel in-plane, every 2nd slice)
    and that step: the largest connected region above ``BODY_HU`` once thin things (the table's plates, a few mm
    thick) are opened away, so neither the table under the patient nor the air around counts."""
    from scipy import ndimage

    step = (BODY_STEP, BODY_STEP, 2)
    coarse = np.asarray(array)[::step[0], ::step[1], ::step[2]] > BODY_HU
    coarse = ndimage.binary_opening(coarse, structure=np.ones((3, 3, 1), dtype=bool))
    labels, n = ndimage.label(coarse)
    if n == 0:
        return coarse, step
    biggest = np.argmax(ndimage.sum_labels(coarse, labels, np.arange(1, n + 1))) + 1
    return labels == biggest, step


def body_box(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxel index bounds (low, high inclusive, per axis) of ``body_mask``; the whole array when no body."""
    body, step = body_mask(array)
    if not body.any():
        return np.zeros(3, int), np.array(array.shape) - 1
    where = np.argwhere(body)
    return where.min(axis=0) * step, np.minimum(where.max(axis=0) * step, np.array(array.shape) - 1)


def mask_geography(mask: np.ndarray, image: Volume) -> tuple[float, float]:
    """Two label-free signs that a liver mask is in the wrong place.

    Args:
        mask: (i, j, k) bool/uint8 liver mask on ``image``'s grid (axis-aligned affine).
        image: the CT in HU, RAS+ affine.

    Returns:
        ``(far_left, height_mm)``: the share of the mask's voxels more than a quarter of the body's width to the
        patient's left of the body's midline, both measured on the slices the mask is on (the left lobe rarely
        reaches that far; spleen and stomach live there), and the mask's craniocaudal extent in mm (a liver is
        about 130–200 mm tall; a mask that runs up into the heart or down into the pelvis is taller).
        ``(0, 0)`` for an empty mask.
    """
    if not mask.any():
        return 0.0, 0.0
    world_x = image.affine[0, 0] * np.arange(mask.shape[0]) + image.affine[0, 3]
    world_z = image.affine[2, 2] * np.arange(mask.shape[2]) + image.affine[2, 3]
    body, step = body_mask(image.array)
    levels = np.flatnonzero(mask[:, :, ::step[2]].any(axis=(0, 1)) & body.any(axis=(0, 1)))
    if levels.size == 0:
        return 0.0, 0.0
    far_left = 0.0
    for k in levels:
        columns = np.flatnonzero(body[:, :, k].any(axis=1)) * step[0]
        left, right = np.sort(world_x[[columns[0], columns[-1]]])
        midline, width = (left + right) / 2, right - left
        per_x = mask[:, :, k * step[2]].sum(axis=1)
        far_left += per_x[world_x < midline - width / 4].sum()  # RAS+: smaller x is the patient's left
    far_left /= mask[:, :, ::step[2]][:, :, levels].sum()
    zs = world_z[mask.any(axis=(0, 1))]
    return float(far_left), float(zs.max() - zs.min() + abs(image.affine[2, 2]))


def montage(image: Volume, mask: np.ndarray, path: Path, axial_levels: int = 8) -> Path:
    """Overlays for a person to look at: a top row of three coronal slices (front, middle and back of the body),
    a bottom row of ``axial_levels`` axial slices spread over the scan from its top; the liver mask in red, drawn
    as the report's overlays are (``report.view_picture``)."""
    from PIL import Image

    from liverseg.report import ras_arrays, view_picture

    hu, liver, zooms = ras_arrays(image, mask)
    low, high = body_box(hu)
    back, front = low[1], high[1]
    top = [view_picture(hu, liver, zooms, "coronal", j, 320)
           for j in np.linspace(back, front, 5)[1:-1][::-1].round().astype(int)]
    bottom = [view_picture(hu, liver, zooms, "axial", k, 200)
              for k in np.linspace(hu.shape[2] - 1, 0, axial_levels + 2)[1:-1].round().astype(int)]
    width = max(sum(t.width for t in top), sum(t.width for t in bottom))
    sheet = Image.new("RGB", (width, 320 + 200))
    for row, y in ((top, 0), (bottom, 320)):
        x = 0
        for t in row:
            sheet.paste(t, (x, y))
            x += t.width
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def check_model(model_bytes: bytes, out: Path | None = None, data: Path | None = None) -> RealCheck:
    """Run a model file's bytes on both real scans (those present under ``data``, default ``shared_data()``);
    the TCIA overlays and mask go to ``out`` when given."""
    import torch

    from liverseg.imaging import dicom_read, dicom_volume, nifti
    from liverseg.ml.metrics import dice
    from liverseg.ml.modelfile import LoadedModel
    from liverseg.report import liver_ml

    data = data or shared_data()
    model = LoadedModel.from_bytes(model_bytes, torch.device("cpu"))
    dcmqi_dice = None
    if (data / DCMQI).exists():
        image = nifti.load(data / DCMQI / "ct_from_dicom_sitk.nii.gz")
        truth = nifti.load(data / DCMQI / "liver_mask.nii.gz", kind="label").array > 0
        dcmqi_dice = round(dice(model.segment(image).mask > 0, truth), 4)
    ml = left = height = overlay = None
    if (data / TCIA).exists():
        image, _, _ = dicom_volume.series_to_volume(dicom_read.series_files(data / TCIA / "dicom"))
        mask = model.segment(image).mask
        ml = liver_ml(mask, image)
        left, height = mask_geography(mask, image)
        left, height = round(left, 4), round(height, 1)
        if out is not None:
            overlay = montage(image, mask, Path(out) / "tcia_overlays.png")
            nifti.save(Path(out) / "tcia_mask.nii.gz", Volume(mask, image.affine))
    return RealCheck(dcmqi_dice, ml, left, height, overlay)
