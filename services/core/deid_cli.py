"""liverseg deidentify IN_DIR OUT_DIR: a de-identified copy of every DICOM file (PS3.15 basic profile)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENV_KEY = "LIVERSEG_DEID_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("deidentify", help="de-identified copy of a DICOM folder (PS3.15 basic profile, "
                                               "dates shifted and UIDs remapped consistently per key)")
    parser.add_argument("input", type=Path, help="folder of DICOM files (searched recursively)")
    parser.add_argument("out", type=Path, help="output folder (same relative paths); existing files are kept")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"file holding the secret key (default: ${ENV_KEY}); the same key gives the same "
                             "pseudonyms, date shifts and UIDs")
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from .imaging.deid import Deidentifier
    from .logs import register_secret

    key = args.key_file.read_bytes().strip() if args.key_file else os.environ.get(ENV_KEY, "").encode()
    register_secret(key.decode(errors="replace"))
    try:
        deidentifier = Deidentifier(key)
    except ValueError as exc:
        print(f"liverseg deidentify: {exc} (--key-file or ${ENV_KEY})", file=sys.stderr)
        return 2
    files = sorted(p for p in args.input.rglob("*") if p.is_file())
    if not files:
        print(f"liverseg deidentify: no files in {args.input}", file=sys.stderr)
        return 1
    written = 0
    for path in files:
        target = args.out / path.relative_to(args.input)
        if target.exists():
            print(f"liverseg deidentify: {target} exists; not overwritten", file=sys.stderr)
            return 1
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError) as exc:
            print(f"liverseg deidentify: {path}: not a readable DICOM file ({type(exc).__name__})", file=sys.stderr)
            return 1
        target.parent.mkdir(parents=True, exist_ok=True)
        deidentifier.apply(ds).save_as(target, enforce_file_format=True)
        written += 1
    print(f"{written} files de-identified into {args.out}")
    return 0
