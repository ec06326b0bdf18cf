"""liverseg deidentify IN_DIR OUT_DIR: a de-identified copy of every DICOM file (PS3.15 basic profile)."""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

ENV_KEY = "LIVERSEG_DEID_KEY"


__all__ = ["ENV_KEY", "add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="folder of DICOM files (searched recursively)")
    parser.add_argument("out", type=Path, help="output folder (same relative paths); a file already there is kept "
                                               "(skipped when identical, reported when not)")
    parser.add_argument("--key-file", type=Path, default=None,
                        help=f"file holding the secret key (default: ${ENV_KEY}); the same key gives the same "
                             "pseudonyms, date shifts and UIDs")


def main(args: argparse.Namespace) -> int:
    import pydicom
    from pydicom.errors import InvalidDicomError

    from liverseg.imaging.deid import Deidentifier
    from liverseg.logs import register_secret

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
    written, unchanged, problems = 0, 0, []
    for path in files:
        target = args.out / path.relative_to(args.input)
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, EOFError) as exc:
            problems.append(f"{path}: not a readable DICOM file ({type(exc).__name__}); set aside")
            continue
        buffer = io.BytesIO()
        try:
            deidentifier.apply(ds).save_as(buffer, enforce_file_format=True)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # elements pydicom parses only now
            problems.append(f"{path}: could not be de-identified ({type(exc).__name__}: {exc}); set aside")
            continue
        data = buffer.getvalue()
        if target.exists():
            # One key gives the same output: a re-run after an interruption finds its own files and goes on.
            if target.read_bytes() == data:
                unchanged += 1
            else:
                problems.append(f"{target} exists with other content (another key or input?); not overwritten")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)  # never a half-written file under the final name
        written += 1
    for problem in problems:
        print(f"liverseg deidentify: {problem}", file=sys.stderr)
    print(f"{written} files de-identified into {args.out}, {unchanged} already there, {len(problems)} set aside")
    return 1 if problems else 0
