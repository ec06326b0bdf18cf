"""NIfTI volume → DICOM CT Image Storage series (one file per slice), with exact geometry and HU.

UIDs are derived deterministically from a caller-supplied namespace (``uid_namespace``: the case's content hash,
the run id and the code version, see the convert stage): a re-run writes byte-identical files (idempotent), and
two runs or two cases never share a UID because their namespaces differ. They are ``2.25.`` + 128 bits of a
SHA-256, the form PS3.5 B.2 gives for UUID-derived UIDs.

Storage: int16 with slope 1 / intercept 0 when the HU values are integers that fit (every MSD CT); otherwise
uint16 with a slope/intercept chosen from the data range, so stored values never overflow.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from .. import __version__
from ..errors import InputError
from .geometry import Volume, slice_geometry

IMPLEMENTATION_CLASS_UID = "2.25.303938567383262227614457045233829350313"  # liverseg, fixed
IMPLEMENTATION_VERSION = f"LIVERSEG_{__version__}"[:16]
_INT16 = np.iinfo(np.int16)
_UINT16 = np.iinfo(np.uint16)


def derive_uid(namespace: str, *parts: object) -> str:
    digest = hashlib.sha256("|".join([namespace, *map(str, parts)]).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


@dataclass(frozen=True)
class Rescale:
    stored: np.ndarray   # values to store, int16 or uint16
    slope: float
    intercept: float


def choose_rescale(hu: np.ndarray) -> Rescale:
    """Stored values and the Rescale Slope/Intercept that bring them back to ``hu``, never overflowing."""
    lo, hi = float(hu.min()), float(hu.max())
    integral = hu.dtype.kind in "iu" or bool(np.all(np.mod(hu, 1) == 0))
    if integral and _INT16.min <= lo and hi <= _INT16.max:
        return Rescale(hu.astype(np.int16), 1.0, 0.0)
    if integral and hi - lo <= _UINT16.max:
        return Rescale((hu.astype(np.int64) - int(lo)).astype(np.uint16), 1.0, lo)
    # Non-integer or very wide data: spread it over uint16. Slope is written with 8 significant digits,
    # so compute stored values with that same rounded slope.
    slope = float(f"{max(hi - lo, 1e-6) / _UINT16.max:.8g}")
    slope = slope if (hi - lo) / slope <= _UINT16.max else float(f"{slope * 1.0000001:.8g}")
    stored = np.clip(np.rint((hu.astype(np.float64) - lo) / slope), 0, _UINT16.max).astype(np.uint16)
    return Rescale(stored, slope, lo)


def _ds_decimal(value: float) -> str:
    """A DS value (at most 16 characters) that keeps as many digits as fit."""
    for digits in range(15, 5, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"cannot format {value} as DS")


@dataclass(frozen=True)
class SeriesInfo:
    """Who and what the series is about. ``patient_id`` defaults to the case id."""

    patient_id: str
    uid_namespace: str
    series_description: str = "liverseg CT from NIfTI"
    series_number: int = 1
    study_id: str = "1"


def ct_series(volume: Volume, info: SeriesInfo) -> list[Dataset]:
    """One CT Image Storage dataset per slice k, in k order (positions along the volume's third axis)."""
    hu = volume.array
    if hu.ndim != 3:
        raise InputError(f"image must be 3D, got shape {hu.shape}")
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        raise InputError("image has NaN/Inf voxels")
    geometry = slice_geometry(volume.affine, hu.shape[2])
    rescale = choose_rescale(hu)
    signed = rescale.stored.dtype == np.int16
    # Rows run along j and columns along i: slice k of an (i, j, k) array, transposed, C-contiguous.
    pixels = np.ascontiguousarray(np.transpose(rescale.stored, (2, 1, 0)))
    study_uid = derive_uid(info.uid_namespace, "study")
    series_uid = derive_uid(info.uid_namespace, "series")
    frame_uid = derive_uid(info.uid_namespace, "frame-of-reference")

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    base.SOPClassUID = CTImageStorage
    base.StudyDate = base.StudyTime = base.ContentDate = base.ContentTime = ""
    base.AccessionNumber = ""
    base.Modality = "CT"
    base.Manufacturer = "liverseg"
    base.ReferringPhysicianName = ""
    base.StudyDescription = "liverseg"
    base.SeriesDescription = info.series_description
    base.ManufacturerModelName = "liverseg convert"
    base.DerivationDescription = "Converted from NIfTI by liverseg; voxel values are unchanged HU"
    # Family name only, with the component separator: the non-retired PN form.
    base.PatientName = f"{info.patient_id}^"
    base.PatientID = info.patient_id
    base.PatientBirthDate = ""
    base.PatientSex = ""
    base.BodyPartExamined = "ABDOMEN"
    base.SliceThickness = _ds_decimal(abs(geometry.slice_step))
    base.KVP = ""
    base.SoftwareVersions = f"liverseg {__version__}"
    base.PatientPosition = ""
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = info.study_id
    base.SeriesNumber = info.series_number
    base.AcquisitionNumber = ""
    base.ImageOrientationPatient = [_ds_decimal(v) for v in geometry.orientation]
    base.FrameOfReferenceUID = frame_uid
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows = int(hu.shape[1])
    base.Columns = int(hu.shape[0])
    base.PixelSpacing = [_ds_decimal(v) for v in geometry.pixel_spacing]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1 if signed else 0
    base.WindowCenter = "40"
    base.WindowWidth = "400"
    base.RescaleIntercept = _ds_decimal(rescale.intercept)
    base.RescaleSlope = _ds_decimal(rescale.slope)
    base.RescaleType = "HU"

    normal = np.cross(geometry.orientation[:3], geometry.orientation[3:])
    datasets = []
    for k in range(hu.shape[2]):
        ds = Dataset()
        ds.update(base)
        sop_uid = derive_uid(info.uid_namespace, "instance", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION
        ds.file_meta = meta
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = geometry.positions[k]
        ds.ImagePositionPatient = [_ds_decimal(v) for v in position]
        ds.SliceLocation = _ds_decimal(float(position @ normal))
        ds.PixelData = pixels[k].tobytes()
        datasets.append(ds)
    return datasets


def write_series(datasets: list[Dataset], out_dir: Path) -> list[Path]:
    """Write datasets as ``0001.dcm``, ``0002.dcm``… (in slice order) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets, start=1):
        path = out_dir / f"{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
