"""DICOM → volume: the fast header scanner against pydicom, every transfer syntax we meet, and real-world quirks."""

from __future__ import annotations

import dataclasses
import struct
import threading

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from dicom_helpers import dcmqi_dir, dcmtk, rewrite, tcia_files
from liverseg.errors import InputError
from liverseg.imaging import dicom_pixels, dicom_read, dicom_scan, dicom_volume, dicom_write, nifti1
from liverseg.imaging.geometry import Volume


@pytest.fixture(scope="module")
def four_slices(tmp_path_factory):
    """Four real TCIA slices (uncompressed implicit VR), copied, and their volume as read."""
    out = tmp_path_factory.mktemp("four")
    files = rewrite(tcia_files()[60:64], out)
    volume, _, _ = dicom_volume.series_to_volume(files)
    return files, volume


def test_scanner_agrees_with_pydicom_on_every_real_file():
    for path in [*tcia_files(), *sorted((dcmqi_dir() / "dicom").glob("*.dcm"))]:
        h = dicom_read.read_header(path)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert h.pixel_offset is not None  # the fast path, not the pydicom fallback
        np.testing.assert_array_equal(h.position, [float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(h.orientation, [float(v) for v in ds.ImageOrientationPatient], atol=1e-6)
        np.testing.assert_array_equal(h.pixel_spacing, [float(v) for v in ds.PixelSpacing])
        assert (h.rows, h.columns) == (ds.Rows, ds.Columns)
        assert (h.sop_instance_uid, h.series_uid, h.study_uid) == (ds.SOPInstanceUID, ds.SeriesInstanceUID,
                                                                   ds.StudyInstanceUID)
        assert h.frame_of_reference_uid == ds.FrameOfReferenceUID
        assert (h.slope, h.intercept) == (float(ds.RescaleSlope), float(ds.RescaleIntercept))
        assert (h.bits_allocated, h.bits_stored, h.signed) == (ds.BitsAllocated, ds.BitsStored,
                                                              ds.PixelRepresentation == 1)
        assert h.slice_thickness == float(ds.SliceThickness)
        # The pixel values read at the scanned offset are pydicom's.
        full = pydicom.dcmread(path)
        raw = np.fromfile(path, dtype=f"<{'i' if h.signed else 'u'}2", count=h.rows * h.columns,
                          offset=h.pixel_offset).reshape(h.rows, h.columns)
        np.testing.assert_array_equal(raw & ((1 << h.bits_stored) - 1) if not h.signed else raw, full.pixel_array)


def test_volume_hu_equal_pydicom_rescaled_values(four_slices):
    files, volume = four_slices
    ordered = dicom_read.sort_by_position(dicom_read.read_headers(files))
    for k, h in enumerate(ordered):
        ds = pydicom.dcmread(h.path)
        expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(volume.array[:, :, k], expected.T)
    assert volume.array.dtype == np.int16


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, RLELossless])
def test_compressed_series_decode_to_the_same_hu(syntax, four_slices, tmp_path):
    files, expected = four_slices
    out = rewrite(files, tmp_path / "c", edit=lambda ds, i: ds.compress(syntax))
    assert pydicom.dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
    volume, _, ordered = dicom_volume.series_to_volume(out)
    assert all(h.pixel_offset is None for h in ordered)  # decoded by pydicom + pylibjpeg
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_array_equal(volume.affine, expected.affine)


