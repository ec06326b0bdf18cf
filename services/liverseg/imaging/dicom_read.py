"""DICOM CT series: find the series' slices, order them in space, check the stack (``dicom_volume`` decodes it).

Ordering is by position along the slice normal (ImagePositionPatient · (row × column direction)), never by file
name or instance number. The stack must be one orientation, untilted, without duplicate or missing slices and
with even spacing (within ``SPACING_TOL``) before it becomes a volume; each problem is an ``InputError`` naming
the file.

Speed (see docs/DICOM.md): headers are scanned by ``dicom_scan`` from the first 16 KiB of each file, without
pydicom, and this module does not import numpy; ``read_native`` reads a slice's stored bytes as they are, for the
byte-copy path of ``dicom_volume.write_nifti``.

HU are ``stored value × RescaleSlope + RescaleIntercept``, whatever the Photometric Interpretation: MONOCHROME1
only tells a viewer to show low values white (PS3.3 C.7.6.3.1.2, applied after the modality transform), so it
does not change HU and is not inverted here.
"""

from __future__ import annotations

import itertools
import math
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverseg.errors import InputError
from liverseg.imaging import dicom_scan
from liverseg.imaging.geometry import Affine, Vec, affine_from_slices, cross, dot, norm, scaled, sub

# Relative spread of slice steps accepted as "even"; beyond it the stack is not a regular grid.
SPACING_TOL = 0.01
# Orientation cosines equal within this are one orientation (they are stored rounded).
ORIENTATION_TOL = 1e-4
# A step between slices this many times the typical one means slices are missing.
GAP_FACTOR = 1.5
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
# Bytes read for a header scan; a longer header (large private blocks) makes the reader take the whole file.
HEAD_BYTES = 16384

# Top-level tags the reader needs (group << 16 | element).
MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE = 0x00020002, 0x00020003
SOP_CLASS, SOP_INSTANCE, MODALITY, SERIES_DESCRIPTION = 0x00080016, 0x00080018, 0x00080060, 0x0008103E
SLICE_THICKNESS, GANTRY_TILT = 0x00180050, 0x00181120
STUDY_UID, SERIES_UID, SERIES_NUMBER, INSTANCE_NUMBER = 0x0020000D, 0x0020000E, 0x00200011, 0x00200013
POSITION, ORIENTATION, FRAME_OF_REFERENCE = 0x00200032, 0x00200037, 0x00200052
SAMPLES, PHOTOMETRIC, FRAMES, ROWS, COLUMNS = 0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011
PIXEL_SPACING, BITS_ALLOCATED, BITS_STORED, PIXEL_REPRESENTATION = 0x00280030, 0x00280100, 0x00280101, 0x00280103
RESCALE_INTERCEPT, RESCALE_SLOPE, MODALITY_LUT = 0x00281052, 0x00281053, 0x00283000
WANTED = frozenset({
    MEDIA_SOP_CLASS, MEDIA_SOP_INSTANCE, SOP_CLASS, SOP_INSTANCE, MODALITY, SERIES_DESCRIPTION, SLICE_THICKNESS,
    GANTRY_TILT, STUDY_UID, SERIES_UID, SERIES_NUMBER, INSTANCE_NUMBER, POSITION, ORIENTATION, FRAME_OF_REFERENCE,
    SAMPLES, PHOTOMETRIC, FRAMES, ROWS, COLUMNS, PIXEL_SPACING, BITS_ALLOCATED, BITS_STORED, PIXEL_REPRESENTATION,
    RESCALE_INTERCEPT, RESCALE_SLOPE, MODALITY_LUT})


