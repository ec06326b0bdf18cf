"""liverseg synth --out DIR: a synthetic data set in the Medical Segmentation Decathlon Task03_Liver layout."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    from liverseg.data.synth import write_dataset

    ids = write_dataset(args.out, args.cases, args.seed)
    print(f"wrote {len(ids)} synthetic cases to {args.out} (MSD Task03_Liver layout)")
    return 0