@pytest.mark.parametrize(("tool", "flag", "syntax"), [
    ("dcmcjpeg", "+e1", "1.2.840.10008.1.2.4.70"),        # JPEG lossless, first-order prediction
    ("dcmconv", "+td", "1.2.840.10008.1.2.1.99"),        # deflated explicit VR little endian
    ("dcmconv", "+tb", "1.2.840.10008.1.2.2"),           # explicit VR big endian (retired, still met)
])
def test_dcmtk_encodings_decode_to_the_same_hu(tool, flag, syntax, four_slices, tmp_path):
    files, expected = four_slices
    (tmp_path / "c").mkdir()
    for f in files:
        dcmtk(tool, flag, str(f), str(tmp_path / "c" / f.name))
    out = sorted((tmp_path / "c").glob("*.dcm"))
    assert str(pydicom.dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    volume, _, _ = dicom_volume.series_to_volume(out)
    np.testing.assert_array_equal(volume.array, expected.array)
    np.testing.assert_array_equal(volume.affine, expected.affine)


def test_monochrome1_does_not_change_hu(four_slices, tmp_path):
    """MONOCHROME1 is a display instruction (low values white); HU come from the rescale alone (dcm2niix agrees)."""
    files, expected = four_slices
    out = rewrite(files, tmp_path / "m1", edit=lambda ds, i: setattr(ds, "PhotometricInterpretation",
                                                                     "MONOCHROME1"))
    volume, _, ordered = dicom_volume.series_to_volume(out)
    assert ordered[0].photometric == "MONOCHROME1"
    np.testing.assert_array_equal(volume.array, expected.array)


def test_multiframe_is_refused(four_slices, tmp_path):
    files, _ = four_slices

    def two_frames(ds, i):
        ds.NumberOfFrames = 2
        ds.PixelData = ds.PixelData * 2

    out = rewrite(files[:1], tmp_path / "mf", edit=two_frames)
    with pytest.raises(InputError, match=r"multi-frame CT \(2 frames.*export single-frame slices") as caught:
        dicom_read.read_header(out[0])
    assert caught.value.file == "0000.dcm"

    out = rewrite(files[:1], tmp_path / "enh", edit=lambda ds, i: setattr(ds, "SOPClassUID",
                                                                          "1.2.840.10008.5.1.4.1.1.2.1"))
    with pytest.raises(InputError, match="multi-frame"):
        dicom_read.read_header(out[0])


def test_empty_uids_in_the_data_set_fall_back_to_file_meta_and_geometry(four_slices, tmp_path):
    """A real-world quirk: Study/Series/SOP Instance UIDs empty in the data set, present only in the file meta."""
    files, expected = four_slices

    def blank(ds, i):
        ds.StudyInstanceUID = ds.SeriesInstanceUID = ds.SOPInstanceUID = ""

    out = rewrite(files, tmp_path / "blank", edit=blank)
    headers = dicom_read.read_headers(out)
    for h, src in zip(headers, files, strict=True):
        assert h.sop_instance_uid == pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
        assert h.series_key[0] == "geometry"
    tilted = dataclasses.replace(headers[0], orientation=tuple(-1e-7 if v == 0 else v for v in h.orientation))
    assert tilted.series_key == headers[0].series_key  # -0.0000 and 0.0000 are one orientation
    volume, _, _ = dicom_volume.series_to_volume(out)
    np.testing.assert_array_equal(volume.array, expected.array)


def test_series_without_uids_are_split_by_frame_of_reference_and_geometry(four_slices, tmp_path):
    files, _ = four_slices

    def blank(frame):
        def edit(ds, i):
            ds.StudyInstanceUID = ds.SeriesInstanceUID = ""
            ds.FrameOfReferenceUID = frame
        return edit

    a = rewrite(files, tmp_path / "a", edit=blank("1.2.3"))
    b = rewrite(files, tmp_path / "b", edit=blank("1.2.4"))
    series = dicom_read.split_series(dicom_read.read_headers([*a, *b]))
    assert sorted(len(s) for s in series) == [4, 4]
    assert {s[0].path.parent.name for s in series} == {"a", "b"}
    with pytest.raises(InputError, match="2 series mixed in one folder"):
        dicom_read.single_series(dicom_read.read_headers([*a, *b]))


def test_overlapping_slices_use_their_spacing_and_are_noted():
    """dcmqi's GE slices: 1.25 mm thick, 1.0 mm apart. The grid uses the spacing; the overlap is a note."""
    volume, report, _ = dicom_volume.series_to_volume(sorted((dcmqi_dir() / "dicom").glob("*.dcm")))
    assert report.slice_spacing == pytest.approx(1.0, abs=1e-6)
    assert report.slice_thickness == 1.25
    assert any("overlapping slices" in n for n in report.notes)
    assert volume.spacing[2] == pytest.approx(1.0, abs=1e-6)


def test_unused_high_bits_are_masked_and_signed_values_sign_extended(four_slices, tmp_path):
    files, expected = four_slices

    def garbage_high_bits(ds, i):  # BitsStored 12, unsigned: bits 12-15 must be ignored (PS3.5 8.1.1)
        ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") | np.uint16(0xF000)).tobytes()

    out = rewrite(files, tmp_path / "hb", edit=garbage_high_bits)
    volume, _, _ = dicom_volume.series_to_volume(out)
    np.testing.assert_array_equal(volume.array, expected.array)

    def signed_12_bit(ds, i):  # the same HU as signed 12-bit two's complement, intercept 0, bits 12-15 garbage
        hu = np.frombuffer(ds.PixelData, "<u2").astype(np.int32) - 1000
        stored = (hu & 0x0FFF) | 0xA000
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        ds.PixelData = stored.astype("<u2").tobytes()

    out = rewrite(files, tmp_path / "s12", edit=signed_12_bit)
    volume, _, _ = dicom_volume.series_to_volume(out)
    clipped = np.where(expected.array > 2047, expected.array - 4096, expected.array)  # 12-bit range
    np.testing.assert_array_equal(volume.array, clipped)


def test_per_slice_rescale_and_fractional_slope(four_slices, tmp_path):
    files, expected = four_slices

    def shift(ds, i):  # different intercepts per slice, stored values adjusted: same HU
        ds.RescaleIntercept = -1000 - 10 * i
        ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") + np.uint16(10 * i)).tobytes()

    volume, _, _ = dicom_volume.series_to_volume(rewrite(files, tmp_path / "ic", edit=shift))
    np.testing.assert_array_equal(volume.array, expected.array)

    def halve(ds, i):
        ds.RescaleSlope = "0.5"

    volume, _, _ = dicom_volume.series_to_volume(rewrite(files, tmp_path / "sl", edit=halve))
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, (expected.array.astype(np.float32) + 1000) * 0.5 - 1000)


