"""What people look at: overlay PNGs through the liver and a small HTML report with liver volume and scores.

Overlays are drawn in radiological convention on the study's own voxels, reoriented to RAS only for display:
axial (patient's right on the image's left, anterior up), coronal (right on the left, superior up), sagittal
(anterior on the left, superior up), with pixels stretched to their physical aspect ratio.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image

from liverseg.imaging.geometry import Volume, ras_view, spacing

VIEWS = ("axial", "coronal", "sagittal")
DISPLAY_WINDOW = (-160.0, 240.0)  # abdomen window (centre 40, width 400) in HU
LIVER_RGB = np.array([230, 60, 60], dtype=np.float32)


def _canonical(volume: Volume) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The array in RAS order as a view (nothing copied: a study can be large) and its voxel size per RAS axis."""
    array, xform = ras_view(volume)
    return array, spacing(np.asarray(volume.affine, dtype=np.float64) @ xform)


def _centre(mask: np.ndarray) -> np.ndarray:
    """The centre of mass of a 0/1 mask (voxel indices), from its three projections (no list of voxels)."""
    total = float(np.count_nonzero(mask))
    centre = []
    for axis in range(3):
        counts = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis))
        centre.append(float(np.dot(np.arange(counts.size), counts)) / total)
    return np.array(centre)


def _slice(array: np.ndarray, view: str, index: int) -> np.ndarray:
    """A 2D display array (rows top to bottom, columns left to right) from a RAS-ordered volume."""
    # RAS order: i grows toward the patient's right, j toward anterior, k toward superior.
    if view == "axial":      # rows: anterior -> posterior, columns: patient right -> left
        return array[::-1, ::-1, index].T
    if view == "coronal":    # rows: superior -> inferior, columns: patient right -> left
        return array[::-1, index, ::-1].T
    return array[index, ::-1, ::-1].T  # sagittal: rows superior -> inferior, columns anterior -> posterior


def _pixel_size(view: str, zooms: tuple[float, float, float]) -> tuple[float, float]:
    """(row height, column width) in mm for a view."""
    x, y, z = zooms
    return {"axial": (y, x), "coronal": (z, x), "sagittal": (z, y)}[view]


