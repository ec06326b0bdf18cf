"""A checked DICOM stack as a NIfTI file or a volume: bytes copied as they are when the slices allow, else decoded.

``write_nifti`` copies uncompressed little-endian slices into the NIfTI file byte for byte when those bytes are the
stored values (the common CT case), with the series' one rescale as ``scl_slope``/``scl_inter``, as dcm2niix does;
this path is plain Python (no numpy: the ``liverseg dicom to-nifti`` start-up counts). Anything else (compressed
transfer syntaxes, unused high bits to mask, per-slice rescales), and every volume in memory (``stack_to_volume``),
is decoded by ``dicom_pixels`` with numpy; the result is the same voxels either way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from liverseg.imaging import nifti1
from liverseg.imaging.dicom_read import SeriesReport, SliceHeader, read_native, read_stack, stack_affine, stored_form

if TYPE_CHECKING:
    from liverseg.imaging.geometry import Volume

__all__ = ["series_to_volume", "stack_to_volume", "write_nifti"]

# Pixel bytes checked at a time by the byte-copy path: its temporaries stay below malloc's mmap threshold (128 KiB),
# so they reuse memory instead of faulting in fresh pages for every slice (half the time of whole-slice checks here).
CHECK_BYTES = 1 << 16


class _NotAsStored(Exception):
    """A slice's bytes are not its values as they are (unused high bits set): it has to be decoded."""


def _top_byte_table(bits_allocated: int, bits_stored: int, signed: bool) -> bytes | None:
    """A ``bytes.translate`` table that maps each value the most significant byte of a stored value can take to 0
    when its unused high bits already are what PS3.5 §8.1.1 makes of them (zero; copies of the sign bit when
    signed), and to 0x80 otherwise: the translated bytes are ASCII exactly when a slice is clean. None when every
    byte is (no unused bits in the top byte)."""
    used = bits_stored - (bits_allocated - 8)  # bits of the top byte that belong to the value (>= 1 here)
    if used >= 8:
        return None
    if signed:
        half = 1 << (used - 1)
        clean = range(half), range(256 - half, 256)
    else:
        clean = (range(1 << used),)
    table = bytearray(b"\x80" * 256)
    for values in clean:
        table[values.start:values.stop] = bytes(len(values))
    return bytes(table)


def _read_ahead(ordered: Sequence[SliceHeader], buffers: int = 3) -> Iterator[bytearray]:
    """Each slice's native pixel bytes in turn, read by a second thread while the caller works on the ones before
    (file reads release the GIL: ~30 % less wall time on two cores here). A buffer handed out is reused once
    the caller asks for the next one; a read error is raised here, in the caller's thread."""
    import queue
    import threading

    size = ordered[0].rows * ordered[0].columns * ordered[0].bits_allocated // 8
    free: queue.SimpleQueue = queue.SimpleQueue()
    ready: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(buffers):
        free.put(bytearray(size))
    stop = threading.Event()

    def reader() -> None:
        for h in ordered:
            buffer = free.get()
            if stop.is_set():
                return
            try:
                read_native(h, buffer)
            except BaseException as exc:  # handed to the caller, who raises it
                ready.put(exc)
                return
            ready.put(buffer)

    thread = threading.Thread(target=reader, name="liverseg-read-ahead", daemon=True)
    thread.start()
    try:
        previous = None
        for _ in ordered:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            if previous is not None:
                free.put(previous)
            previous = item
            yield item
    finally:
        stop.set()
        free.put(bytearray())  # wakes the reader if it waits for a buffer
        thread.join()


def _slices_as_stored(ordered: Sequence[SliceHeader]) -> Iterator[memoryview]:
    """Each slice's pixel bytes in turn, read as they are (``_read_ahead``); ``_NotAsStored`` as soon as a slice's
    unused high bits are set. The check maps every value's top byte through a table and asks whether the result
    is ASCII (a strided copy, ``translate``, ``isascii``: C speed, no numpy), ``CHECK_BYTES`` at a time."""
    first = ordered[0]
    width = first.bits_allocated // 8
    table = _top_byte_table(first.bits_allocated, first.bits_stored, first.signed)
    starts = range(0, first.rows * first.columns * width, CHECK_BYTES)
    with contextlib.closing(_read_ahead(ordered)) as buffers:  # the reader thread ends here, however this does
        for h, buffer in zip(ordered, buffers, strict=True):
            if table is not None and not all(buffer[s + width - 1:s + CHECK_BYTES:width].translate(table).isascii()
                                             for s in starts):
                raise _NotAsStored(h.path.name)
            yield memoryview(buffer)


def write_nifti(ordered: Sequence[SliceHeader], path: Path) -> Path:
    """A checked stack as a NIfTI-1 file (.nii or .nii.gz), qform and sform set, x fastest = DICOM columns.

    Voxels are the stored values with the one rescale as scl_slope/scl_inter when the slices share them
    (``stored_form``, as dcm2niix writes), else HU (int16 when exact, else float32). Uncompressed little-endian
    slices whose bytes are those values are copied as they are, without numpy (DICOM pixel data is row-major,
    columns fastest: NIfTI's order for our axes); everything else is decoded by ``dicom_pixels``, to the same
    voxels.
    """
    first = ordered[0]
    form = stored_form(ordered)
    if form is not None and all(h.pixel_offset is not None for h in ordered) and \
            first.bits_stored > first.bits_allocated - 8:
        try:
            # closing: the read-ahead thread ends here even when the write fails half-way
            with contextlib.closing(_slices_as_stored(ordered)) as slices:
                return nifti1.write(path, (first.columns, first.rows, len(ordered)), form.dtype,
                                    stack_affine(ordered), slices, slope=form.slope, inter=form.inter)
        except _NotAsStored:
            pass  # unused high bits to mask: decode
    from liverseg.imaging import dicom_pixels

    return dicom_pixels.write_nifti(ordered, path, form)


def stack_to_volume(ordered: Sequence[SliceHeader]) -> Volume:
    """Decode slices (in stack order, already checked) into a volume in HU whose first slice is ``ordered[0]``
    (numpy; see ``dicom_pixels.stack_to_volume``)."""
    from liverseg.imaging import dicom_pixels

    return dicom_pixels.stack_to_volume(ordered)


def series_to_volume(paths: Iterable[Path]) -> tuple[Volume, SeriesReport, list[SliceHeader]]:
    """Read a one-series folder's files into a volume ordered along the slice normal."""
    ordered, report = read_stack(paths)
    return stack_to_volume(ordered), report, ordered