def test_long_private_header_is_read_in_full(four_slices, tmp_path):
    files, expected = four_slices

    def big_private(ds, i):
        ds.private_block(0x0011, "LIVERSEG TEST", create=True).add_new(0x01, "OB", b"\1" * 40000)

    out = rewrite(files, tmp_path / "big", edit=big_private)
    assert out[0].stat().st_size > dicom_read.HEAD_BYTES + 512 * 512 * 2
    volume, _, ordered = dicom_volume.series_to_volume(out)
    assert ordered[0].pixel_offset > dicom_read.HEAD_BYTES
    np.testing.assert_array_equal(volume.array, expected.array)


def test_scanner_skips_nested_undefined_length_sequences():
    """Explicit VR data set with an undefined-length sequence holding an undefined-length item: skipped whole."""
    def el(group, element, vr, value):
        if vr in (b"OB", b"OW", b"SQ", b"UN"):
            return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", group, element, vr, len(value)) + value

    meta_body = el(2, 0x10, b"UI", b"1.2.840.10008.1.2.1\0")
    meta = el(2, 0, b"UL", struct.pack("<I", len(meta_body))) + meta_body
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + el(0x0008, 0x0100, b"SH", b"T1") + \
        struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    sequence = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF) + item + \
        struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    body = el(0x0008, 0x0060, b"CS", b"CT") + sequence + el(0x0028, 0x0010, b"US", struct.pack("<H", 4)) + \
        el(0x7FE0, 0x0010, b"OW", b"\0" * 8)
    found = dicom_scan.scan(b"\0" * 128 + b"DICM" + meta + body, frozenset({0x00080060, 0x00280010, 0x00080100}))
    assert found.values == {0x00020010: b"1.2.840.10008.1.2.1\0", 0x00080060: b"CT", 0x00280010: b"\4\0"}
    assert found.pixel_length == 8


def test_a_head_ending_right_before_the_pixel_data_is_read_on(tmp_path):
    """A private element pads the header so the 16 KiB head ends exactly where PixelData starts: the head scans
    cleanly without pixel data, so the rest of the file must be read, not the file called pixel-less."""
    volume = Volume(np.arange(16 * 16 * 2, dtype=np.int16).reshape(16, 16, 2), np.diag([0.8, 0.8, 2.5, 1.0]))
    header, pixels = dicom_write.encode_series(volume, dicom_write.SeriesInfo("p1", "ns-head")).parts[0]
    body, pixel_head = header[:-12], header[-12:]  # PixelData's element header ends the encoded header
    creator = struct.pack("<HH2sH", 0x0029, 0x0010, b"LO", 4) + b"TEST"
    padding = dicom_read.HEAD_BYTES - len(body) - len(creator) - 12
    assert padding > 0 and padding % 2 == 0
    private = struct.pack("<HH2sHI", 0x0029, 0x1010, b"OB", 0, padding) + bytes(padding)
    path = tmp_path / "0001.dcm"
    path.write_bytes(body + creator + private + pixel_head + bytes(pixels))
    h = dicom_read.read_header(path)
    assert h.pixel_offset == dicom_read.HEAD_BYTES + 12
    np.testing.assert_array_equal(dicom_volume.stack_to_volume([h]).array[:, :, 0], volume.array[:, :, 0])


# -- DICOM -> NIfTI file: the byte copy (no numpy) and the decoding path write the same voxels ----------------
DECODE_TO_NIFTI = dicom_pixels.write_nifti


def nifti_both_ways(files, out_dir, monkeypatch) -> tuple[bytes, bytes, bool]:
    """(what ``write_nifti`` writes, what the numpy decoding writes for the same stack, whether the byte copy was
    taken). ``out_dir/ours.nii`` is ours."""
    ordered, _ = dicom_read.read_stack(files)
    decoded = []

    def record(*args):
        decoded.append(True)
        return DECODE_TO_NIFTI(*args)

    monkeypatch.setattr(dicom_pixels, "write_nifti", record)
    ours = dicom_volume.write_nifti(ordered, out_dir / "ours.nii").read_bytes()
    reference = DECODE_TO_NIFTI(ordered, out_dir / "decoded.nii", dicom_read.stored_form(ordered)).read_bytes()
    return ours, reference, not decoded