@dataclass
class SliceHeader:
    """One file's header, with what the reader needs parsed. ``ds`` gives the full pydicom data set (slow)."""

    path: Path
    orientation: tuple[float, ...]     # 6: row then column direction cosines, LPS
    position: Vec                      # ImagePositionPatient, LPS mm
    pixel_spacing: tuple[float, float]  # [Δrow, Δcol] mm
    rows: int
    columns: int
    sop_instance_uid: str      # from the data set, else from the file meta information
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    series_number: str
    series_description: str
    instance_number: str
    slice_thickness: float | None
    gantry_tilt: float
    slope: float
    intercept: float
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    transfer_syntax: str
    pixel_offset: int | None   # where native pixel data starts in the file; None: decode with pydicom
    pixel_length: int | None
    _dataset: Any = field(default=None, repr=False)

    @property
    def ds(self):
        """The whole data set, read with pydicom on first use (kept when the reader already needed it)."""
        if self._dataset is None:
            import pydicom

            self._dataset = pydicom.dcmread(self.path)
        return self._dataset

    def metadata(self):
        """The data set without its pixel data: what a derived object (a SEG) needs of its source slice, read
        afresh each call and not kept, so a large series is not held twice."""
        if self._dataset is not None:
            return self._dataset
        import pydicom

        return pydicom.dcmread(self.path, stop_before_pixels=True)

    @property
    def normal(self) -> Vec:
        return cross(self.orientation[:3], self.orientation[3:])

    @property
    def series_key(self) -> tuple[str, ...]:
        """Study + Series UIDs; when either is empty, Frame of Reference + grid shape + orientation instead."""
        if self.study_uid and self.series_uid:
            return ("uid", self.study_uid, self.series_uid)
        # + 0.0 after rounding: a cosine of -1e-7 on one slice and +1e-7 on the next must not split the series
        return ("geometry", self.frame_of_reference_uid, str(self.rows), str(self.columns),
                *(f"{round(v, 4) + 0.0:.4f}" for v in (*self.orientation, *self.pixel_spacing)))


class NotASlice(InputError):
    """The file is no slice of a CT image series: not DICOM at all (a README, ``.DS_Store``, ``Thumbs.db``), or a
    DICOM object of another kind (DICOMDIR, structured report, presentation state, SEG, secondary capture,
    multi-frame). A folder's reader skips such files and names them; a damaged CT slice is an error instead."""


@dataclass(frozen=True)
class Skipped:
    """A file a folder's reader left out, and why (``NotASlice``'s reason)."""

    file: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "reason": self.reason}


@dataclass
class SeriesReport:
    """What a series check found: counts, spacing, the problems that stop it from being a volume, and the files
    of its folder that were skipped as no CT slices."""

    n_slices: int
    slice_spacing: float
    slice_thickness: float | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


# -- header --------------------------------------------------------------------------------------------------
class _ScanFields:
    """Typed access to values found by ``dicom_scan``."""

    def __init__(self, values: dict[int, bytes]):
        self.values = values

    def has(self, tag: int) -> bool:
        return tag in self.values

    def text(self, tag: int) -> str:
        return dicom_scan.text(self.values.get(tag))

    def us(self, tag: int) -> int | None:
        return dicom_scan.u16(self.values.get(tag))


class _DatasetFields:
    """The same access on a pydicom data set (the fallback path)."""

    def __init__(self, ds):
        self.ds = ds

    def _value(self, tag: int):
        source = self.ds.file_meta if tag >> 16 == 0x0002 else self.ds
        element = source.get(tag) if source is not None else None
        return None if element is None else element.value

    def has(self, tag: int) -> bool:
        return self._value(tag) is not None

    def text(self, tag: int) -> str:
        value = self._value(tag)
        if value is None:
            return ""
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return "\\".join(str(v) for v in value)
        return str(value).strip("\0 ")

    def us(self, tag: int) -> int | None:
        value = self._value(tag)
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = value[0] if len(value) else None
        return None if value in (None, "") else int(value)


def _floats(fields, tag: int, name: str, n: int, file: str) -> list[float]:
    # Plain floats: numpy's per-call overhead on 2-6 values would cost more than the whole header scan.
    try:
        values = [float(v) for v in fields.text(tag).split("\\")]
    except ValueError:
        values = []
    if len(values) != n or not all(math.isfinite(v) for v in values):
        raise InputError(f"missing or malformed {name}", file=file)
    return values


