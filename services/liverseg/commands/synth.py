"""liverseg synth --out DIR: a synthetic data set in the Medical Segmentation Decathlon Task03_Liver layout.

The anatomy generator by default (an adult patient, chest to pelvis; docs/PHANTOMS.md), the first, simpler one
with ``--generator legacy``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from liverseg.errors import UsageError

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--generator", choices=["anatomy", "legacy"], default="anatomy",
                        help="anatomy: an adult's anatomy, chest to pelvis (default); legacy: the first, simpler "
                             "phantoms")
    parser.add_argument("--size", choices=["pipeline", "msd"], default="pipeline",
                        help="pipeline: 256-320 px, 64-160 slices (default); msd: like the MSD liver set, 512x512, "
                             "0.56-1.0 mm pixels, 74-987 slices of 0.7-5 mm (anatomy only)")
    parser.add_argument("--randomise", type=float, default=0.0, metavar="P",
                        help="share of cases whose soft tissues get random HU (anatomy only; default 0)")
    parser.add_argument("--msd-slices", type=int, nargs="+", metavar="N",
                        help="instead of --cases: one Decathlon-size anatomy case (512x512) per slice count given, "
                             "e.g. --msd-slices 120 500 987, for memory and time checks at real size")


def main(args: argparse.Namespace) -> int:
    from liverseg.data.synth import write_dataset, write_msd_cases

    if args.msd_slices:
        if args.generator != "anatomy" or args.randomise:
            raise UsageError("--msd-slices draws anatomy phantoms without intensity randomisation: leave out "
                             "--generator and --randomise")
        ids = write_msd_cases(args.out, args.msd_slices, args.seed)
        grids = f"512x512 grids of {', '.join(map(str, args.msd_slices))} slices"
    else:
        ids = write_dataset(args.out, args.cases, args.seed, generator=args.generator, size=args.size,
                            randomise=args.randomise)
        grids = f"{args.size} grids"
    print(f"wrote {len(ids)} synthetic cases to {args.out} (MSD Task03_Liver layout, {args.generator} generator, "
          f"{grids})")
    return 0
