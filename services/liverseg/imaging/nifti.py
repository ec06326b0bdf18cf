"""NIfTI reading and writing with the checks a pipeline needs before trusting a file.

``load``/``save`` use nibabel. ``load_fast``/``save_fast`` give the same ``Volume`` through ``nifti1`` (numpy only,
no 0.4 s nibabel import) for the command-line converters, falling back to ``load`` for NIfTI variants ``nifti1``
does not read. nibabel is imported only when used. Both check grids with ``geometry.check_grid``, as the
numpy-free path of ``liverseg dicom from-nifti`` does, so every reader refuses the same files with the same words.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liverseg.errors import InputError
from liverseg.imaging import nifti1
from liverseg.imaging.geometry import Volume, check_grid


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
        oriented = int(img.header["sform_code"]) > 0 or int(img.header["qform_code"]) > 0
        affine = check_grid(shape, img.affine if oriented else None, kind=kind, file=path.name)
        dataobj = img.dataobj
        scaled = nib.is_proxy(dataobj) and (dataobj.slope != 1 or dataobj.inter != 0)
        array = np.asarray(dataobj, dtype=np.float32) if scaled else np.asanyarray(dataobj)
    except InputError as exc:
        exc.file = exc.file or path.name
        raise
    except Exception as exc:  # nibabel reports damaged headers with many exception types
        raise nifti1.unreadable(kind, path, exc) from None
    return _checked(array, affine, kind=kind, file=path.name)


def _checked(array: np.ndarray, affine, *, kind: str, file: str | None) -> Volume:
    """The voxel checks every loaded image passes (its grid passed ``check_grid``): finite values, a numeric
    voxel type."""
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InputError(f"{kind} has {bad} NaN/Inf voxels", file=file)
    if array.dtype.kind not in "iuf" or array.dtype.kind == "c":
        raise InputError(f"{kind} has unsupported voxel type {array.dtype}", file=file)
    return Volume(array=array, affine=np.array(affine, dtype=np.float64))


def load_fast(path: Path, *, kind: str = "image") -> Volume:
    """``load`` without nibabel for plain single-file NIfTI-1 (same array, affine and errors); nibabel otherwise."""
    path = Path(path)
    try:
        header, voxels, affine = nifti1.read_checked(path, kind=kind)
    except nifti1.Unsupported:
        return load(path, kind=kind)
    return volume_of(header, voxels, affine, kind=kind, file=path.name)


def volume_of(header: nifti1.Header, voxels, affine, *, kind: str, file: str | None) -> Volume:
    """The checked ``Volume`` of what ``nifti1.read_checked`` returned: native byte order, scaled data as float32."""
    dtype = np.dtype(header.dtype)
    array = np.frombuffer(voxels, dtype=dtype).reshape(header.shape, order="F")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    if header.slope != 1 or header.inter != 0:
        array = array.astype(np.float32) * np.float32(header.slope) + np.float32(header.inter)
    return _checked(array, affine, kind=kind, file=file)


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
    array = volume.array
    if array.ndim != 3:
        raise ValueError(f"array must be 3D, got shape {array.shape}")
    # NIfTI stores x fastest: the transpose of a Fortran-ordered (i, j, k) array is C-contiguous, no copy.
    data = np.ascontiguousarray(array.T).astype(array.dtype.newbyteorder("<"), copy=False)
    return nifti1.write(path, array.shape, data.dtype.str, volume.affine, [memoryview(data).cast("B")])
