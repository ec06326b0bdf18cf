"""NIfTI-1 single files (.nii, .nii.gz) read and written with numpy alone, for the ``liverseg dicom`` commands.

nibabel's import takes 0.3–0.5 s here (it pulls in pydicom and scipy), longer than dcm2niix's whole conversion of
a 134-slice series, so the command-line converters use this module. It covers what those commands meet: one
3D image (a 4th axis of length 1 is dropped), little or big endian, the usual integer and float types,
``scl_slope``/``scl_inter``, qform and sform. Anything else raises ``Unsupported`` and the caller uses nibabel
(``nifti.load``). Geometry follows nibabel exactly: the sform when ``sform_code`` > 0, else the qform when
``qform_code`` > 0 (so a file with qform_code 0 and an sform set gets its sform), else no orientation.
Tests check every reader result and every written file against nibabel.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER_SIZE = 348
VOX_OFFSET = 352
DTYPES: dict[int, np.dtype] = {
    2: np.dtype(np.uint8), 4: np.dtype(np.int16), 8: np.dtype(np.int32), 16: np.dtype(np.float32),
    64: np.dtype(np.float64), 256: np.dtype(np.int8), 512: np.dtype(np.uint16), 768: np.dtype(np.uint32),
    1024: np.dtype(np.int64), 1280: np.dtype(np.uint64)}
CODES = {dtype: code for code, dtype in DTYPES.items()}
# Gzip level for .nii.gz: nibabel's default (1), so files match what the pipeline's nibabel writes in size/speed.
GZIP_LEVEL = 1


class Unsupported(ValueError):
    """A NIfTI variant this module does not read (NIfTI-2, .hdr/.img pairs, 5D…): use nibabel."""


@dataclass(frozen=True)
class Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    affine: np.ndarray
    qform_code: int
    sform_code: int
    slope: float
    inter: float
    vox_offset: int


# -- geometry ------------------------------------------------------------------------------------------------
def _quaternion(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Unit quaternion (a, b, c, d), a ≥ 0, of a proper rotation matrix (Shepperd's method)."""
    r = rotation
    trace = r[0, 0] + r[1, 1] + r[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s)
    elif r[0, 0] > r[1, 1] and r[0, 0] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2])
        q = ((r[2, 1] - r[1, 2]) / s, 0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s)
    elif r[1, 1] > r[2, 2]:
        s = 2.0 * math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2])
        q = ((r[0, 2] - r[2, 0]) / s, (r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1])
        q = ((r[1, 0] - r[0, 1]) / s, (r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s)
    norm = math.sqrt(sum(v * v for v in q))
    q = tuple(v / norm for v in q)
    return q if q[0] >= 0 else tuple(-v for v in q)


def qform_fields(affine: np.ndarray) -> tuple[float, tuple[float, float, float], tuple[float, float, float]]:
    """(qfac, (b, c, d), zooms) for an affine, as nibabel's ``set_qform`` computes them: the nearest rotation
    (polar decomposition) of the direction matrix, with qfac −1 for a left-handed grid."""
    rzs = np.asarray(affine, dtype=np.float64)[:3, :3]
    zooms = np.sqrt(np.sum(rzs * rzs, axis=0))
    rotation = rzs / zooms
    qfac = 1.0
    if np.linalg.det(rotation) < 0:
        qfac = -1.0
        rotation[:, 2] *= -1
    p, _, qt = np.linalg.svd(rotation)
    _, b, c, d = _quaternion(p @ qt)
    return qfac, (b, c, d), tuple(float(z) for z in zooms)


def qform_affine(bcd, qfac: float, zooms, offset) -> np.ndarray:
    """The qform affine (NIfTI-1 method 2) from the header's quaternion, qfac, pixdim and qoffset."""
    b, c, d = (float(v) for v in bcd)
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b]])
    z = np.array([float(v) for v in zooms])
    z[2] *= -1.0 if qfac < 0 else 1.0
    affine = np.eye(4)
    affine[:3, :3] = rotation * z[None, :]
    affine[:3, 3] = [float(v) for v in offset]
    return affine