def _number(fields, tag: int, name: str, default: float | None, file: str) -> float | None:
    value = fields.text(tag)
    if not value:
        return default
    try:
        number = float(value.split("\\")[0])
    except ValueError:
        raise InputError(f"malformed {name} {value!r}", file=file) from None
    if not math.isfinite(number):
        raise InputError(f"{name} is not finite", file=file)
    return number


def _header(path: Path, fields, transfer_syntax: str, pixel_offset: int | None, pixel_length: int | None,
            dataset=None) -> SliceHeader:
    """Check that the file is a single-frame grayscale CT image and parse its geometry and pixel format."""
    file = path.name
    sop_class = fields.text(SOP_CLASS) or fields.text(MEDIA_SOP_CLASS)
    modality = fields.text(MODALITY)
    frames = fields.text(FRAMES)
    if sop_class == ENHANCED_CT_STORAGE or (frames and frames.isdigit() and int(frames) > 1):
        raise NotASlice(f"multi-frame CT ({frames or '?'} frames, SOP class {sop_class}) is not supported; "
                         "export single-frame slices (CT Image Storage)", file=file)
    if modality != "CT" or sop_class != CT_IMAGE_STORAGE:
        raise NotASlice(f"not a CT image (Modality {modality or 'missing'}, SOP class {sop_class or 'missing'})",
                         file=file)
    samples = fields.us(SAMPLES)
    photometric = fields.text(PHOTOMETRIC)
    if samples not in (None, 1) or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise InputError(f"not grayscale ({samples} samples per pixel, {photometric or 'no'} photometric "
                         "interpretation)", file=file)
    if pixel_length is None and pixel_offset is None:
        raise InputError("no pixel data", file=file)
    rows, columns = fields.us(ROWS) or 0, fields.us(COLUMNS) or 0
    if rows < 1 or columns < 1:
        raise InputError(f"missing Rows/Columns ({rows}x{columns})", file=file)
    bits_allocated = fields.us(BITS_ALLOCATED)
    if bits_allocated not in (8, 16, 32):
        raise InputError(f"Bits Allocated {bits_allocated} is not supported (8, 16 or 32)", file=file)
    bits_stored = fields.us(BITS_STORED) or bits_allocated
    if not 1 <= bits_stored <= bits_allocated:
        raise InputError(f"Bits Stored {bits_stored} does not fit Bits Allocated {bits_allocated}", file=file)
    if fields.has(MODALITY_LUT) and not fields.text(RESCALE_SLOPE):
        raise InputError("HU given by a Modality LUT Sequence, not Rescale Slope/Intercept: not supported", file=file)
    cosines = _floats(fields, ORIENTATION, "ImageOrientationPatient", 6, file)
    row, col = cosines[:3], cosines[3:]
    norm_row, norm_col = math.hypot(*row), math.hypot(*col)
    if abs(norm_row - 1) > 1e-2 or abs(norm_col - 1) > 1e-2 or abs(dot(row, col)) > 1e-2:
        raise InputError("ImageOrientationPatient is not two orthogonal unit vectors", file=file)
    orientation = (*(v / norm_row for v in row), *(v / norm_col for v in col))
    spacing = _floats(fields, PIXEL_SPACING, "PixelSpacing", 2, file)
    if min(spacing) <= 0:
        raise InputError(f"PixelSpacing {spacing} is not positive", file=file)
    slope = _number(fields, RESCALE_SLOPE, "RescaleSlope", 1.0, file)
    if slope == 0:
        raise InputError("RescaleSlope is 0", file=file)
    thickness = _number(fields, SLICE_THICKNESS, "SliceThickness", None, file)
    return SliceHeader(
        path=path, orientation=orientation,
        position=tuple(_floats(fields, POSITION, "ImagePositionPatient", 3, file)),
        pixel_spacing=tuple(spacing), rows=rows, columns=columns,
        sop_instance_uid=fields.text(SOP_INSTANCE) or fields.text(MEDIA_SOP_INSTANCE),
        study_uid=fields.text(STUDY_UID), series_uid=fields.text(SERIES_UID),
        frame_of_reference_uid=fields.text(FRAME_OF_REFERENCE), series_number=fields.text(SERIES_NUMBER),
        series_description=fields.text(SERIES_DESCRIPTION), instance_number=fields.text(INSTANCE_NUMBER),
        slice_thickness=thickness if thickness and thickness > 0 else None,
        gantry_tilt=_number(fields, GANTRY_TILT, "GantryDetectorTilt", 0.0, file) or 0.0,
        slope=slope, intercept=_number(fields, RESCALE_INTERCEPT, "RescaleIntercept", 0.0, file),
        bits_allocated=bits_allocated, bits_stored=bits_stored, signed=fields.us(PIXEL_REPRESENTATION) == 1,
        photometric=photometric, transfer_syntax=transfer_syntax, pixel_offset=pixel_offset,
        pixel_length=pixel_length, _dataset=dataset)