def ras_arrays(image: Volume, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The image and a mask on its grid in RAS order (views: nothing copied), and the voxel size per RAS axis."""
    hu, zooms = _canonical(image)
    liver, _ = _canonical(Volume(mask, image.affine))
    return hu, liver, zooms


def view_picture(hu: np.ndarray, liver: np.ndarray, zooms: tuple[float, float, float], view: str, index: int,
                 height: int) -> Image.Image:
    """One slice of RAS-ordered arrays (``ras_arrays``) as a picture ``height`` pixels tall: the abdomen window,
    the liver in red, pixels stretched to their physical aspect ratio.

    Args:
        view: ``axial``, ``coronal`` or ``sagittal``; ``index`` the slice along that view's RAS axis.
    """
    lo, hi = DISPLAY_WINDOW
    gray = np.clip((_slice(hu, view, index).astype(np.float32) - lo) / (hi - lo), 0, 1) * 255
    seg = _slice(liver, view, index) > 0
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[seg] = 0.55 * rgb[seg] + 0.45 * LIVER_RGB
    row_mm, col_mm = _pixel_size(view, zooms)
    rows, cols = seg.shape
    width = max(1, round(height * (cols * col_mm) / (rows * row_mm)))
    return Image.fromarray(rgb.astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)


def overlay_pngs(image: Volume, mask: np.ndarray, height: int = 320) -> dict[str, bytes]:
    """One PNG per view through the liver's centre of mass (the volume's centre when the mask is empty)."""
    hu, liver, zooms = ras_arrays(image, mask)
    centre = _centre(liver) if liver.any() else (np.array(hu.shape) - 1) / 2
    index = {"axial": round(centre[2]), "coronal": round(centre[1]), "sagittal": round(centre[0])}
    pngs = {}
    for view in VIEWS:
        buffer = io.BytesIO()
        view_picture(hu, liver, zooms, view, index[view], height).save(buffer, format="PNG")
        pngs[view] = buffer.getvalue()
    return pngs


def liver_ml(mask: np.ndarray, image: Volume) -> float:
    return round(float(mask.sum()) * float(np.prod(image.spacing)) / 1000.0, 1)


@dataclass
class ReportEntry:
    """One study in a report: its name, figures (liver ml, Dice…) and overlays (view -> PNG bytes or a path)."""

    name: str
    figures: Mapping[str, object]
    overlays: Mapping[str, bytes | str]


CURVES = (("loss", "training loss"), ("val_dice", "validation Dice"), ("lr", "learning rate"))
_MARGINS = (46, 22, 10, 28)  # left, top, right, bottom of a panel's plot area, in pixels


def _panel(points: list[tuple[float, float]], key: str, title: str, x0: float, width: int, height: int) -> str:
    """One curve: (epoch, value) points in a frame, with the first and last epoch and the value range marked."""
    left, top, right, bottom = _MARGINS
    parts = [f'<text x="{x0 + left}" y="14" font-size="12">{title}</text>',
             f'<rect x="{x0 + left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="none" stroke="#999"/>']
    if not points:
        return "".join(parts)
    (e_lo, e_hi), (v_lo, v_hi) = ((min(c), max(c)) for c in zip(*points, strict=True))
    xs = [x0 + left + (e - e_lo) / ((e_hi - e_lo) or 1) * (width - left - right) for e, _ in points]
    ys = [top + (1 - (v - v_lo) / ((v_hi - v_lo) or 1)) * (height - top - bottom) for _, v in points]
    parts.append(f'<polyline class="{key}" fill="none" stroke="#c33" stroke-width="1.5" '
                 f'points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))}"/>')
    parts += [f'<text x="{x0 + left - 4}" y="{y}" font-size="10" text-anchor="end">{v:.3g}</text>'
              for v, y in ((v_hi, top + 8), (v_lo, height - bottom))]
    parts += [f'<text x="{x}" y="{height - 10}" font-size="10" text-anchor="middle">{e:g}</text>'
              for e, x in ((e_lo, x0 + left), (e_hi, x0 + width - right))]
    parts.append(f'<text x="{x0 + (left + width - right) / 2:.0f}" y="{height - 10}" font-size="10" '
                 'text-anchor="middle">epoch</text>')
    return "".join(parts)


def learning_curves_svg(history: list[Mapping[str, float]], width: int = 300, height: int = 170) -> str:
    """Loss, validation Dice and learning rate per epoch (``metrics.json``'s records) as one inline SVG, a panel
    each. Written by hand: three polylines need no plotting library (matplotlib is no dependency of the images)."""
    panels = [_panel([(h["epoch"], float(h[key])) for h in history if h.get(key) is not None], key, title,
                     n * (width + 16), width, height) for n, (key, title) in enumerate(CURVES)]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * (width + 16)}" height="{height}" '
            f'font-family="sans-serif"><title>learning curves per epoch</title>{"".join(panels)}</svg>')


def html_report(title: str, entries: list[ReportEntry], notes: list[str] = (), figures: list[str] = ()) -> str:
    """A self-contained page: PNG bytes are embedded, strings are used as relative links; ``figures`` are inline
    SVG this module drew (``learning_curves_svg``), placed after the notes."""
    def img(src: bytes | str, alt: str) -> str:
        ref = f"data:image/png;base64,{base64.b64encode(src).decode()}" if isinstance(src, bytes) else src
        return f'<img src="{html.escape(ref)}" alt="{html.escape(alt)}" height="240">'

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
             "th:first-child,td:first-child{text-align:left}</style>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts += [f"<figure>{svg}</figure>" for svg in figures]
    keys = sorted({k for e in entries for k in e.figures})
    parts.append("<table><tr><th>study</th>" + "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "</tr>")
    for e in entries:
        cells = "".join(f"<td>{html.escape(str(e.figures.get(k, '')))}</td>" for k in keys)
        parts.append(f"<tr><td>{html.escape(e.name)}</td>{cells}</tr>")
    parts.append("</table>")
    for e in entries:
        parts.append(f"<h2>{html.escape(e.name)}</h2><p>"
                     + " ".join(img(e.overlays[v], f"{e.name} {v}") for v in VIEWS if v in e.overlays) + "</p>")
    return "\n".join(parts)
