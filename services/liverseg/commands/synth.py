"""liverseg synth --out DIR: a synthetic data set in the Medical Segmentation Decathlon Task03_Liver layout."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--msd-slices", type=int, nargs="+", metavar="N",
                        help="instead of --cases: one Decathlon-size case (512x512) per slice count given, e.g. "
                             "--msd-slices 120 500 987, for memory and time checks at real size")


def main(args: argparse.Namespace) -> int:
    from liverseg.data.synth import write_dataset, write_msd_cases

    if args.msd_slices:
        ids = write_msd_cases(args.out, args.msd_slices, args.seed)
    else:
        ids = write_dataset(args.out, args.cases, args.seed)
    print(f"wrote {len(ids)} synthetic cases to {args.out} (MSD Task03_Liver layout)")
    return 0
