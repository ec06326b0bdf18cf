"""liverseg dicom to-nifti | from-nifti | group: the pipeline's DICOM steps on local files, no store needed.

  liverseg dicom to-nifti SERIES_DIR OUT.nii.gz            one CT series → NIfTI (like dcm2niix)
  liverseg dicom from-nifti IMAGE.nii.gz OUT_DIR [--label LABEL.nii.gz]
                                                          NIfTI → CT Image Storage series (+ DICOM SEG)
  liverseg dicom group SERIES_DIR OUT_DIR --size 64       every series → 64-slice groups + report.json

``from-nifti`` is the convert stage's ``encode_case`` and ``group`` the group stage's ``group_headers`` and
``write_groups``, on files: with ``--namespace RUN --patient-id CASE`` from-nifti writes the very files the
convert stage writes for that case. What is added here is the files' edge: an output that exists with the same
content is left as it is (a re-run is a no-op), one with other content is refused unless ``--force``.

Bad data exits 1 with one line on stderr (input, file, reason); a usage error exits 2. No traceback, ever. Start-up
time counts (``to-nifti`` is compared with dcm2niix as a whole process), so modules are imported where used.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverseg.errors import InputError
from liverseg.files import same_bytes, write_atomic
from liverseg.provenance import code_version

__all__ = ["FromNiftiResult", "OutputExists", "ToNiftiResult", "add_arguments", "from_nifti", "group_folder", "main",
           "to_nifti"]


class OutputExists(InputError):
    """The output exists with other content; it is never overwritten."""


def file_sha256(path: Path) -> str:
    import hashlib

    from liverseg.imaging.nifti1 import map_file

    return hashlib.sha256(map_file(path)).hexdigest()


# -- DICOM → NIfTI -------------------------------------------------------------------------------------------
@dataclass
class ToNiftiResult:
    out: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    n_files: int
    notes: list[str]
    skipped: list  # dicom_read.Skipped: files of the folder that are no CT slices
    unchanged: bool = False


def to_nifti(series_dir: Path, out: Path, *, overwrite: bool = False) -> ToNiftiResult:
    """The one CT series in ``series_dir`` as a NIfTI volume ordered along the slice normal, qform and sform set:
    the stored values with the series' rescale as scl_slope/scl_inter when the slices share one (as dcm2niix
    writes), else HU (see ``dicom_volume.write_nifti``)."""
    from liverseg.imaging import dicom_read, dicom_volume, geometry

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
        fresh = dicom_volume.write_nifti(ordered, out.with_name(f".new-{os.getpid()}-{out.name}"))  # same suffix
        try:
            if not same_bytes(fresh, out):
                raise OutputExists(f"{out} exists with other content; not overwritten (remove it, or --force)")
        finally:
            fresh.unlink()
        result.unchanged = True
        return result
    dicom_volume.write_nifti(ordered, out)
    return result


# -- NIfTI → DICOM -------------------------------------------------------------------------------------------
@dataclass
class FromNiftiResult:
    out: Path
    n_slices: int
    series_instance_uid: str
    seg: Path | None
    unchanged: bool = False


def from_nifti(image_path: Path, out_dir: Path, *, label_path: Path | None = None, patient_id: str | None = None,
               namespace: str = "cli", overwrite: bool = False) -> FromNiftiResult:
    """Write ``out_dir/ct/0001.dcm…`` (CT Image Storage) and, with a label, ``out_dir/seg.dcm`` (DICOM SEG), as
    the convert stage does (``encode_case``); UIDs from ``uid_namespace(namespace, patient, input hashes)``."""
    from concurrent.futures import ThreadPoolExecutor

    from liverseg.imaging import dicom_write
    from liverseg.stages.convert import encode_case, uid_namespace

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
        # Hash the input files (for the UIDs) while the image is read: hashlib releases the GIL.
        hashing = [pool.submit(file_sha256, p) if p.is_file() else None for p in inputs]
        code_version()  # resolved now (importlib.metadata, ~40 ms) while the hash runs, not after it
        digests = [f.result() if f else "" for f in hashing]
    info = dicom_write.SeriesInfo(patient_id=patient, uid_namespace=uid_namespace(
        namespace, patient, digests[0], digests[1] if label_path else None))
    encoded = encode_case(Path(image_path), Path(label_path) if label_path else None, info)
    out_dir = Path(out_dir)
    ct_dir, seg_path = out_dir / "ct", out_dir / "seg.dcm"
    result = FromNiftiResult(out_dir, len(encoded.series.parts), encoded.series.series_instance_uid,
                             seg_path if encoded.seg is not None else None)
    # Either one left from another run is refused: a seg.dcm would be replaced, or left beside CT it does not fit.
    if (ct_dir.exists() or seg_path.exists()) and not overwrite:
        seg_same = not seg_path.exists() if encoded.seg is None else (
            seg_path.is_file() and _same_seg_file(seg_path, encoded.seg))
        ct_same = dicom_write.same_files(encoded.series, ct_dir)
        if not (seg_same and ct_same):
            differ = " and ".join(name for name, same in (("ct/", ct_same), ("seg.dcm", seg_same)) if not same)
            raise OutputExists(f"{out_dir} exists with other content ({differ} not what this input gives); "
                               "not overwritten (remove it, or --force)")
        result.unchanged = True
        return result
    if overwrite and ct_dir.exists():
        shutil.rmtree(ct_dir)
    if overwrite and encoded.seg is None and seg_path.exists():
        seg_path.unlink()
    encoded.write(out_dir)
    return result


def _same_seg_file(path: Path, fresh: bytes) -> bool:
    """The SEG on disk is the one we would write now, made earlier (creation date/time aside)."""
    import io

    import pydicom

    from liverseg.imaging import seg

    try:
        return seg.same_seg(pydicom.dcmread(path), pydicom.dcmread(io.BytesIO(fresh)))
    except Exception:  # unreadable: certainly not the same
        return False


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
    """Group every CT series under ``series_dir`` into ``out_dir/<series>/`` as the group stage does (``volume/``
    and ``gNNN/image.nii.gz``), with copies of each group's DICOM files in ``gNNN/dicom/``.

    Files that are no CT slices (not DICOM, or DICOM objects of another kind) are listed as skipped, damaged CT
    slices as rejected; a series with problems (duplicates, gaps, uneven spacing, mixed orientations, gantry
    tilt, too few slices, undecodable pixels) is reported and left out; the other series are grouped. Returns the
    report, also written to ``out_dir/report.json``.
    """
    from liverseg.config import GroupConfig
    from liverseg.imaging import dicom_read

    series_dir, out_dir = Path(series_dir).resolve(), Path(out_dir).resolve()
    if out_dir == series_dir or series_dir in out_dir.parents:
        raise InputError(f"the output folder {out_dir} must not be inside the series folder {series_dir}")
    if size < 1:
        raise InputError(f"group size must be positive, got {size}")
    if remainder not in ("overlap", "drop"):
        raise InputError(f"unknown remainder policy {remainder!r} (overlap or drop)")
    cfg = GroupConfig(size=size, order="position", remainder=remainder)
    files = dicom_read.series_files(series_dir)
    headers: list = []
    skipped: list[dict[str, str]] = []
    rejected: list[dict[str, str]] = []
    for path in files:
        try:
            headers.append(dicom_read.read_header(path))
        except InputError as exc:
            entry = {"file": str(path.relative_to(series_dir)), "reason": exc.reason}
            (skipped if isinstance(exc, dicom_read.NotASlice) else rejected).append(entry)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = [_group_one(members, series_dir, out_dir, cfg) for members in dicom_read.split_series(headers)]
    report = {
        "source": str(series_dir), "out": str(out_dir), "size": size, "remainder": remainder,
        "code_version": code_version(), "files": len(files), "skipped_files": skipped, "rejected_files": rejected,
        "series": sorted(entries, key=lambda e: e["folder"]),
    }
    write_atomic(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report


def _group_one(members, series_dir: Path, out_dir: Path, cfg) -> dict[str, Any]:
    import hashlib
    import tempfile

    from liverseg.imaging import dicom_read
    from liverseg.stages.group import group_headers, write_groups

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
    fingerprint = hashlib.sha256(json.dumps({
        "files": [[str(h.path.relative_to(series_dir)), file_sha256(h.path)] for h in ordered],
        "group": cfg.model_dump(mode="json"), "code": code_version()}).encode()).hexdigest()
    target = out_dir / folder
    if target.exists():
        previous = _read_json(target / "series.json")
        if previous.get("fingerprint") != fingerprint:
            return {**entry, "status": "failed",
                    "problems": [f"{target} exists from other input, parameters or code; not overwritten"]}
        return {**previous, "status": "unchanged"}
    report = dicom_read.check_stack(ordered)
    entry.update({"slice_spacing_mm": round(report.slice_spacing, 6), "slice_thickness_mm": report.slice_thickness,
                  "notes": report.notes, "problems": report.problems})
    try:
        grouped = group_headers(ordered, None, cfg)
    except InputError as exc:
        entry.update(status="failed", problems=report.problems or [str(exc)])
        return entry
    entry["fingerprint"] = fingerprint
    entry["groups"] = [{**g.as_dict(), "files": [f"{k:04d}_{ordered[k].path.name}" for k in (g.start, g.stop - 1)],
                        "origin_ras_mm": [round(float(v), 4) for v in
                                          (grouped.volume.affine @ [0.0, 0.0, g.start, 1.0])[:3]]}
                       for g in grouped.groups]
    covered = set().union(*(range(g.start, g.stop) for g in grouped.groups))
    entry["overlap_slices"] = sum(g.overlap for g in grouped.groups)
    entry["dropped_slices"] = len(ordered) - len(covered)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=out_dir))
    try:
        write_groups(grouped, staging, copy_dicom=True)
        write_atomic(staging / "series.json", json.dumps(entry, indent=2) + "\n")
        os.replace(staging, target)  # the series appears whole, or not at all
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return entry


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# -- the command ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = actions.add_parser("to-nifti", help="one CT series folder -> NIfTI (.nii or .nii.gz)",
                           description="Read the one CT series in SERIES_DIR (any file names, any order; JPEG 2000, "
                                       "JPEG-LS, JPEG lossless, RLE and deflate decoded; files that are no CT "
                                       "slices skipped and named), order it along the slice normal, check it, and "
                                       "write it as NIfTI: the slices' stored values with their rescale as "
                                       "scl_slope/scl_inter, as dcm2niix does (readers apply it: HU), or HU when "
                                       "the slices' rescales differ.")
    p.add_argument("series_dir", type=Path, metavar="SERIES_DIR")
    p.add_argument("out", type=Path, metavar="OUT.nii.gz")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists with other content")
    p = actions.add_parser("from-nifti", help="NIfTI image (+ label) -> DICOM CT series (+ DICOM SEG)",
                           description="Write OUT_DIR/ct/0001.dcm... (CT Image Storage, one file per slice) and, "
                                       "with --label, OUT_DIR/seg.dcm (DICOM SEG: 1 liver, 2 tumour), as the "
                                       "convert stage does. UIDs are derived from the namespace, the patient id, "
                                       "the input files' content and the code version: a re-run writes the same "
                                       "files.")
    p.add_argument("image", type=Path, metavar="IMAGE.nii.gz")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--label", type=Path, metavar="LABEL.nii.gz", help="label map on the image's voxels")
    p.add_argument("--patient-id", default=None,
                   help="Patient ID, Latin-1 without backslash (default: the image file name less .nii/.nii.gz, "
                        "refused when it has other characters)")
    p.add_argument("--namespace", default="cli",
                   help="the scope mixed into the UIDs (default 'cli'; the convert stage uses the run id)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR/ct and seg.dcm if they differ")
    p = actions.add_parser("group", help="every CT series in a folder -> fixed-size slice groups + report.json",
                           description="Split SERIES_DIR's files into series (Study/Series UIDs, else Frame of "
                                       "Reference + geometry), order each along its normal, check it (duplicates, "
                                       "gaps, uneven spacing, mixed orientations, gantry tilt) and write "
                                       "OUT_DIR/<series>/volume/image.nii.gz and gNNN/image.nii.gz as the group "
                                       "stage does, with copies of each group's files in gNNN/dicom/. Sources are "
                                       "only read.")
    p.add_argument("series_dir", type=Path, metavar="SERIES_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--size", type=int, default=64, help="slices per group (default 64)")
    p.add_argument("--remainder", choices=["overlap", "drop"], default="overlap",
                   help="overlap (default): a last group ends at the last slice, overlapping its neighbour; "
                        "drop: leftover slices are not grouped")


def main(args: argparse.Namespace) -> int:
    source = getattr(args, "series_dir", None) or getattr(args, "image", None)
    try:
        return {"to-nifti": _to_nifti, "from-nifti": _from_nifti, "group": _group}[args.action](args)
    except InputError as exc:
        if source is not None and str(source) not in str(exc):  # the line names the input the user gave
            raise InputError(f"{source}: {exc}") from None
        raise


def _warn(command: str, source: Path, skipped: list) -> None:
    from liverseg.imaging.dicom_read import skipped_line

    if skipped:
        print(f"liverseg dicom {command}: warning: {source}: {skipped_line(skipped)}", file=sys.stderr)


def _to_nifti(args: argparse.Namespace) -> int:
    r = to_nifti(args.series_dir, args.out, overwrite=args.force)
    _warn("to-nifti", args.series_dir, r.skipped)
    spacing = "x".join(f"{s:g}" for s in r.spacing)
    state = "unchanged (same content)" if r.unchanged else "wrote"
    notes = f"; notes: {'; '.join(r.notes)}" if r.notes else ""
    print(f"{state} {r.out}: {'x'.join(map(str, r.shape))} voxels, {spacing} mm, from {r.n_files} slices{notes}")
    return 0


def _from_nifti(args: argparse.Namespace) -> int:
    r = from_nifti(args.image, args.out_dir, label_path=args.label, patient_id=args.patient_id,
                   namespace=args.namespace, overwrite=args.force)
    state = "unchanged (same content)" if r.unchanged else "wrote"
    seg = f" and {r.seg}" if r.seg else ""
    print(f"{state} {r.out / 'ct'} ({r.n_slices} CT slices, series {r.series_instance_uid}){seg}")
    return 0


def _group(args: argparse.Namespace) -> int:
    from liverseg.imaging.dicom_read import Skipped

    report = group_folder(args.series_dir, args.out_dir, size=args.size, remainder=args.remainder)
    done = [s for s in report["series"] if s["status"] != "failed"]
    failed = [s for s in report["series"] if s["status"] == "failed"]
    groups = sum(len(s["groups"]) for s in done)
    print(f"{len(done)} series grouped into {groups} groups of {args.size} in {args.out_dir}; "
          f"report {Path(args.out_dir) / 'report.json'}")
    _warn("group", args.series_dir, [Skipped(s["file"], s["reason"]) for s in report["skipped_files"]])
    if not failed and not report["rejected_files"]:
        return 0
    parts = [f"{s['folder']}: {'; '.join(s['problems'])}" for s in failed[:3]]
    parts += [f"{r['file']}: {r['reason']}" for r in report["rejected_files"][:3]]
    counts = [f"{len(failed)} of {len(report['series'])} series not grouped"] if failed else []
    counts += [f"{len(report['rejected_files'])} files rejected"] if report["rejected_files"] else []
    raise InputError(f"{args.series_dir}: {', '.join(counts)} ({' | '.join(parts)}); see report.json")
