"""DICOM slices → numpy arrays: the decoding half of ``dicom_read`` (which itself never imports numpy).

Used for every volume held in memory (the group stage, inference on DICOM, ``liverseg dicom group``) and, by
``dicom_volume.write_nifti``, for stacks whose bytes cannot be copied as they are: compressed transfer syntaxes
(JPEG 2000, JPEG-LS, JPEG lossless, RLE) and data sets the scanner leaves alone (Deflated, Big Endian, no preamble)
go through pydicom and its pylibjpeg handlers; native slices are read straight into the array's memory (one
``readinto`` per slice, in threads); unused high bits are masked and signed values sign-extended (PS3.5 §8.1.1);
HU are made in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liverseg.errors import InputError
from liverseg.imaging import nifti1
from liverseg.imaging.dicom_read import SliceHeader, StoredForm, read_native, stack_affine
from liverseg.imaging.geometry import Volume
from liverseg.imaging.nifti import save_fast

IO_THREADS = 4


def _stored_dtype(bits_allocated: int, signed: bool) -> np.dtype:
    return np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")


def _decode_with_pydicom(h: SliceHeader) -> np.ndarray:
    ds = h._dataset
    try:
        if ds is None or "PixelData" not in ds:
            import pydicom

            ds = pydicom.dcmread(h.path)
        pixels = ds.pixel_array
    except InputError:
        raise
    except Exception as exc:  # codec missing, truncated or corrupt pixel data
        raise InputError(f"pixel data cannot be decoded ({h.transfer_syntax}): {type(exc).__name__}: {exc}",
                         file=h.path.name) from None
    expected = (h.rows, h.columns)
    if pixels.shape != expected:
        raise InputError(f"pixel data has shape {pixels.shape}, header says {expected}", file=h.path.name)
    return pixels


def _mask_unused_bits(raw: np.ndarray, bits_stored: int, signed: bool) -> None:
    """Keep the low ``bits_stored`` bits (sign-extended when signed), in place, as PS3.5 §8.1.1 defines."""
    bits = raw.dtype.itemsize * 8
    if bits_stored >= bits:
        return
    if signed:
        shift = raw.dtype.type(bits - bits_stored)
        unsigned = raw.view(raw.dtype.str.replace("i", "u"))
        np.left_shift(unsigned, unsigned.dtype.type(shift), out=unsigned)
        np.right_shift(raw, shift, out=raw)  # arithmetic: copies the sign bit down
    else:
        np.bitwise_and(raw, raw.dtype.type((1 << bits_stored) - 1), out=raw)


def stored_values(ordered: Sequence[SliceHeader]) -> np.ndarray:
    """Stored values of every slice, (k, rows, cols), in one array of the common stored type."""
    first = ordered[0]
    formats = {(h.bits_allocated, h.signed, h.bits_stored) for h in ordered}
    common = len(formats) == 1
    dtype = _stored_dtype(first.bits_allocated, first.signed) if common else np.dtype(np.int64)
    raw = np.empty((len(ordered), first.rows, first.columns), dtype=dtype)

    def load(k: int) -> None:
        h = ordered[k]
        if h.pixel_offset is not None and common:
            read_native(h, raw[k])
            return
        if h.pixel_offset is not None:
            values = np.empty((h.rows, h.columns), _stored_dtype(h.bits_allocated, h.signed))
            read_native(h, values)
            _mask_unused_bits(values, h.bits_stored, h.signed)
        else:
            values = _decode_with_pydicom(h)  # pydicom already keeps only the stored bits
        raw[k] = values

    # A few threads, each over a contiguous run of slices: file reads release the GIL, which pays off when the
    # files are not in the page cache (network or cold disks); from cache it costs ~10 ms against one thread.
    workers = max(1, min(IO_THREADS, len(ordered) // 16))
    chunks = [range(w, len(ordered), workers) for w in range(workers)]
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda chunk: [load(k) for k in chunk], chunks))
    else:
        for k in chunks[0]:
            load(k)
    if common and any(h.pixel_offset is not None for h in ordered):
        _mask_unused_bits(raw, first.bits_stored, first.signed)
    return raw


def _to_hu(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """HU from stored values, in place where possible: int16 when exact and in range, else float32."""
    integral = bool(np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)))
    if integral and raw.dtype.kind in "iu":
        raw_max = int(raw.max())
        raw_min = 0 if raw.dtype.kind == "u" else int(raw.min())  # one pass less for unsigned storage
        lo = raw_min + int(intercepts.min())
        hi = raw_max + int(intercepts.max())
        if lo >= -32768 and hi <= 32767:
            if raw.dtype == np.int16 or (raw.dtype == np.uint16 and raw_max <= 32767):
                hu = raw.view(np.int16)  # same bits: values below 32768 read the same signed
            else:
                hu = raw.astype(np.int16)
            if np.all(intercepts == intercepts[0]):
                if intercepts[0]:
                    hu += np.int16(intercepts[0])
            else:
                for k, intercept in enumerate(intercepts):
                    hu[k] += np.int16(intercept)
            return hu
    hu = raw.astype(np.float32)
    for k in range(hu.shape[0]):
        if slopes[k] != 1:
            hu[k] *= np.float32(slopes[k])
        if intercepts[k]:
            hu[k] += np.float32(intercepts[k])
    return hu


def stack_to_volume(ordered: Sequence[SliceHeader]) -> Volume:
    """Decode slices (in stack order, already checked) into a volume whose first slice is ``ordered[0]``.

    HU come back as int16 when every slice has integral rescaling and the values fit, else float32. The array is
    (i, j, k) = (column, row, slice) as everywhere in liverseg; it is a Fortran-ordered view of the slices as
    read (NIfTI's own layout), so writing it needs no copy.
    """
    raw = stored_values(ordered)
    slopes = np.array([h.slope for h in ordered], dtype=np.float64)
    intercepts = np.array([h.intercept for h in ordered], dtype=np.float64)
    hu = _to_hu(raw, slopes, intercepts)
    array = np.transpose(hu, (2, 1, 0))  # (cols=i, rows=j, k)
    return Volume(array=array, affine=np.array(stack_affine(ordered)))


def write_nifti(ordered: Sequence[SliceHeader], path: Path, form: StoredForm | None) -> Path:
    """``dicom_volume.write_nifti`` for stacks that must be decoded: the stored values (masked, sign-extended) with
    ``form``'s rescale when the slices share one, else HU. The same voxels the byte copy gives when both can."""
    if form is None:
        return save_fast(path, stack_to_volume(ordered))
    first = ordered[0]
    raw = stored_values(ordered).view(form.dtype)  # unsigned values with unused high bits fit the signed type
    return nifti1.write(path, (first.columns, first.rows, len(ordered)), form.dtype, stack_affine(ordered),
                        [memoryview(raw).cast("B")], slope=form.slope, inter=form.inter)
