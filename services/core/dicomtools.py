"""The ``liverseg dicom`` tools as functions: DICOM series → NIfTI, NIfTI (+ label) → DICOM CT + SEG, and a
folder of series → fixed-size slice groups with a JSON report.

They use the same imaging code as the convert and group stages, without the store. Start-up time counts for
these commands (``to-nifti`` is compared with dcm2niix as a whole process), so modules only some of them need
(hashlib, tempfile, numpy) are imported where used. Each raises ``InputError``
(naming the file and the reason) for bad data, and never overwrites: an output that exists with the same
content is left as it is (a re-run is a no-op), one that exists with other content is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InputError

if TYPE_CHECKING:
    from .imaging.dicom_write import EncodedSeries, SeriesInfo
    from .imaging.geometry import Grid, Volume

ENV_CODE_VERSION = "LIVERSEG_CODE_VERSION"  # the same variable ``manifest.code_version`` reads


def code_version() -> str:
    """``manifest.code_version()`` without importing the store client (start-up time of the tools)."""
    from . import __version__  # resolved on first use (importlib.metadata): to-nifti never needs it

    commit = os.environ.get(ENV_CODE_VERSION)
    return f"{__version__}+{commit}" if commit else __version__


def file_sha256(path: Path) -> str:
    import hashlib

    from .imaging.nifti1 import map_file

    return hashlib.sha256(map_file(path)).hexdigest()


class OutputExists(InputError):
    """The output exists with other content; it is never overwritten."""


# -- DICOM → NIfTI -------------------------------------------------------------------------------------------
@dataclass
class ToNiftiResult:
    out: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    n_files: int
    notes: list[str]
    skipped: list  # dicom_read.Skipped: files of the folder that are no CT slices
    unchanged: bool = False


def to_nifti(series_dir: Path, out: Path, *, overwrite: bool = False) -> ToNiftiResult:
    """The one CT series in ``series_dir`` as a NIfTI volume ordered along the slice normal, qform and sform set:
    the stored values with the series' rescale as scl_slope/scl_inter when the slices share one (as dcm2niix
    writes), else HU (see ``dicom_read.write_nifti``)."""
    from .imaging import dicom_read, geometry

    out = Path(out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise InputError(f"output {out.name} must end in .nii or .nii.gz")
    if out.is_dir():
        raise InputError(f"output {out} is a folder: name the file to write")
    ordered, report = dicom_read.read_stack(dicom_read.series_files(series_dir))
    spacing = geometry.spacing(dicom_read.stack_affine(ordered))
    result = ToNiftiResult(out, (ordered[0].columns, ordered[0].rows, len(ordered)),
                           tuple(round(s, 6) for s in spacing), len(ordered), report.notes, report.skipped)
    if out.exists() and not overwrite:
        # Compare with what we would write: identical is a no-op, anything else is refused.
        fresh = dicom_read.write_nifti(ordered, out.with_name(f".new-{os.getpid()}-{out.name}"))  # same suffix
        try:
            if not _same_bytes(fresh, out):
                raise OutputExists(f"{out} exists with other content; not overwritten (remove it, or --force)")
        finally:
            fresh.unlink()
        result.unchanged = True
        return result
    dicom_read.write_nifti(ordered, out)
    return result


def _same_bytes(a: Path, b: Path) -> bool:
    return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()


# -- NIfTI → DICOM -------------------------------------------------------------------------------------------
@dataclass
class FromNiftiResult:
    out: Path
    n_slices: int
    series_instance_uid: str
    seg: Path | None
    unchanged: bool = False


def uid_namespace(image: Path, label: Path | None, extra: str = "", *, digests: dict[Path, str] | None = None
                  ) -> str:
    """``cli | image SHA-256 | label SHA-256 | code version [| extra]``: see ``dicom_write``'s docstring."""
    digests = digests or {}
    parts = ["cli", digests.get(image) or file_sha256(image),
             (digests.get(label) or file_sha256(label)) if label else "", code_version()]
    return "|".join(parts + ([extra] if extra else []))


