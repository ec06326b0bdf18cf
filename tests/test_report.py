"""Overlays follow the radiological convention whatever the stored orientation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from liverseg.imaging.geometry import Volume
from liverseg.report import overlay_pngs


@pytest.mark.parametrize("flips", [(False, False, False), (True, True, False), (True, False, True)])
def test_patient_right_is_image_left_anterior_and_superior_are_up(flips):
    """A mask in the patient's right-anterior-superior corner shows top-left (axial: right on the left, anterior up;
    coronal: right on the left, superior up) and, in the sagittal view, top-left (anterior on the left)."""
    n = 40
    signs = np.where(flips, -1.0, 1.0)
    affine = np.diag([*signs, 1.0])
    affine[:3, 3] = -signs * (n - 1) / 2
    image = np.zeros((n, n, n), dtype=np.int16)
    mask = np.zeros((n, n, n), dtype=np.uint8)
    # World RAS corner (+x right, +y anterior, +z superior): indices at the positive end of each world axis.
    corner = tuple(slice(n - 12, n) if s > 0 else slice(0, 12) for s in signs)
    mask[corner] = 1
    for view, png in overlay_pngs(Volume(image, affine), mask, height=n).items():
        rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        rows, cols = np.nonzero(rgb[..., 0] - rgb[..., 1] > 40)  # the liver tint, not the gray background
        assert rows.size, f"{view}: no overlay drawn"
        assert rows.mean() < rgb.shape[0] / 2, f"{view}: the marker should be in the top half"
        assert cols.mean() < rgb.shape[1] / 2, f"{view}: the marker should be in the left half"