# -- header --------------------------------------------------------------------------------------------------
def encode_header(shape: tuple[int, int, int], dtype: np.dtype, affine: np.ndarray, *,
                  slope: float = 1.0, inter: float = 0.0) -> bytes:
    """The 348-byte header plus the 4-byte empty extension flag (vox_offset 352), qform and sform code 1."""
    dtype = np.dtype(dtype)
    if dtype.newbyteorder("=") not in CODES:
        raise ValueError(f"no NIfTI type for {dtype}")
    code = CODES[dtype.newbyteorder("=")]
    affine = np.asarray(affine, dtype=np.float64)
    qfac, (b, c, d), zooms = qform_fields(affine)
    e = "<"
    hdr = bytearray(VOX_OFFSET)
    struct.pack_into(e + "i", hdr, 0, HEADER_SIZE)
    struct.pack_into(e + "8h", hdr, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into(e + "hhh", hdr, 70, code, dtype.itemsize * 8, 0)
    struct.pack_into(e + "8f", hdr, 76, qfac, *zooms, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into(e + "fff", hdr, 108, float(VOX_OFFSET), slope, inter)
    hdr[123] = 2 | 8  # xyzt_units: mm and seconds
    struct.pack_into(e + "hh", hdr, 252, 1, 1)  # qform_code, sform_code: scanner
    struct.pack_into(e + "6f", hdr, 256, b, c, d, *affine[:3, 3])
    struct.pack_into(e + "12f", hdr, 280, *affine[0], *affine[1], *affine[2])
    hdr[344:348] = b"n+1\0"
    return bytes(hdr)


def decode_header(raw: bytes) -> Header:
    if len(raw) < HEADER_SIZE:
        raise ValueError("file is shorter than a NIfTI-1 header")
    for e in "<>":
        if struct.unpack_from(e + "i", raw, 0)[0] == HEADER_SIZE:
            break
    else:
        raise Unsupported("not a NIfTI-1 header (NIfTI-2 or another format)")
    if raw[344:348] != b"n+1\0":
        raise Unsupported(f"magic {raw[344:348]!r} is not a single-file NIfTI-1")
    dim = struct.unpack_from(e + "8h", raw, 40)
    ndim = dim[0]
    if not 3 <= ndim <= 7 or any(v != 1 for v in dim[4:ndim + 1]):
        raise Unsupported(f"dim {dim[:ndim + 1]} is not one 3D volume")
    code = struct.unpack_from(e + "h", raw, 70)[0]
    if code not in DTYPES:
        raise Unsupported(f"datatype {code}")
    pixdim = struct.unpack_from(e + "8f", raw, 76)
    vox_offset, slope, inter = struct.unpack_from(e + "fff", raw, 108)
    qform_code, sform_code = struct.unpack_from(e + "hh", raw, 252)
    qparams = struct.unpack_from(e + "6f", raw, 256)
    srow = struct.unpack_from(e + "12f", raw, 280)
    if sform_code > 0:
        affine = np.eye(4)
        affine[:3, :] = np.array(srow, dtype=np.float64).reshape(3, 4)
    elif qform_code > 0:
        qfac = pixdim[0] if pixdim[0] in (-1.0, 1.0) else 1.0
        if pixdim[0] not in (-1.0, 0.0, 1.0) or min(pixdim[1:4]) < 0:
            raise Unsupported("unusual qfac or negative pixdim")
        affine = qform_affine(qparams[:3], qfac, pixdim[1:4], qparams[3:])
    else:
        affine = None
    if not math.isfinite(slope) or slope == 0:
        slope, inter = 1.0, 0.0
    if not math.isfinite(inter):
        inter = 0.0
    return Header(shape=tuple(int(v) for v in dim[1:4]), dtype=DTYPES[code].newbyteorder(e), affine=affine,
                  qform_code=qform_code, sform_code=sform_code, slope=float(slope), inter=float(inter),
                  vox_offset=int(vox_offset))


# -- files ---------------------------------------------------------------------------------------------------
def read(path: Path) -> tuple[np.ndarray, Header]:
    """The voxel array (i, j, k; Fortran order, on-disk type, unscaled) and the header of a .nii/.nii.gz.

    Raises ``Unsupported`` for variants nibabel should read; ``OSError``/``ValueError``/``EOFError``/
    ``zlib.error`` for broken files.
    """
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    header = decode_header(raw)
    count = int(np.prod(header.shape))
    needed = header.vox_offset + count * header.dtype.itemsize
    if header.vox_offset < HEADER_SIZE or len(raw) < needed:
        raise ValueError(f"voxel data is cut short: {len(raw)} bytes, the header needs {needed}")
    array = np.frombuffer(raw, dtype=header.dtype, count=count, offset=header.vox_offset)
    array = array.reshape(header.shape, order="F")
    if not header.dtype.isnative:
        array = array.astype(header.dtype.newbyteorder("="))
    return array, header


def write(path: Path, array: np.ndarray, affine: np.ndarray, *, slope: float = 1.0, inter: float = 0.0) -> Path:
    """Write a 3D array as NIfTI-1 (.nii, or gzip level ``GZIP_LEVEL`` for .nii.gz), qform and sform code 1.

    The file is written under a temporary name and renamed, so a reader never sees half a file.
    """
    path = Path(path)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D, got shape {array.shape}")
    header = encode_header(array.shape, array.dtype, affine, slope=slope, inter=inter)
    # NIfTI stores x fastest: the transpose of a Fortran-ordered (i, j, k) array is C-contiguous, no copy.
    data = np.ascontiguousarray(array.T).astype(array.dtype.newbyteorder("<"), copy=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        if path.name.endswith(".gz"):
            # One gzip member, written as it is compressed (the voxels are never copied as a whole).
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
            view = memoryview(data).cast("B")
            fh.write(compressor.compress(header))
            step = 1 << 24
            for start in range(0, len(view), step):
                fh.write(compressor.compress(view[start:start + step]))
            fh.write(compressor.flush())
        else:
            fh.write(header)
            fh.write(memoryview(data).cast("B"))
    os.replace(tmp, path)
    return path