def from_nifti(image_path: Path, out_dir: Path, *, label_path: Path | None = None, patient_id: str | None = None,
               namespace: str = "", overwrite: bool = False) -> FromNiftiResult:
    """Write ``out_dir/ct/0001.dcm…`` (CT Image Storage) and, with a label, ``out_dir/seg.dcm`` (DICOM SEG)."""
    from concurrent.futures import ThreadPoolExecutor

    from .imaging import dicom_write

    patient = patient_id or re.sub(r"\.nii(\.gz)?$", "", Path(image_path).name)[:64] or "anonymous"
    try:
        dicom_write.check_patient_id(patient)  # before the inputs are read: the slow part
    except InputError as exc:
        if patient_id:
            raise
        raise InputError(f"{exc.reason}; it comes from the image file name: give a patient id (--patient-id)"
                         ) from None
    inputs = [Path(p) for p in (image_path, label_path) if p is not None]
    with ThreadPoolExecutor(1) as pool:
        # Hash the input files (for the UIDs) while they are decoded: hashlib releases the GIL.
        hashing = {p: pool.submit(file_sha256, p) for p in inputs if p.is_file()}
        grid, encode = _image_encoder(Path(image_path))
        label = None
        if label_path:
            from .imaging import nifti

            label = nifti.load_fast(label_path, kind="label")
        code_version()  # resolved now (importlib.metadata, ~40 ms) while the hash runs, not after it
        digests = {p: f.result() for p, f in hashing.items()}
    namespace = uid_namespace(Path(image_path), Path(label_path) if label_path else None, namespace, digests=digests)
    values = None
    if label is not None:
        from .imaging.label import check_label

        values = check_label(label, grid)
    series = encode(dicom_write.SeriesInfo(patient_id=patient, uid_namespace=namespace))
    out_dir = Path(out_dir)
    ct_dir, seg_path = out_dir / "ct", out_dir / "seg.dcm"
    seg_bytes = None
    if values is not None:
        seg_bytes = _seg_bytes(values, series, namespace)
    result = FromNiftiResult(out_dir, len(series.parts), series.series_instance_uid,
                             seg_path if seg_bytes is not None else None)
    # Either one left from another run is refused: a seg.dcm would be replaced, or left beside CT it does not fit.
    if (ct_dir.exists() or seg_path.exists()) and not overwrite:
        if seg_bytes is None:
            seg_same = not seg_path.exists()
        else:
            seg_same = seg_path.is_file() and _same_seg_file(seg_path, seg_bytes)
        ct_same = dicom_write.same_files(series, ct_dir)
        if not (seg_same and ct_same):
            differ = " and ".join(name for name, same in (("ct/", ct_same), ("seg.dcm", seg_same)) if not same)
            raise OutputExists(f"{out_dir} exists with other content ({differ} not what this input gives); "
                               "not overwritten (remove it, or --force)")
        result.unchanged = True
        return result
    if overwrite and ct_dir.exists():
        shutil.rmtree(ct_dir)
    series.write(ct_dir)
    if seg_bytes is not None:
        seg_path.write_bytes(seg_bytes)
    elif overwrite and seg_path.exists():
        seg_path.unlink()
    return result


def _image_encoder(path: Path) -> tuple[Volume | Grid, Callable[[SeriesInfo], EncodedSeries]]:
    """The image's grid (what a label is checked against) and the function that encodes it as a CT series.

    A NIfTI whose voxels already are CT stored values (``dicom_write.stored_rescale``: int16/uint16, every CT
    NIfTI we have met) is encoded from its bytes as they are, without numpy; any other is loaded as a ``Volume``
    (numpy; nibabel for variants ``nifti1`` does not read) and its HU stored as ``choose_rescale`` decides.
    """
    from .imaging import dicom_write, nifti1
    from .imaging.geometry import Grid

    try:
        header, voxels, affine = nifti1.read_checked(path, kind="image")
    except nifti1.Unsupported:
        header = None
    if header is not None and dicom_write.stored_rescale(header) is not None:
        return Grid(header.shape, affine), lambda info: dicom_write.encode_stored(header, voxels, info)
    from .imaging import nifti

    if header is None:
        volume = nifti.load(path, kind="image")
    else:
        volume = nifti.volume_of(header, voxels, affine, kind="image", file=path.name)
    return volume, lambda info: dicom_write.encode_series(volume, info)


def _same_seg_file(path: Path, fresh: bytes) -> bool:
    """The SEG on disk is the one we would write now, made earlier (creation date/time aside)."""
    import io

    import pydicom

    from .imaging import seg

    try:
        return seg.same_seg(pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(fresh)))
    except Exception:  # unreadable: certainly not the same
        return False


def _seg_bytes(values, series, namespace: str) -> bytes:
    import io

    from .imaging import seg

    buffer = io.BytesIO()
    seg.label_to_seg(values, series.datasets(with_pixels=False), namespace).save_as(
        buffer, enforce_file_format=True)
    return buffer.getvalue()


# -- folder of series → groups -------------------------------------------------------------------------------
def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:40]


def series_folder_name(first) -> str:
    """A stable folder name per series: its number and a hash of its key (UIDs, or geometry when they are empty)."""
    import hashlib

    digest = hashlib.sha256("|".join(first.series_key).encode()).hexdigest()[:10]
    number = _safe(first.series_number) if first.series_number else "x"
    return f"series{number}-{digest}"


