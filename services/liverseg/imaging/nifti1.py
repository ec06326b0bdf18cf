"""NIfTI-1 single files (.nii, .nii.gz) as a header and raw voxel bytes, in plain Python.

nibabel's import takes 0.3–0.5 s here (it pulls in pydicom and scipy) and numpy's 0.1–0.2 s, each longer than
dcm2niix's whole conversion of a 134-slice series, so the command-line converters use this module: it decodes and
encodes the header and moves voxel bytes without interpreting them. ``nifti`` makes numpy arrays of those bytes
(``load_fast``/``save_fast``); ``liverseg dicom to-nifti``/``from-nifti`` copy them as they are when they can.

It covers what those commands meet: one 3D image (a 4th axis of length 1 is dropped), little or big endian, the
usual integer and float types, ``scl_slope``/``scl_inter``, qform and sform. Anything else raises ``Unsupported``
and the caller uses nibabel (``nifti.load``). Geometry follows nibabel exactly: the sform when ``sform_code`` > 0,
else the qform when ``qform_code`` > 0 (so a file with qform_code 0 and an sform set gets its sform), else no
orientation. Tests check every reader result and every written file against nibabel.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from liverseg.errors import InputError
from liverseg.imaging.geometry import Affine, check_grid

HEADER_SIZE = 348
GUNZIP_CHUNK = 1 << 20  # compressed bytes inflated at a time
VOX_OFFSET = 352
# datatype code -> voxel type, numpy's notation without the byte order ("i2" = int16).
DTYPES: dict[int, str] = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
                          1024: "i8", 1280: "u8"}
CODES = {kind: code for code, kind in DTYPES.items()}
# Gzip level for .nii.gz: nibabel's default (1), so files match what the pipeline's nibabel writes in size/speed.
GZIP_LEVEL = 1
_GZIP_STEP = 1 << 24  # bytes handed to zlib at a time: the compressed output never piles up in memory


class Unsupported(ValueError):
    """A NIfTI variant this module does not read (NIfTI-2, .hdr/.img pairs, 5D…): use nibabel."""


@dataclass(frozen=True)
class Header:
    shape: tuple[int, int, int]
    dtype: str                 # voxel type with byte order, numpy's notation: "<i2", ">f4", "|u1"
    affine: Affine | None      # None: neither sform nor qform
    qform_code: int
    sform_code: int
    slope: float               # 1 and 0 when the file has no (usable) scaling
    inter: float
    vox_offset: int

    @property
    def itemsize(self) -> int:
        return int(self.dtype[2:])

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.shape[2] * self.itemsize


def _kind(dtype: str) -> str:
    return dtype.lstrip("<>=|")


# -- geometry ------------------------------------------------------------------------------------------------
def _inverse3(m) -> list[list[float]]:
    cof = [[m[(r + 1) % 3][(c + 1) % 3] * m[(r + 2) % 3][(c + 2) % 3]
            - m[(r + 1) % 3][(c + 2) % 3] * m[(r + 2) % 3][(c + 1) % 3] for c in range(3)] for r in range(3)]
    det = m[0][0] * cof[0][0] + m[0][1] * cof[0][1] + m[0][2] * cof[0][2]
    if det == 0 or not math.isfinite(det):
        raise ValueError("affine is singular: no qform")
    return [[cof[c][r] / det for c in range(3)] for r in range(3)]


def _nearest_rotation(m) -> list[list[float]]:
    """The orthogonal matrix nearest ``m`` (its polar factor, what nibabel takes from an SVD): scaled Newton
    iteration X <- (g X + X^-T / g) / 2, which converges quadratically; a few steps for any real affine."""
    x = [[float(v) for v in row] for row in m]
    for _ in range(100):
        inv = _inverse3(x)
        g = math.sqrt(math.sqrt(sum(v * v for row in inv for v in row) / sum(v * v for row in x for v in row)))
        nxt = [[0.5 * (g * x[r][c] + inv[c][r] / g) for c in range(3)] for r in range(3)]
        change = max(abs(nxt[r][c] - x[r][c]) for r in range(3) for c in range(3))
        x = nxt
        if change < 1e-15:
            break
    return x


def _quaternion(r) -> tuple[float, float, float, float]:
    """Unit quaternion (a, b, c, d), a ≥ 0, of a proper rotation matrix (Shepperd's method)."""
    trace = r[0][0] + r[1][1] + r[2][2]
    if trace > 0:
        s = 2.0 * math.sqrt(1.0 + trace)
        q = (0.25 * s, (r[2][1] - r[1][2]) / s, (r[0][2] - r[2][0]) / s, (r[1][0] - r[0][1]) / s)
    elif r[0][0] > r[1][1] and r[0][0] > r[2][2]:
        s = 2.0 * math.sqrt(1.0 + r[0][0] - r[1][1] - r[2][2])
        q = ((r[2][1] - r[1][2]) / s, 0.25 * s, (r[0][1] + r[1][0]) / s, (r[0][2] + r[2][0]) / s)
    elif r[1][1] > r[2][2]:
        s = 2.0 * math.sqrt(1.0 + r[1][1] - r[0][0] - r[2][2])
        q = ((r[0][2] - r[2][0]) / s, (r[0][1] + r[1][0]) / s, 0.25 * s, (r[1][2] + r[2][1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + r[2][2] - r[0][0] - r[1][1])
        q = ((r[1][0] - r[0][1]) / s, (r[0][2] + r[2][0]) / s, (r[1][2] + r[2][1]) / s, 0.25 * s)
    length = math.sqrt(sum(v * v for v in q))
    q = tuple(v / length for v in q)
    return q if q[0] >= 0 else tuple(-v for v in q)


def qform_fields(affine) -> tuple[float, tuple[float, float, float], tuple[float, float, float]]:
    """(qfac, (b, c, d), zooms) for an affine, as nibabel's ``set_qform`` computes them: the nearest rotation
    (polar decomposition) of the direction matrix, with qfac −1 for a left-handed grid."""
    rzs = [[float(affine[r][c]) for c in range(3)] for r in range(3)]
    zooms = tuple(math.sqrt(sum(rzs[r][c] ** 2 for r in range(3))) for c in range(3))
    rotation = [[rzs[r][c] / zooms[c] for c in range(3)] for r in range(3)]
    qfac = 1.0
    cof0 = [rotation[1][1] * rotation[2][2] - rotation[1][2] * rotation[2][1],
            rotation[1][2] * rotation[2][0] - rotation[1][0] * rotation[2][2],
            rotation[1][0] * rotation[2][1] - rotation[1][1] * rotation[2][0]]
    if sum(rotation[0][c] * cof0[c] for c in range(3)) < 0:
        qfac = -1.0
        for r in range(3):
            rotation[r][2] *= -1
    _, b, c, d = _quaternion(_nearest_rotation(rotation))
    return qfac, (b, c, d), zooms


def qform_affine(bcd, qfac: float, zooms, offset) -> Affine:
    """The qform affine (NIfTI-1 method 2) from the header's quaternion, qfac, pixdim and qoffset."""
    b, c, d = (float(v) for v in bcd)
    a = math.sqrt(max(0.0, 1.0 - (b * b + c * c + d * d)))
    rotation = (
        (a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)),
        (2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)),
        (2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b))
    z = [float(v) for v in zooms]
    z[2] *= -1.0 if qfac < 0 else 1.0
    return (*((*(rotation[r][col] * z[col] for col in range(3)), float(offset[r])) for r in range(3)),
            (0.0, 0.0, 0.0, 1.0))


# -- header --------------------------------------------------------------------------------------------------
def encode_header(shape: tuple[int, int, int], dtype: str, affine, *, slope: float = 1.0, inter: float = 0.0
                  ) -> bytes:
    """The 348-byte header plus the 4-byte empty extension flag (vox_offset 352), qform and sform code 1, little
    endian (the voxels that follow must be too). ``dtype`` in numpy's notation, byte order ignored."""
    kind = _kind(dtype)
    if kind not in CODES:
        raise ValueError(f"no NIfTI type for {dtype}")
    rows = [[float(affine[r][c]) for c in range(4)] for r in range(3)]
    qfac, (b, c, d), zooms = qform_fields(rows)
    e = "<"
    hdr = bytearray(VOX_OFFSET)
    struct.pack_into(e + "i", hdr, 0, HEADER_SIZE)
    struct.pack_into(e + "8h", hdr, 40, 3, *shape, 1, 1, 1, 1)
    struct.pack_into(e + "hhh", hdr, 70, CODES[kind], int(kind[1:]) * 8, 0)
    struct.pack_into(e + "8f", hdr, 76, qfac, *zooms, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into(e + "fff", hdr, 108, float(VOX_OFFSET), slope, inter)
    hdr[123] = 2 | 8  # xyzt_units: mm and seconds
    struct.pack_into(e + "hh", hdr, 252, 1, 1)  # qform_code, sform_code: scanner
    struct.pack_into(e + "6f", hdr, 256, b, c, d, rows[0][3], rows[1][3], rows[2][3])
    struct.pack_into(e + "12f", hdr, 280, *rows[0], *rows[1], *rows[2])
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
        raise Unsupported(f"magic {bytes(raw[344:348])!r} is not a single-file NIfTI-1")
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
        affine = (srow[0:4], srow[4:8], srow[8:12], (0.0, 0.0, 0.0, 1.0))
    elif qform_code > 0:
        qfac = pixdim[0] if pixdim[0] in (-1.0, 1.0) else 1.0
        if pixdim[0] not in (-1.0, 0.0, 1.0) or min(pixdim[1:4]) < 0:
            raise Unsupported("unusual qfac or negative pixdim")
        affine = qform_affine(qparams[:3], qfac, pixdim[1:4], qparams[3:])
    else:
        affine = None
    if not math.isfinite(vox_offset):
        raise ValueError(f"vox_offset {vox_offset} is not a byte offset")
    if not math.isfinite(slope) or slope == 0:
        slope, inter = 1.0, 0.0
    if not math.isfinite(inter):
        inter = 0.0
    kind = DTYPES[code]
    return Header(shape=tuple(int(v) for v in dim[1:4]), dtype=("|" if kind[1] == "1" else e) + kind,
                  affine=affine, qform_code=qform_code, sform_code=sform_code, slope=float(slope), inter=float(inter),
                  vox_offset=int(vox_offset))


# -- files ---------------------------------------------------------------------------------------------------
def map_file(path: Path):
    """A file's bytes, memory-mapped (read-only; nibabel maps uncompressed NIfTI too): no copy, and the pages are
    shared with anything else reading the file at the same time (the UID hash). Read into memory where a file
    cannot be mapped (empty, or on a file system without mmap)."""
    with open(path, "rb") as fh:
        try:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):
            return fh.read()


def gunzip(data) -> bytearray:
    """A gzip file's content, decompressed into one buffer sized from the trailer's ISIZE (RFC 1952: the length
    modulo 2**32), so a large volume is held once rather than twice while a growing buffer is copied. Several
    members (concatenated .gz files) follow one another; zero padding after the last is ignored, as gzip does."""
    import zlib  # here, not at the top: the .nii paths of the commands start without it

    out = bytearray(int.from_bytes(bytes(data[-4:]), "little"))
    written = 0
    rest = memoryview(data)
    while len(rest) and any(rest[:min(len(rest), 512)]):
        inflater = zlib.decompressobj(wbits=31)
        consumed = 0
        while not inflater.eof:
            if consumed >= len(rest):
                raise zlib.error("the gzip stream is cut short")
            chunk = rest[consumed:consumed + GUNZIP_CHUNK]
            piece = inflater.decompress(chunk)
            consumed += len(chunk) - len(inflater.unused_data)
            if written + len(piece) > len(out):  # ISIZE wrapped (over 4 GiB), or a later member
                out.extend(bytes(written + len(piece) - len(out)))
            out[written:written + len(piece)] = piece
            written += len(piece)
        rest = rest[consumed:]
    del out[written:]
    return out


def read(path: Path) -> tuple[Header, memoryview]:
    """The header and the voxel bytes (x fastest, as stored: on-disk type and byte order, unscaled) of a
    .nii/.nii.gz.

    Raises ``Unsupported`` for variants nibabel should read; ``OSError``/``ValueError``/``EOFError``/
    ``zlib.error`` for broken files.
    """
    raw = map_file(path)
    if raw[:2] == b"\x1f\x8b":
        raw = gunzip(raw)
    header = decode_header(raw)
    needed = header.vox_offset + header.nbytes
    if header.vox_offset < HEADER_SIZE or len(raw) < needed:
        raise ValueError(f"voxel data is cut short: {len(raw)} bytes, the header needs {needed}")
    return header, memoryview(raw)[header.vox_offset:needed]


def unreadable(kind: str, path: Path, exc: BaseException) -> InputError:
    """One line naming the file (not the temporary folder it was downloaded to) and what the reader said."""
    detail = " ".join(str(exc).replace(str(path), path.name).split())
    return InputError(f"{kind} is not a readable NIfTI: {type(exc).__name__}: {detail}", file=path.name)


def read_checked(path: Path, *, kind: str = "image") -> tuple[Header, memoryview, Affine]:
    """``read`` plus the checks every image passes before use (``geometry.check_grid``): a broken file or grid is
    an ``InputError`` naming the file; ``Unsupported`` still means "read it with nibabel". Returns the header,
    the voxel bytes and the affine."""
    import zlib

    path = Path(path)
    try:
        header, voxels = read(path)
    except Unsupported:
        raise
    except (OSError, EOFError, zlib.error, ValueError, MemoryError) as exc:  # gzip.BadGzipFile is an OSError
        raise unreadable(kind, path, exc) from None
    return header, voxels, check_grid(header.shape, header.affine, kind=kind, file=path.name)


def write(path: Path, shape: tuple[int, int, int], dtype: str, affine, chunks: Iterable, *, slope: float = 1.0,
          inter: float = 0.0) -> Path:
    """Write NIfTI-1 (.nii, or gzip level ``GZIP_LEVEL`` for .nii.gz), qform and sform code 1: the header, then
    ``chunks`` (bytes-like, little endian, x fastest) as they come, so a caller can stream slices.

    The file is written under a temporary name and renamed, so a reader never sees half a file; an exception
    from ``chunks`` leaves nothing behind.
    """
    path = Path(path)
    header = encode_header(shape, dtype, affine, slope=slope, inter=inter)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            if path.name.endswith(".gz"):
                import zlib

                # One gzip member, written as it is compressed (the voxels are never copied as a whole).
                compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
                fh.write(compressor.compress(header))
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    for start in range(0, len(view), _GZIP_STEP):
                        fh.write(compressor.compress(view[start:start + _GZIP_STEP]))
                fh.write(compressor.flush())
            else:
                fh.write(header)
                for chunk in chunks:
                    fh.write(chunk)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
