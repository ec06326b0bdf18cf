"""NIfTI volume → DICOM CT Image Storage series (one file per slice), with exact geometry and HU.

**Modules.** Every file carries the mandatory modules of the CT Image IOD (PS3.3 A.3): Patient, General Study,
General Series, Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel, CT Image and SOP
Common, plus VOI LUT (a liver window). Type 2 attributes we cannot know (dates, sex, KVP) are present and empty:
inventing them would put false data in a clinical object. ``dciodvfy`` reports no error on them; the remaining
warnings are listed and justified in docs/DICOM.md.

**UIDs** are derived deterministically from a caller-supplied namespace (``uid_namespace``): the convert stage
uses ``run id | case | SHA-256 of the image file | code version``, the ``liverseg dicom from-nifti`` command
``cli | SHA-256 of the image (and label) file | code version [| --namespace]``. So a re-run writes byte-identical
files (idempotent: nothing changes, nothing is duplicated in a PACS), while two runs, two cases, two images or
two code versions never share a UID because their namespaces differ. They are ``2.25.`` + 128 bits of a SHA-256,
the form PS3.5 B.2 gives for UUID-derived UIDs (at most 44 characters, under the 64 allowed).

**Storage.** int16 with slope 1 / intercept 0 when the HU are integers that fit (every CT we have seen);
integers spanning at most 65535 but beyond int16 go to uint16 with intercept = minimum; anything else (fractional
values, wider ranges) is spread over uint16 with a slope/intercept computed from the data range. Stored values
never overflow, and the error is at most slope/2 (0 for integral data that fits 16 bits). The CT Image IOD allows
only 16 bits allocated, so wider integer ranges are quantised (documented, tested).

**Geometry.** ImagePositionPatient, ImageOrientationPatient, PixelSpacing and SliceThickness come from the NIfTI
affine (RAS+) converted to LPS+, for any orientation: flips, permutations, oblique (see ``geometry``).

**Speed.** Files are encoded here directly (Explicit VR Little Endian, a flat data set): the shared elements once,
then per slice the five that differ and the pixel bytes, written with one system call each in a few threads. This
is ~10× faster than building pydicom Datasets, and needs no pydicom import; ``datasets()`` parses the very same
bytes with pydicom when a caller (the SEG writer) needs Dataset objects. A NIfTI whose voxels already are CT
stored values (int16/uint16, with a scaling DS keeps exactly: ``stored_rescale``) is encoded by ``encode_stored``
straight from its bytes, slice by slice, without numpy (imported only by ``encode_series``/``choose_rescale``).
"""

from __future__ import annotations

import array
import hashlib
import io
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from liverseg.errors import InputError
from liverseg.imaging import nifti1
from liverseg.imaging.geometry import SliceGeometry, Volume, dot, slice_geometry

if TYPE_CHECKING:
    import numpy as np

IMPLEMENTATION_CLASS_UID = "2.25.303938567383262227614457045233829350313"  # liverseg, fixed
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
INT16_MIN, INT16_MAX, UINT16_MAX = -32768, 32767, 65535
IO_THREADS = 4


