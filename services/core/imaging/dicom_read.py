"""DICOM CT series → volume: find the series, order the slices in space, check the stack, decode to HU.

Ordering is by position along the slice normal (ImagePositionPatient · (row × column direction)), never by file
name or instance number. The stack must be one orientation, untilted, without duplicate or missing slices and
with even spacing (within ``SPACING_TOL``) before it becomes a volume; each problem is an ``InputError`` naming
the file. Compressed transfer syntaxes decode through pydicom's handlers (pylibjpeg for JPEG/JPEG 2000/JPEG-LS,
built-in RLE and deflate).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ..errors import InputError
from .geometry import Volume, affine_from_slices

# Relative spread of slice steps accepted as "even"; beyond it the stack is not a regular grid.
SPACING_TOL = 0.01
# Orientation cosines equal within this are one orientation (they are stored rounded).
ORIENTATION_TOL = 1e-4
# A step between slices this many times the typical one means slices are missing.
GAP_FACTOR = 1.5
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"


@dataclass
class SliceHeader:
    """One file's header, with its geometry parsed."""

    path: Path
    ds: Dataset
    orientation: np.ndarray   # (6,) row then column direction cosines, LPS
    position: np.ndarray      # (3,) ImagePositionPatient, LPS mm
    pixel_spacing: np.ndarray  # (2,) [Δrow, Δcol] mm

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.orientation[:3], self.orientation[3:])

    @property
    def series_key(self) -> tuple[str, ...]:
        """Study + Series UIDs; when either is empty, Frame of Reference + grid shape + orientation instead."""
        study = str(getattr(self.ds, "StudyInstanceUID", "") or "")
        series = str(getattr(self.ds, "SeriesInstanceUID", "") or "")
        if study and series:
            return ("uid", study, series)
        frame = str(getattr(self.ds, "FrameOfReferenceUID", "") or "")
        return ("geometry", frame, str(self.ds.Rows), str(self.ds.Columns),
                *(f"{v:.4f}" for v in self.orientation), *(f"{v:.4f}" for v in self.pixel_spacing))


@dataclass
class SeriesReport:
    """What a series check found: counts, spacing and the problems that stop it from being a volume."""

    n_slices: int
    slice_spacing: float
    slice_thickness: float | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _floats(ds: Dataset, name: str, n: int, path: Path) -> np.ndarray:
    value = getattr(ds, name, None)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([])
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"missing or malformed {name}", file=path.name)
    return arr


