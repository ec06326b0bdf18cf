"""NIfTI reading and writing with the checks a pipeline needs before trusting a file.

``load``/``save`` use nibabel. ``load_fast``/``save_fast`` give the same ``Volume`` through ``nifti1`` (numpy only,
no 0.4 s nibabel import) for the command-line converters, falling back to ``load`` for NIfTI variants ``nifti1``
does not read. nibabel is imported only when used.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import nifti1
from .geometry import Volume, check_affine

# Beyond these a "CT" voxel size is a unit error (metres, microns) or a broken header.
MIN_SPACING_MM, MAX_SPACING_MM = 0.05, 50.0


def load(path: Path, *, kind: str = "image") -> Volume:
    """Read a 3D NIfTI (a trailing axis of length 1 is dropped) and check it. Raises ``InputError``.

    The array keeps its on-disk dtype when it has no scaling; scaled data comes back as float32.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{kind} is not NIfTI ({type(img).__name__})", file=path.name)
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            img = img.slicer[..., 0]
            shape = img.shape
        if len(shape) != 3:
            raise InputError(f"{kind} must be 3D, got shape {shape}", file=path.name)
        if min(shape) < 1:
            raise InputError(f"{kind} has an empty axis, shape {shape}", file=path.name)
        sform, qform = int(img.header["sform_code"]), int(img.header["qform_code"])
        if sform == 0 and qform == 0:
            raise InputError(f"{kind} has neither qform nor sform: its orientation is unknown", file=path.name)
        affine = check_affine(img.affine)
        dataobj = img.dataobj
        scaled = nib.is_proxy(dataobj) and (dataobj.slope != 1 or dataobj.inter != 0)
        array = np.asarray(dataobj, dtype=np.float32) if scaled else np.asanyarray(dataobj)
    except InputError as exc:
        exc.file = exc.file or path.name
        raise
    except Exception as exc:  # nibabel reports damaged headers with many exception types
        raise unreadable(kind, path, exc) from None
    return check_volume(array, affine, kind=kind, file=path.name)


def unreadable(kind: str, path: Path, exc: BaseException) -> InputError:
    """One line naming the file (not the temporary folder it was downloaded to) and what the reader said."""
    detail = " ".join(str(exc).replace(str(path), path.name).split())
    return InputError(f"{kind} is not a readable NIfTI: {type(exc).__name__}: {detail}", file=path.name)


def check_volume(array: np.ndarray, affine: np.ndarray, *, kind: str, file: str | None) -> Volume:
    """The checks every loaded image passes: plausible voxel size, finite values, a numeric voxel type."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if spacing.min() < MIN_SPACING_MM or spacing.max() > MAX_SPACING_MM:
        raise InputError(f"{kind} voxel spacing {np.round(spacing, 4).tolist()} mm is outside "
                         f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}]", file=file)
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{kind} has {bad} NaN/Inf voxels", file=file)
    if array.dtype.kind not in "iuf" or array.dtype.kind == "c":
        raise InputError(f"{kind} has unsupported voxel type {array.dtype}", file=file)
    return Volume(array=array, affine=affine)


def load_fast(path: Path, *, kind: str = "image") -> Volume:
    """``load`` without nibabel for plain single-file NIfTI-1 (same array, affine and errors); nibabel otherwise."""
    path = Path(path)
    try:
        array, header = nifti1.read(path)
    except nifti1.Unsupported:
        return load(path, kind=kind)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, MemoryError) as exc:
        raise unreadable(kind, path, exc) from None
    if min(array.shape) < 1:
        raise InputError(f"{kind} has an empty axis, shape {array.shape}", file=path.name)
    if header.affine is None:
        raise InputError(f"{kind} has neither qform nor sform: its orientation is unknown", file=path.name)
    try:
        affine = check_affine(header.affine)
    except InputError as exc:
        exc.file = path.name
        raise
    if header.slope != 1 or header.inter != 0:
        array = array.astype(np.float32) * np.float32(header.slope) + np.float32(header.inter)
    return check_volume(array, affine, kind=kind, file=path.name)


def save(path: Path, volume: Volume) -> Path:
    """Write with qform and sform both set (code 1, scanner) so every reader agrees on the geometry."""
    import nibabel as nib

    img = nib.Nifti1Image(volume.array, volume.affine)
    img.header.set_qform(volume.affine, code=1)
    img.header.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def save_fast(path: Path, volume: Volume) -> Path:
    """``save`` without nibabel: the same header fields (qform and sform code 1, mm), gzip level 1 for .gz."""
    return nifti1.write(path, volume.array, volume.affine)
