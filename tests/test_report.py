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


def test_learning_curves_plot_loss_dice_and_learning_rate_per_epoch():
    from xml.etree import ElementTree

    from liverseg.report import ReportEntry, html_report, learning_curves_svg

    history = [{"epoch": e, "loss": 1.0 / e, "lr": 0.01 * (1 - e / 10)} for e in range(1, 7)]
    for h in history[1::2]:
        h["val_dice"] = 0.5 + h["epoch"] / 20
    svg = learning_curves_svg(history)
    lines = {p.get("class"): p.get("points").split() for p in ElementTree.fromstring(svg).iter()
             if p.tag.endswith("polyline")}
    assert {k: len(v) for k, v in lines.items()} == {"loss": 6, "val_dice": 3, "lr": 6}
    loss_y = [float(point.split(",")[1]) for point in lines["loss"]]
    assert loss_y == sorted(loss_y)  # a falling loss is drawn going down (SVG y grows downwards)
    page = html_report("run", [ReportEntry("c", {"dice": 0.9}, {})], ["note"], [svg])
    assert page.count("<svg") == 1 and "validation Dice" in page
