"""liverseg dicom to-nifti | from-nifti | group: plain DICOM tools, no store needed.

  liverseg dicom to-nifti SERIES_DIR OUT.nii.gz            one CT series → NIfTI (like dcm2niix)
  liverseg dicom from-nifti IMAGE.nii.gz OUT_DIR [--label LABEL.nii.gz]
                                                          NIfTI → CT Image Storage series (+ DICOM SEG)
  liverseg dicom group SERIES_DIR OUT_DIR --size 64       every series → 64-slice groups + report.json

Bad data exits 1 with one line on stderr (input, file, reason); a usage error exits 2. No traceback, ever.
``liverseg dicom …`` starts without importing the stage graph or the store client (see ``cli.FAST_COMMANDS``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_DATA, EXIT_INTERNAL = 1, 3


def _add_commands(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="dicom_command", required=True, metavar="ACTION")
    p = actions.add_parser("to-nifti", help="one CT series folder -> NIfTI (.nii or .nii.gz)",
                           description="Read the one CT series in SERIES_DIR (any file names, any order; JPEG 2000, "
                                       "JPEG-LS, JPEG lossless, RLE and deflate decoded), order it along the slice "
                                       "normal, check it, and write it as NIfTI: the slices' stored values with "
                                       "their rescale as scl_slope/scl_inter, as dcm2niix does (readers apply it: "
                                       "HU), or HU when the slices' rescales differ.")
    p.add_argument("series_dir", type=Path, metavar="SERIES_DIR")
    p.add_argument("out", type=Path, metavar="OUT.nii.gz")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists with other content")
    p = actions.add_parser("from-nifti", help="NIfTI image (+ label) -> DICOM CT series (+ DICOM SEG)",
                           description="Write OUT_DIR/ct/0001.dcm... (CT Image Storage, one file per slice) and, "
                                       "with --label, OUT_DIR/seg.dcm (DICOM SEG: 1 liver, 2 tumour). UIDs are "
                                       "derived from the input files' content and the code version: a re-run "
                                       "writes the same files.")
    p.add_argument("image", type=Path, metavar="IMAGE.nii.gz")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--label", type=Path, metavar="LABEL.nii.gz", help="label map on the image's voxels")
    p.add_argument("--patient-id", default=None,
                   help="Patient ID, Latin-1 without backslash (default: the image file name less .nii/.nii.gz, "
                        "refused when it has other characters)")
    p.add_argument("--namespace", default="", help="extra text mixed into the UIDs (e.g. a site or run id)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR/ct and seg.dcm if they differ")
    p = actions.add_parser("group", help="every CT series in a folder -> fixed-size slice groups + report.json",
                           description="Split SERIES_DIR's files into series (Study/Series UIDs, else Frame of "
                                       "Reference + geometry), order each along its normal, check it (duplicates, "
                                       "gaps, uneven spacing, mixed orientations, gantry tilt) and copy it into "
                                       "OUT_DIR/<series>/gNNN/dicom/ with gNNN/image.nii.gz. Sources are only read.")
    p.add_argument("series_dir", type=Path, metavar="SERIES_DIR")
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    p.add_argument("--size", type=int, default=64, help="slices per group (default 64)")
    p.add_argument("--remainder", choices=["overlap", "drop"], default="overlap",
                   help="overlap (default): a last group ends at the last slice, overlapping its neighbour; "
                        "drop: leftover slices are not grouped")


def register(sub: argparse._SubParsersAction) -> None:
    """The ``dicom`` command group inside ``liverseg``'s parser (for ``liverseg --help``)."""
    parser = sub.add_parser("dicom", help="DICOM tools: to-nifti, from-nifti, group (no store needed)",
                            description=__doc__.split("\n\n")[0])
    _add_commands(parser)
    parser.set_defaults(func=main)


def run(argv: list[str]) -> int:
    """``liverseg dicom ARGV…`` without building the whole ``liverseg`` parser."""
    parser = argparse.ArgumentParser(prog="liverseg dicom", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_commands(parser)
    return main(parser.parse_args(argv))


def _fail(command: str, message: str, code: int) -> int:
    print(f"liverseg dicom {command}: {' '.join(message.split())}", file=sys.stderr)
    return code


def main(args: argparse.Namespace) -> int:
    from .errors import InputError

    command = args.dicom_command
    try:
        if command == "to-nifti":
            return _to_nifti(args)
        if command == "from-nifti":
            return _from_nifti(args)
        return _group(args)
    except InputError as exc:
        source = getattr(args, "series_dir", None) or getattr(args, "image", None)
        where = f"{source}: " if source is not None and str(source) not in str(exc) else ""
        return _fail(command, f"{where}{exc}", EXIT_DATA)
    except KeyboardInterrupt:
        return _fail(command, "interrupted", 130)
    except Exception as exc:  # a bug: still one line, with what it was
        return _fail(command, f"internal error: {type(exc).__name__}: {exc}", EXIT_INTERNAL)


def _to_nifti(args: argparse.Namespace) -> int:
    from .dicomtools import to_nifti
    from .imaging.dicom_read import skipped_line

    r = to_nifti(args.series_dir, args.out, overwrite=args.force)
    if r.skipped:
        print(f"liverseg dicom to-nifti: warning: {args.series_dir}: {skipped_line(r.skipped)}", file=sys.stderr)
    spacing = "x".join(f"{s:g}" for s in r.spacing)
    state = "unchanged (same content)" if r.unchanged else "wrote"
    notes = f"; notes: {'; '.join(r.notes)}" if r.notes else ""
    print(f"{state} {r.out}: {'x'.join(map(str, r.shape))} voxels, {spacing} mm, from {r.n_files} slices{notes}")
    return 0


def _from_nifti(args: argparse.Namespace) -> int:
    from .dicomtools import from_nifti

    r = from_nifti(args.image, args.out_dir, label_path=args.label, patient_id=args.patient_id,
                   namespace=args.namespace, overwrite=args.force)
    state = "unchanged (same content)" if r.unchanged else "wrote"
    seg = f" and {r.seg}" if r.seg else ""
    print(f"{state} {r.out / 'ct'} ({r.n_slices} CT slices, series {r.series_instance_uid}){seg}")
    return 0


def _group(args: argparse.Namespace) -> int:
    from .dicomtools import group_folder
    from .imaging.dicom_read import Skipped, skipped_line

    report = group_folder(args.series_dir, args.out_dir, size=args.size, remainder=args.remainder)
    done = [s for s in report["series"] if s["status"] != "failed"]
    failed = [s for s in report["series"] if s["status"] == "failed"]
    groups = sum(len(s["groups"]) for s in done)
    print(f"{len(done)} series grouped into {groups} groups of {args.size} in {args.out_dir}; "
          f"report {Path(args.out_dir) / 'report.json'}")
    if report["skipped_files"]:
        skipped = [Skipped(s["file"], s["reason"]) for s in report["skipped_files"]]
        print(f"liverseg dicom group: warning: {args.series_dir}: {skipped_line(skipped)}", file=sys.stderr)
    if not failed and not report["rejected_files"]:
        return 0
    parts = [f"{s['folder']}: {'; '.join(s['problems'])}" for s in failed[:3]]
    parts += [f"{r['file']}: {r['reason']}" for r in report["rejected_files"][:3]]
    counts = [f"{len(failed)} of {len(report['series'])} series not grouped"] if failed else []
    counts += [f"{len(report['rejected_files'])} files rejected"] if report["rejected_files"] else []
    summary = f"{', '.join(counts)} ({' | '.join(parts)}); see report.json"
    return _fail("group", f"{args.series_dir}: {summary}", EXIT_DATA)