def read_header(path: Path) -> SliceHeader:
    """Parse one file's header (pixels are read later). Refuses anything that is not a single-frame
    grayscale CT image."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False, defer_size="1 KB")
    except InvalidDicomError:
        raise InputError("not a DICOM file", file=path.name) from None
    except Exception as exc:  # truncated or garbled files surface as many exception types
        raise InputError(f"unreadable DICOM: {type(exc).__name__}: {exc}", file=path.name) from None
    sop_class = str(getattr(ds, "SOPClassUID", "") or getattr(ds.file_meta, "MediaStorageSOPClassUID", ""))
    modality = str(getattr(ds, "Modality", ""))
    if sop_class == ENHANCED_CT_STORAGE or int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        raise InputError("multi-frame (enhanced) CT is not supported; export single-frame slices",
                         file=path.name)
    if modality != "CT" or (sop_class and sop_class != CT_IMAGE_STORAGE):
        raise InputError(f"not a CT image (Modality {modality or 'missing'}, SOP class {sop_class or 'missing'})",
                         file=path.name)
    if int(getattr(ds, "SamplesPerPixel", 1)) != 1:
        raise InputError(f"not grayscale ({ds.SamplesPerPixel} samples per pixel, "
                         f"{getattr(ds, 'PhotometricInterpretation', '?')})", file=path.name)
    if "PixelData" not in ds:
        raise InputError("no pixel data", file=path.name)
    for name in ("Rows", "Columns"):
        if int(getattr(ds, name, 0) or 0) < 1:
            raise InputError(f"missing {name}", file=path.name)
    orientation = _floats(ds, "ImageOrientationPatient", 6, path)
    norms = np.linalg.norm(orientation.reshape(2, 3), axis=1)
    if np.any(np.abs(norms - 1) > 1e-2) or abs(orientation[:3] @ orientation[3:]) > 1e-2:
        raise InputError("ImageOrientationPatient is not two orthogonal unit vectors", file=path.name)
    orientation = np.concatenate([orientation[:3] / norms[0], orientation[3:] / norms[1]])
    spacing = _floats(ds, "PixelSpacing", 2, path)
    if spacing.min() <= 0:
        raise InputError(f"PixelSpacing {spacing.tolist()} is not positive", file=path.name)
    return SliceHeader(path=path, ds=ds, orientation=orientation,
                       position=_floats(ds, "ImagePositionPatient", 3, path), pixel_spacing=spacing)


def read_headers(paths: Iterable[Path]) -> list[SliceHeader]:
    return [read_header(p) for p in sorted(Path(p) for p in paths)]


def split_series(headers: Sequence[SliceHeader]) -> list[list[SliceHeader]]:
    """Headers grouped into series (see ``SliceHeader.series_key``), in first-file order."""
    series: dict[tuple[str, ...], list[SliceHeader]] = {}
    for h in headers:
        series.setdefault(h.series_key, []).append(h)
    return list(series.values())


def single_series(headers: Sequence[SliceHeader]) -> list[SliceHeader]:
    """The one series in a case folder, or an ``InputError`` listing what was mixed in."""
    series = split_series(headers)
    if not series:
        raise InputError("no DICOM files")
    if len(series) > 1:
        sizes = ", ".join(f"{len(s)} slices starting {s[0].path.name}" for s in series)
        raise InputError(f"{len(series)} series mixed in one folder ({sizes}); give each series its own folder")
    return series[0]


def sort_by_position(headers: Sequence[SliceHeader]) -> list[SliceHeader]:
    normal = headers[0].normal
    return sorted(headers, key=lambda h: float(h.position @ normal))


def check_stack(ordered: Sequence[SliceHeader]) -> SeriesReport:
    """Check slices (already in stack order) form a regular grid; problems are collected, not raised."""
    first = ordered[0]
    problems, notes = [], []
    for h in ordered[1:]:
        if np.max(np.abs(h.orientation - first.orientation)) > ORIENTATION_TOL:
            problems.append(f"mixed orientations: {h.path.name} differs from {first.path.name}")
            break
        if (h.ds.Rows, h.ds.Columns) != (first.ds.Rows, first.ds.Columns) or \
                np.max(np.abs(h.pixel_spacing - first.pixel_spacing)) > 1e-4:
            problems.append(f"mixed pixel grids: {h.path.name} differs from {first.path.name}")
            break
    thickness = getattr(first.ds, "SliceThickness", None)
    thickness = float(thickness) if thickness not in (None, "") else None
    if len(ordered) < 2:
        return SeriesReport(len(ordered), thickness or 1.0, thickness, problems, notes)
    normal = first.normal
    offsets = np.array([h.position - first.position for h in ordered])
    along = offsets @ normal
    # A stack may run against the normal (listing order): measure steps in its own direction.
    direction = 1.0 if along[-1] >= along[0] else -1.0
    steps = np.diff(along) * direction
    typical = float(np.median(steps))
    dupes = [ordered[i + 1].path.name for i in np.flatnonzero(np.abs(steps) < 1e-3)]
    if dupes:
        problems.append(f"duplicate slice positions: {', '.join(dupes[:5])}")
    elif abs(typical) < 1e-6:
        problems.append("slices do not advance along their normal")
    else:
        gaps = np.flatnonzero(steps > GAP_FACTOR * typical)
        if gaps.size:
            problems.append(f"missing slices: gap of {steps[gaps[0]]:.3f} mm (typical {typical:.3f} mm) after "
                            f"{ordered[gaps[0]].path.name}")
        elif np.any(steps <= 0):
            problems.append("slices go back and forth along the normal (not one contiguous stack in this order)")
        elif (steps.max() - steps.min()) > SPACING_TOL * typical:
            problems.append(f"uneven slice spacing: {steps.min():.4f}–{steps.max():.4f} mm")
        # Each slice should sit on the line through the first along the normal; off it means a tilted gantry.
        lateral = np.linalg.norm(offsets - along[:, None] * normal[None, :], axis=1)
        if lateral.max() > 1e-2 * max(1.0, abs(along[-1])) and lateral.max() > 0.05:
            tilt = np.degrees(np.arctan2(lateral[-1], abs(along[-1])))
            problems.append(f"gantry tilt of {tilt:.2f} degrees (slices shifted sideways along the stack); "
                            "resample to an orthogonal grid first")
    if thickness and not problems and thickness > typical * 1.01:
        notes.append(f"overlapping slices: thickness {thickness} mm > spacing {typical:.3f} mm")
    return SeriesReport(len(ordered), typical, thickness, problems, notes)


def _hu(h: SliceHeader) -> np.ndarray:
    try:
        pixels = h.ds.pixel_array
    except Exception as exc:  # codec missing, truncated or corrupt pixel data
        raise InputError(f"pixel data cannot be decoded: {type(exc).__name__}: {exc}", file=h.path.name) from None
    expected = (int(h.ds.Rows), int(h.ds.Columns))
    if pixels.shape != expected:
        raise InputError(f"pixel data has shape {pixels.shape}, header says {expected}", file=h.path.name)
    slope = float(getattr(h.ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(h.ds, "RescaleIntercept", 0) or 0)
    if slope == 1 and intercept == int(intercept):
        # Widen before adding the intercept: int16 + intercept can overflow.
        return pixels.astype(np.int32) + int(intercept)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def stack_to_volume(ordered: Sequence[SliceHeader]) -> Volume:
    """Decode slices (in stack order, already checked) into a volume whose first slice is ``ordered[0]``.

    HU come back as int16 when every slice has integral rescaling and the values fit, else float32.
    """
    first = ordered[0]
    slices = [_hu(h) for h in ordered]
    data = np.stack(slices, axis=-1)  # (rows, cols, k)
    if data.dtype.kind == "i" and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    elif data.dtype.kind == "i":
        data = data.astype(np.float32)
    array = np.ascontiguousarray(np.transpose(data, (1, 0, 2)))  # (cols=i, rows=j, k)
    if len(ordered) > 1:
        step_vec = (ordered[-1].position - first.position) / (len(ordered) - 1)
    else:
        thickness = float(getattr(first.ds, "SliceThickness", 1.0) or 1.0)
        step_vec = first.normal * thickness
    affine = affine_from_slices(first.orientation, first.pixel_spacing, first.position, step_vec)
    return Volume(array=array, affine=affine)


def series_to_volume(paths: Iterable[Path]) -> tuple[Volume, SeriesReport, list[SliceHeader]]:
    """Read a one-series folder's files into a volume ordered along the slice normal."""
    ordered = sort_by_position(single_series(read_headers(paths)))
    report = check_stack(ordered)
    if report.problems:
        raise InputError("; ".join(report.problems))
    return stack_to_volume(ordered), report, ordered