def derive_uid(namespace: str, *parts: object) -> str:
    digest = hashlib.sha256("|".join([namespace, *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class Rescale:
    stored: np.ndarray   # values to store, int16 or uint16
    slope: float
    intercept: float


def _ds_decimal(value: float) -> str:
    """A DS value (at most 16 characters) that keeps as many digits as fit."""
    for digits in range(15, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value} as DS")


def choose_rescale(hu: np.ndarray) -> Rescale:
    """Stored values and the Rescale Slope/Intercept that bring them back to ``hu``, never overflowing.

    Integral data that fits 16 bits comes back exactly; otherwise |error| ≤ slope / 2 (plus the 16-digit DS
    rounding of the intercept). The slope and intercept returned are the values written as DS text.
    """
    import numpy as np

    if hu.dtype.kind not in "iuf":
        raise InputError(f"voxel type {hu.dtype} cannot be stored as CT")
    lo, hi = hu.min(), hu.max()
    if hu.dtype.kind in "iu":
        lo, hi, integral = int(lo), int(hi), True
    else:
        lo, hi = float(lo), float(hi)
        if not np.isfinite(hi - lo):
            raise InputError(f"voxel values {lo:g}..{hi:g} span more than a float can hold")
        integral = bool(np.array_equal(hu, np.round(hu))) and abs(lo) < 2**53 and abs(hi) < 2**53
    if integral and lo >= INT16_MIN and hi <= INT16_MAX:
        return Rescale(hu.astype(np.int16, copy=False), 1.0, 0.0)
    if integral and hi - lo <= UINT16_MAX and abs(lo) < 1e15:
        return Rescale((hu.astype(np.int64) - int(lo)).astype(np.uint16), 1.0, float(lo))
    intercept = float(_ds_decimal(float(lo)))
    # Spread the range over uint16 with the slope exactly as written (DS text), nudged up until the top fits.
    slope = float(_ds_decimal((float(hi) - intercept) / UINT16_MAX))
    if hi == lo or slope <= 0:
        # One value, or a range that DS rounding of the intercept closes (it may even pass ``hi``): constant.
        return Rescale(np.zeros(hu.shape, dtype=np.uint16), 1.0, intercept)
    while (float(hi) - intercept) / slope > UINT16_MAX + 0.5:
        slope = float(_ds_decimal(slope * (1 + 1e-12)))
    scaled = (hu.astype(np.float64) - intercept) / slope
    stored = np.clip(np.rint(scaled), 0, UINT16_MAX).astype(np.uint16)
    return Rescale(stored, slope, intercept)


# -- encoding ------------------------------------------------------------------------------------------------
_TEXT_PAD = {"UI": b"\0"}
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _element(tag: int, vr: str, value) -> bytes:
    """One explicit VR little endian element. ``value``: str, list of str (multi-valued), int (US) or bytes."""
    if vr == "US":
        raw = struct.pack("<H", int(value))
    elif vr == "UL":
        raw = struct.pack("<I", int(value))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    else:
        text = "\\".join(value) if isinstance(value, (list, tuple)) else str(value)
        raw = text.encode("ascii" if vr in ("UI", "DS", "IS", "CS", "DA", "TM") else "latin-1")
    if len(raw) % 2:
        raw += _TEXT_PAD.get(vr, b"\0" if vr in _LONG_VRS or vr in ("US", "UL") else b" ")
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode()
    if vr in _LONG_VRS:
        return head + struct.pack("<HI", 0, len(raw)) + raw
    if len(raw) > 0xFFFF:
        raise ValueError(f"value of ({tag >> 16:04X},{tag & 0xFFFF:04X}) is too long for {vr}")
    return head + struct.pack("<H", len(raw)) + raw


def _file_meta(sop_instance_uid: str, implementation_version: str) -> bytes:
    body = b"".join([
        _element(0x00020001, "OB", b"\0\1"),
        _element(0x00020002, "UI", CT_IMAGE_STORAGE),
        _element(0x00020003, "UI", sop_instance_uid),
        _element(0x00020010, "UI", EXPLICIT_VR_LITTLE_ENDIAN),
        _element(0x00020012, "UI", IMPLEMENTATION_CLASS_UID),
        _element(0x00020013, "SH", implementation_version),
    ])
    return b"\0" * 128 + b"DICM" + _element(0x00020000, "UL", len(body)) + body


def check_patient_id(patient_id: str) -> None:
    """``InputError`` unless ``patient_id`` can be written as it is into Patient ID (LO) and Patient's Name (PN):
    the files declare ISO_IR 100 (Latin-1), a backslash separates values (it would split the ID in two) and
    control characters are not allowed in either VR."""
    bad = sorted({c for c in patient_id if c == "\\" or ord(c) > 0xFF or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F})
    if bad:
        shown = " ".join(repr(c) for c in bad[:5]) + (" …" if len(bad) > 5 else "")
        raise InputError(f"patient id {patient_id!r} has characters DICOM cannot hold here ({shown}): use Latin-1 "
                         "letters, digits and punctuation, without backslash or control characters")


@dataclass(frozen=True)
class SeriesInfo:
    """Who and what the series is about. ``patient_id`` defaults to the case id (``check_patient_id``)."""

    patient_id: str
    uid_namespace: str
    series_description: str = "liverseg CT from NIfTI"
    series_number: int = 1
    study_id: str = "1"

    def __post_init__(self) -> None:
        check_patient_id(self.patient_id)


@dataclass
class EncodedSeries:
    """A CT series as Part 10 files in memory: per slice (header bytes, pixel bytes), in slice (k) order."""

    parts: list[tuple[bytes, memoryview]]
    sop_instance_uids: list[str]
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str

    def file_bytes(self, k: int) -> bytes:
        header, pixels = self.parts[k]
        return header + bytes(pixels)

    def datasets(self, *, with_pixels: bool = True) -> list:
        """The slices as pydicom Datasets, parsed from the exact bytes ``write`` puts on disk."""
        import pydicom

        return [pydicom.dcmread(io.BytesIO(self.file_bytes(k) if with_pixels else self.parts[k][0]),
                                stop_before_pixels=not with_pixels) for k in range(len(self.parts))]

    def write(self, out_dir: Path) -> list[Path]:
        """Write ``0001.dcm``, ``0002.dcm``… (slice order) into ``out_dir``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{k + 1:04d}.dcm" for k in range(len(self.parts))]

        def save(k: int) -> None:
            header, pixels = self.parts[k]
            with open(paths[k], "wb", buffering=0) as fh:
                fh.write(header)
                fh.write(pixels)

        with ThreadPoolExecutor(min(IO_THREADS, max(1, len(paths)))) as pool:
            list(pool.map(save, range(len(paths))))
        return paths


def encode_series(volume: Volume, info: SeriesInfo) -> EncodedSeries:
    """Encode the volume as one CT Image Storage file per slice k (positions along the volume's third axis), HU
    stored as ``choose_rescale`` decides."""
    import numpy as np

    hu = volume.array
    if hu.ndim != 3:
        raise InputError(f"image must be 3D, got shape {hu.shape}")
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        raise InputError("image has NaN/Inf voxels")
    _check_matrix(hu.shape)
    geometry = slice_geometry(volume.affine, hu.shape[2])
    rescale = choose_rescale(hu)
    # Rows run along j and columns along i: slice k of an (i, j, k) array, transposed. For a Fortran-ordered
    # array (nibabel's and our readers') this transpose is C-contiguous already: no copy.
    pixels = np.ascontiguousarray(np.transpose(rescale.stored, (2, 1, 0))).astype(
        rescale.stored.dtype.newbyteorder("<"), copy=False)
    return _encode(hu.shape, geometry, rescale.stored.dtype == np.int16, rescale.slope, rescale.intercept,
                   [memoryview(pixels[k]).cast("B") for k in range(hu.shape[2])], info)


def stored_rescale(header: nifti1.Header) -> tuple[float, float] | None:
    """(slope, intercept) when a NIfTI's voxels can be CT pixel data as they are: int16 or uint16 (16 bits
    allocated, as the CT Image IOD requires) whose scl_slope/scl_inter DS keeps exactly (1/0 when unscaled, and
    every dcm2niix-style -1000/-1024); None otherwise (the voxels go through ``choose_rescale``)."""
    if header.dtype[1:] not in ("i2", "u2"):
        return None
    if any(float(_ds_decimal(v)) != v for v in (header.slope, header.inter)):
        return None
    return header.slope, header.inter + 0.0  # + 0.0: an intercept of -0.0 is written "0"


def encode_stored(header: nifti1.Header, voxels, info: SeriesInfo) -> EncodedSeries:
    """Encode a NIfTI whose ``stored_rescale`` is not None straight from its voxel bytes (``nifti1.read``): each
    slice's bytes are its pixel data (NIfTI is x fastest, DICOM columns fastest), scl_slope/scl_inter the Rescale
    Slope/Intercept. No numpy; the same header bytes ``encode_series`` writes for the same geometry and rescale."""
    slope, intercept = stored_rescale(header)
    _check_matrix(header.shape)
    geometry = slice_geometry(header.affine, header.shape[2])
    if header.dtype[0] == ">":  # big endian on disk: DICOM here is little endian
        swapped = array.array("H")
        swapped.frombytes(voxels)
        swapped.byteswap()
        voxels = memoryview(swapped).cast("B")
    size = header.shape[0] * header.shape[1] * 2
    slices = [voxels[k * size:(k + 1) * size] for k in range(header.shape[2])]
    return _encode(header.shape, geometry, header.dtype[1] == "i", slope, intercept, slices, info)


def _check_matrix(shape: Sequence[int]) -> None:
    if shape[0] > 0xFFFF or shape[1] > 0xFFFF:
        raise InputError(f"slices of {shape[0]}x{shape[1]} pixels do not fit DICOM Rows/Columns")


def _encode(shape: Sequence[int], geometry: SliceGeometry, signed: bool, slope: float, intercept: float,
            slices: Sequence[memoryview], info: SeriesInfo) -> EncodedSeries:
    """The files of a series: ``slices[k]`` (rows × columns 16-bit little-endian stored values, signed or not) is
    slice k's pixel data at ``geometry.positions[k]``; ``slope``/``intercept`` are written as the Rescale (exact DS
    values)."""
    from liverseg import __version__  # resolved on first use, not at import: the caller hashes its inputs meanwhile

    implementation_version = f"LIVERSEG_{__version__}"[:16]
    study_uid = derive_uid(info.uid_namespace, "study")
    series_uid = derive_uid(info.uid_namespace, "series")
    frame_uid = derive_uid(info.uid_namespace, "frame-of-reference")
    normal = geometry.normal

    shared = {
        0x00080005: ("CS", "ISO_IR 100"),
        0x00080008: ("CS", ["DERIVED", "SECONDARY", "AXIAL"]),
        0x00080016: ("UI", CT_IMAGE_STORAGE),
        0x00080020: ("DA", ""), 0x00080023: ("DA", ""), 0x00080030: ("TM", ""), 0x00080033: ("TM", ""),
        0x00080050: ("SH", ""),
        0x00080060: ("CS", "CT"),
        0x00080070: ("LO", "liverseg"),
        0x00080090: ("PN", ""),
        0x00081030: ("LO", "liverseg"),
        0x0008103E: ("LO", info.series_description[:64]),
        0x00081090: ("LO", "liverseg convert"),
        0x00082111: ("ST", "Converted from NIfTI by liverseg; voxel values are unchanged HU"),
        # Family name only, with the component separator: the non-retired PN form.
        0x00100010: ("PN", f"{info.patient_id}^"[:64]),
        0x00100020: ("LO", info.patient_id[:64]),
        0x00100030: ("DA", ""),
        0x00100040: ("CS", ""),
        0x00180015: ("CS", "ABDOMEN"),
        0x00180050: ("DS", _ds_decimal(abs(geometry.slice_step))),
        0x00180060: ("DS", ""),
        0x00181020: ("LO", f"liverseg {__version__}"[:64]),
        0x00185100: ("CS", ""),
        0x0020000D: ("UI", study_uid),
        0x0020000E: ("UI", series_uid),
        0x00200010: ("SH", info.study_id[:16]),
        0x00200011: ("IS", str(int(info.series_number))),
        0x00200012: ("IS", ""),
        0x00200037: ("DS", [_ds_decimal(v) for v in geometry.orientation]),
        0x00200052: ("UI", frame_uid),
        0x00201040: ("LO", ""),
        0x00280002: ("US", 1),
        0x00280004: ("CS", "MONOCHROME2"),
        0x00280010: ("US", int(shape[1])),
        0x00280011: ("US", int(shape[0])),
        0x00280030: ("DS", [_ds_decimal(v) for v in geometry.pixel_spacing]),
        0x00280100: ("US", 16),
        0x00280101: ("US", 16),
        0x00280102: ("US", 15),
        0x00280103: ("US", 1 if signed else 0),
        0x00281050: ("DS", "40"),
        0x00281051: ("DS", "400"),
        0x00281052: ("DS", _ds_decimal(intercept)),
        0x00281053: ("DS", _ds_decimal(slope)),
        0x00281054: ("LO", "HU"),
    }
    encoded = {tag: _element(tag, vr, value) for tag, vr, value in ((t, *v) for t, v in shared.items())}
    before = b"".join(encoded[t] for t in sorted(encoded) if t < 0x00080018)
    middle = b"".join(encoded[t] for t in sorted(encoded) if 0x00080018 < t < 0x00200013)
    between = b"".join(encoded[t] for t in sorted(encoded) if 0x00200032 < t < 0x00201041)
    after = b"".join(encoded[t] for t in sorted(encoded) if t > 0x00201041)
    pixel_length = len(slices[0]) if slices else 0
    pixel_head = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW" + struct.pack("<HI", 0, pixel_length)

    parts, uids = [], []
    for k in range(shape[2]):
        sop_uid = derive_uid(info.uid_namespace, "instance", k)
        position = geometry.positions[k]
        header = b"".join([
            _file_meta(sop_uid, implementation_version), before, _element(0x00080018, "UI", sop_uid), middle,
            _element(0x00200013, "IS", str(k + 1)),
            _element(0x00200032, "DS", [_ds_decimal(v) for v in position]), between,
            _element(0x00201041, "DS", _ds_decimal(dot(position, normal))), after, pixel_head])
        parts.append((header, slices[k]))
        uids.append(sop_uid)
    return EncodedSeries(parts, uids, study_uid, series_uid, frame_uid)


def ct_series(volume: Volume, info: SeriesInfo) -> list:
    """One CT Image Storage pydicom Dataset per slice k, in k order (the bytes ``encode_series`` writes)."""
    return encode_series(volume, info).datasets()


def write_series(datasets: Sequence, out_dir: Path) -> list[Path]:
    """Write pydicom datasets as ``0001.dcm``, ``0002.dcm``… (in slice order) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets, start=1):
        path = out_dir / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def same_files(series: EncodedSeries, out_dir: Path) -> bool:
    """True when ``out_dir`` holds exactly the files ``series.write`` would write (an idempotent re-run)."""
    out_dir = Path(out_dir)
    existing = sorted(p.name for p in out_dir.glob("*")) if out_dir.is_dir() else []
    if existing != [f"{k + 1:04d}.dcm" for k in range(len(series.parts))]:
        return False
    for k in range(len(series.parts)):
        header, pixels = series.parts[k]
        path = out_dir / f"{k + 1:04d}.dcm"
        if os.path.getsize(path) != len(header) + len(pixels) or path.read_bytes() != series.file_bytes(k):
            return False
    return True