def hu_of(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def test_clean_slices_are_copied_as_stored_with_the_rescale_as_scl(four_slices, tmp_path, monkeypatch):
    files, expected = four_slices
    ours, decoded, copied = nifti_both_ways(files, tmp_path, monkeypatch)
    assert copied and ours == decoded
    img = nib.load(tmp_path / "ours.nii")
    assert img.get_data_dtype() == np.int16 and (img.dataobj.slope, img.dataobj.inter) == (1.0, -1000.0)
    np.testing.assert_array_equal(hu_of(tmp_path / "ours.nii"), expected.array)
    np.testing.assert_allclose(img.affine, expected.affine, atol=1e-4)


@pytest.mark.parametrize("kind", ["unsigned_garbage", "signed_clean", "signed_garbage", "signed_16"])
def test_unused_high_bits_decide_between_copy_and_decoding(kind, four_slices, tmp_path, monkeypatch):
    """Bits 12-15 copied only when they already are what PS3.5 8.1.1 makes of them (zero, or the sign); otherwise
    the slices are decoded (masked, sign-extended). The voxels are the same either way."""
    files, expected = four_slices
    hu = np.clip(expected.array, -2048, 2047)  # what 12-bit signed storage can hold

    def edit(ds, i):
        raw = np.frombuffer(ds.PixelData, "<u2")
        if kind == "unsigned_garbage":
            ds.PixelData = (raw | np.uint16(0xF000)).tobytes()
            return
        stored = np.clip(raw.astype(np.int32) - 1000, -2048, 2047)
        ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
        if kind == "signed_16":
            ds.BitsStored, ds.HighBit = 16, 15
        bits = (stored & 0x0FFF) | 0xA000 if kind == "signed_garbage" else stored
        ds.PixelData = (bits & 0xFFFF).astype("<u2").tobytes()

    out = rewrite(files, tmp_path / kind, edit=edit)
    ours, decoded, copied = nifti_both_ways(out, tmp_path, monkeypatch)
    assert copied == (kind in ("signed_clean", "signed_16"))
    assert ours == decoded
    want = expected.array if kind == "unsigned_garbage" else hu
    np.testing.assert_array_equal(hu_of(tmp_path / "ours.nii"), want)


def test_per_slice_rescales_and_compressed_slices_are_decoded(four_slices, tmp_path, monkeypatch):
    files, expected = four_slices

    def shift(ds, i):  # one intercept per slice: no single scl_inter, so the file holds HU
        ds.RescaleIntercept = -1000 - 10 * i
        ds.PixelData = (np.frombuffer(ds.PixelData, "<u2") + np.uint16(10 * i)).tobytes()

    ours, decoded, copied = nifti_both_ways(rewrite(files, tmp_path / "ic", edit=shift), tmp_path, monkeypatch)
    assert not copied and ours == decoded
    img = nib.load(tmp_path / "ours.nii")
    assert img.get_data_dtype() == np.int16 and (img.dataobj.slope, img.dataobj.inter) == (1.0, 0.0)
    np.testing.assert_array_equal(hu_of(tmp_path / "ours.nii"), expected.array)
    # A compressed copy of the series gives the very file the uncompressed series gives.
    plain, _, _ = nifti_both_ways(files, tmp_path, monkeypatch)
    compressed = rewrite(files, tmp_path / "j2k", edit=lambda ds, i: ds.compress(JPEG2000Lossless))
    ours, _, copied = nifti_both_ways(compressed, tmp_path, monkeypatch)
    assert not copied and ours == plain


def test_a_slice_cut_short_while_copying_is_an_error_naming_it(four_slices, tmp_path):
    files, _ = four_slices
    out = rewrite(files, tmp_path / "cut")
    ordered, _ = dicom_read.read_stack(out)
    threads = threading.active_count()
    ordered[2].path.write_bytes(ordered[2].path.read_bytes()[:-1000])  # after its header was read
    with pytest.raises(InputError, match="pixel data is cut short") as caught:
        dicom_volume.write_nifti(ordered, tmp_path / "x.nii")
    assert caught.value.file == ordered[2].path.name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut"]  # nothing half-written, no temporary left
    assert threading.active_count() == threads  # the read-ahead thread is gone


def test_a_write_failing_half_way_ends_the_read_ahead_thread(four_slices, tmp_path, monkeypatch):
    files, _ = four_slices
    ordered, _ = dicom_read.read_stack(files)
    threads = threading.active_count()

    def disk_full(path, shape, dtype, affine, chunks, **scaling):
        next(iter(chunks))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nifti1, "write", disk_full)
    with pytest.raises(OSError, match="No space left") as caught:
        dicom_volume.write_nifti(ordered, tmp_path / "x.nii")
    assert threading.active_count() == threads  # not only once the traceback (held here) lets the slices go
    assert caught.value.errno == 28