def group_folder(series_dir: Path, out_dir: Path, *, size: int = 64, remainder: str = "overlap") -> dict[str, Any]:
    """Group every CT series under ``series_dir`` into ``out_dir/<series>/gNNN/`` (DICOM copies + image.nii.gz).

    Files that are no CT slices (not DICOM, or DICOM objects of another kind) are listed as skipped, damaged CT
    slices as rejected; a series with problems (duplicates, gaps, uneven spacing,
    mixed orientations, gantry tilt, too few slices, undecodable pixels) is reported and left out; the other
    series are grouped. Returns the report, also written to ``out_dir/report.json``.
    """
    from .imaging import dicom_read, grouping

    series_dir, out_dir = Path(series_dir).resolve(), Path(out_dir).resolve()
    if out_dir == series_dir or series_dir in out_dir.parents:
        raise InputError(f"the output folder {out_dir} must not be inside the series folder {series_dir}")
    if size < 1:
        raise InputError(f"group size must be positive, got {size}")
    if remainder not in ("overlap", "drop"):
        raise InputError(f"unknown remainder policy {remainder!r} (overlap or drop)")
    files = dicom_read.series_files(series_dir)
    headers, skipped, rejected = [], [], []
    for path in files:
        try:
            headers.append(dicom_read.read_header(path))
        except InputError as exc:
            entry = {"file": str(path.relative_to(series_dir)), "reason": exc.reason}
            (skipped if isinstance(exc, dicom_read.NotASlice) else rejected).append(entry)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for members in dicom_read.split_series(headers):
        entries.append(_group_one(members, series_dir, out_dir, size, remainder, dicom_read, grouping))
    report = {
        "source": str(series_dir), "out": str(out_dir), "size": size, "remainder": remainder,
        "code_version": code_version(), "files": len(files), "skipped_files": skipped,
        "rejected_files": rejected,
        "series": sorted(entries, key=lambda e: e["folder"]),
    }
    _write_json(out_dir / "report.json", report)
    return report


def _write_json(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _group_one(members, series_dir: Path, out_dir: Path, size: int, remainder: str, dicom_read, grouping
               ) -> dict[str, Any]:
    import hashlib
    import tempfile

    from .imaging import nifti

    ordered = dicom_read.sort_by_position(members)
    first = ordered[0]
    folder = series_folder_name(first)
    entry: dict[str, Any] = {
        "folder": folder, "status": "ok", "key": first.series_key[0],
        "study_instance_uid": first.study_uid, "series_instance_uid": first.series_uid,
        "frame_of_reference_uid": first.frame_of_reference_uid, "series_number": first.series_number,
        "series_description": first.series_description, "n_slices": len(ordered),
        "transfer_syntaxes": sorted({h.transfer_syntax for h in ordered}),
    }
    report = dicom_read.check_stack(ordered)
    entry.update({"slice_spacing_mm": round(report.slice_spacing, 6), "slice_thickness_mm": report.slice_thickness,
                  "notes": report.notes, "problems": report.problems})
    groups = []
    if not report.problems:
        try:
            groups = grouping.plan_groups(len(ordered), size, remainder)
        except InputError as exc:
            entry["problems"] = [exc.reason]
    if entry["problems"]:
        entry["status"] = "failed"
        return entry
    fingerprint = hashlib.sha256(json.dumps({
        "files": [[str(h.path.relative_to(series_dir)), file_sha256(h.path)] for h in ordered],
        "size": size, "remainder": remainder, "code": code_version()}).encode()).hexdigest()
    entry["fingerprint"] = fingerprint
    entry["groups"] = [{**g.as_dict(), "files": [f"{k:04d}_{ordered[k].path.name}" for k in (g.start, g.stop - 1)]}
                       for g in groups]
    covered = set().union(*(range(g.start, g.stop) for g in groups))
    entry["overlap_slices"] = sum(g.overlap for g in groups)
    entry["dropped_slices"] = len(ordered) - len(covered)
    target = out_dir / folder
    if target.exists():
        previous = _read_json(target / "series.json")
        if previous.get("fingerprint") != fingerprint:
            entry.update(status="failed", problems=[
                f"{target} exists from other input, parameters or code; not overwritten"])
            return entry
        return {**previous, "status": "unchanged"}
    try:
        volume = dicom_read.stack_to_volume(ordered)
    except InputError as exc:
        entry.update(status="failed", problems=[str(exc)])
        return entry
    entry["groups"] = [{**g, "origin_ras_mm": [round(float(v), 4) for v in
                                              (volume.affine @ [0.0, 0.0, g["start"], 1.0])[:3]]}
                       for g in entry["groups"]]
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=out_dir))
    try:
        for g in groups:
            dicom_dir = staging / g.name / "dicom"
            dicom_dir.mkdir(parents=True)
            for k in range(g.start, g.stop):
                # A copy: the sources are never moved, renamed or modified.
                shutil.copyfile(ordered[k].path, dicom_dir / f"{k:04d}_{ordered[k].path.name}")
            nifti.save_fast(staging / g.name / "image.nii.gz", grouping.slab(volume, g.start, g.stop))
        _write_json(staging / "series.json", entry)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return entry


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