def _read_with_pydicom(path: Path) -> SliceHeader:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size="64 KB")
    except InvalidDicomError:
        raise NotASlice("not a DICOM file", file=path.name) from None
    except Exception as exc:  # truncated or garbled files surface as many exception types
        raise InputError(f"unreadable DICOM: {type(exc).__name__}: {exc}", file=path.name) from None
    try:
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        has_pixels = "PixelData" in ds
        # Pixels of these data sets are decoded by pydicom (offset None), from this very data set.
        return _header(path, _DatasetFields(ds), ts, None, 0 if has_pixels else None, dataset=ds)
    except InputError:
        raise
    except Exception as exc:  # pydicom parses elements lazily: a garbled one (e.g. a bad VR) fails on access
        raise InputError(f"unreadable DICOM element: {type(exc).__name__}: {exc}", file=path.name) from None


def read_header(path: Path) -> SliceHeader:
    """Parse one file's header (pixels are read later). Refuses anything that is not a single-frame
    grayscale CT image, with an ``InputError`` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb", buffering=0) as fh:
            head = fh.read(HEAD_BYTES)
            size = os.fstat(fh.fileno()).st_size
            try:
                found = dicom_scan.scan(head, WANTED)
            except dicom_scan.Truncated:
                if size <= len(head):
                    raise
                found = None
            # A head that ends exactly between two elements scans cleanly without PixelData: only the rest of the
            # file tells whether it has any.
            if found is None or (found.pixel_offset is None and size > len(head)):
                head += fh.read()
                found = dicom_scan.scan(head, WANTED)
    except dicom_scan.Truncated as exc:
        raise InputError(f"file is truncated ({exc})", file=path.name) from None
    except dicom_scan.Unsupported:
        return _read_with_pydicom(path)
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", file=path.name) from None
    native = found.transfer_syntax in dicom_scan.NATIVE_LE and found.pixel_length != dicom_scan.UNDEFINED
    header = _header(path, _ScanFields(found.values), found.transfer_syntax,
                     found.pixel_offset if native else None,
                     found.pixel_length if found.pixel_offset is not None else None)
    if native:
        needed = header.rows * header.columns * header.bits_allocated // 8
        available = min(found.pixel_length, size - found.pixel_offset)
        if available < needed:
            raise InputError(f"pixel data is cut short: {available} bytes, {header.rows}x{header.columns} at "
                             f"{header.bits_allocated} bits needs {needed} (truncated or corrupt file)",
                             file=path.name)
    return header


def read_headers(paths: Iterable[Path]) -> list[SliceHeader]:
    return [read_header(p) for p in sorted(Path(p) for p in paths)]


def read_slices(paths: Iterable[Path]) -> tuple[list[SliceHeader], list[Skipped]]:
    """The headers of the CT slices among ``paths``, and every other file skipped with its reason (``NotASlice``),
    as dcm2niix and SimpleITK's series reader leave out what is not an image of the series. A damaged CT slice is
    still an ``InputError``; so is a folder with no CT slice at all, naming what it held instead."""
    headers, skipped = [], []
    paths = sorted(Path(p) for p in paths)
    for path in paths:
        try:
            headers.append(read_header(path))
        except NotASlice as exc:
            skipped.append(Skipped(path.name, exc.reason))
    if not paths:
        raise InputError("no DICOM files")
    if not headers:
        found = "; ".join(f"{s.file}: {s.reason}" for s in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise InputError(f"no CT image slices among {len(paths)} file{'s' * (len(paths) != 1)} ({found}{more})")
    return headers, skipped


def skipped_line(skipped: Sequence[Skipped], limit: int = 5) -> str:
    """One line naming the skipped files and why: ``skipped 2 files (no CT slices): a (why), b (why)``."""
    named = ", ".join(f"{s.file} ({s.reason})" for s in skipped[:limit])
    more = f" and {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"skipped {len(skipped)} file{'s' * (len(skipped) != 1)} (no CT slices): {named}{more}"


def series_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (recursively, sorted), hidden ones too: they are named when skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise InputError(f"no files in {folder}")
    return files


# -- series --------------------------------------------------------------------------------------------------
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
    return sorted(headers, key=lambda h: dot(h.position, normal))


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def check_stack(ordered: Sequence[SliceHeader]) -> SeriesReport:
    """Check slices (already in stack order) form a regular grid; problems are collected, not raised."""
    first = ordered[0]
    problems, notes = [], []
    for h in ordered[1:]:
        if max(abs(a - b) for a, b in zip(h.orientation, first.orientation, strict=True)) > ORIENTATION_TOL:
            problems.append(f"mixed orientations: {h.path.name} differs from {first.path.name}")
            break
        if (h.rows, h.columns) != (first.rows, first.columns) or \
                max(abs(a - b) for a, b in zip(h.pixel_spacing, first.pixel_spacing, strict=True)) > 1e-4:
            problems.append(f"mixed pixel grids: {h.path.name} differs from {first.path.name}")
            break
    thickness = first.slice_thickness
    if len(ordered) < 2:
        return SeriesReport(len(ordered), thickness or 1.0, thickness, problems, notes)
    normal = first.normal
    offsets = [sub(h.position, first.position) for h in ordered]
    along = [dot(o, normal) for o in offsets]
    # A stack may run against the normal (listing order): measure steps in its own direction.
    direction = 1.0 if along[-1] >= along[0] else -1.0
    steps = [(b - a) * direction for a, b in itertools.pairwise(along)]
    typical = _median(steps)
    dupes = [ordered[i + 1].path.name for i, step in enumerate(steps) if abs(step) < 1e-3]
    if dupes:
        problems.append(f"duplicate slice positions: {', '.join(dupes[:5])}"
                        f"{f' and {len(dupes) - 5} more' if len(dupes) > 5 else ''}")
    elif abs(typical) < 1e-6:
        problems.append("slices do not advance along their normal")
    else:
        gaps = [i for i, step in enumerate(steps) if step > GAP_FACTOR * typical]
        if gaps:
            problems.append(f"missing slices: gap of {steps[gaps[0]]:.3f} mm (typical {typical:.3f} mm) after "
                            f"{ordered[gaps[0]].path.name}")
        elif min(steps) <= 0:
            problems.append("slices go back and forth along the normal (not one contiguous stack in this order)")
        elif (max(steps) - min(steps)) > SPACING_TOL * typical:
            problems.append(f"uneven slice spacing: {min(steps):.4f}–{max(steps):.4f} mm")
        # Each slice should sit on the line through the first along the normal; off it means a tilted gantry.
        lateral = [norm(sub(o, scaled(normal, a))) for o, a in zip(offsets, along, strict=True)]
        if max(lateral) > 1e-2 * max(1.0, abs(along[-1])) and max(lateral) > 0.05:
            tilt = math.degrees(math.atan2(lateral[-1], abs(along[-1])))
            tag = f" (GantryDetectorTilt {first.gantry_tilt:g})" if first.gantry_tilt else ""
            problems.append(f"gantry tilt of {tilt:.2f} degrees{tag}: slices are shifted sideways along the "
                            "stack; resample to an orthogonal grid first")
    if not problems and first.gantry_tilt:
        notes.append(f"GantryDetectorTilt {first.gantry_tilt:g} degrees, but the slices are stacked along their "
                     "normal: an oblique, regular grid")
    if thickness and not problems and thickness > typical * 1.01:
        notes.append(f"overlapping slices: thickness {thickness:g} mm > spacing {typical:.3f} mm "
                     "(the volume uses the spacing)")
    return SeriesReport(len(ordered), typical, thickness, problems, notes)


def read_stack(paths: Iterable[Path]) -> tuple[list[SliceHeader], SeriesReport]:
    """A one-series folder's CT slices, ordered along the slice normal and checked (``InputError`` on a problem);
    the report names the files skipped as no CT slices (``read_slices``)."""
    headers, skipped = read_slices(paths)
    ordered = sort_by_position(single_series(headers))
    report = check_stack(ordered)
    if report.problems:
        raise InputError("; ".join(report.problems))
    report.skipped = skipped
    return ordered, report


def stack_affine(ordered: Sequence[SliceHeader]) -> Affine:
    """RAS+ affine of a checked stack whose first slice is ``ordered[0]``: (i, j, k) = (column, row, slice)."""
    first = ordered[0]
    if len(ordered) > 1:
        last, steps = ordered[-1].position, len(ordered) - 1
        step_vec = tuple((last[c] - first.position[c]) / steps for c in range(3))
    else:
        step_vec = scaled(first.normal, first.slice_thickness or 1.0)
    return affine_from_slices(first.orientation, first.pixel_spacing, first.position, step_vec)


# -- pixels --------------------------------------------------------------------------------------------------
def read_native(h: SliceHeader, out) -> None:
    """Read one slice's stored values into ``out`` (a writable C-contiguous buffer of rows × columns values of the
    stored type: a numpy array or a bytearray), as they are in the file."""
    target = memoryview(out).cast("B")
    with open(h.path, "rb", buffering=0) as fh:
        fh.seek(h.pixel_offset)
        got = fh.readinto(target)
    if got != len(target):
        raise InputError(f"pixel data is cut short: {got} of {len(target)} bytes", file=h.path.name)


@dataclass(frozen=True)
class StoredForm:
    """How ``write_nifti`` stores a stack whose slices share one pixel format and one rescale: the stored values
    as voxels of ``dtype`` (numpy's notation), with the rescale as NIfTI ``scl_slope``/``scl_inter``."""

    dtype: str
    slope: float
    inter: float


def _float32_exact(value: float) -> bool:
    """NIfTI keeps scl_slope/scl_inter as float32: only a value that survives that is written as one."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0] == value
    except OverflowError:
        return False


def stored_form(ordered: Sequence[SliceHeader]) -> StoredForm | None:
    """The ``StoredForm`` of a stack, or None when its slices differ in pixel format or rescale (or the rescale is
    not exact in float32): then the NIfTI holds HU. Unsigned values with unused high bits fit the signed type of
    the same width, which is what they are stored as (dcm2niix does the same)."""
    formats = {(h.bits_allocated, h.bits_stored, h.signed) for h in ordered}
    rescales = {(h.slope, h.intercept) for h in ordered}
    if len(formats) != 1 or len(rescales) != 1:
        return None
    (bits, stored, signed), (slope, inter) = formats.pop(), rescales.pop()
    if not (_float32_exact(slope) and _float32_exact(inter)):
        return None
    kind = "i" if signed or stored < bits else "u"
    return StoredForm(f"{'|' if bits == 8 else '<'}{kind}{bits // 8}", slope, inter)
