"""liverseg infer: entry point (see stage.py for what it reads and writes)."""

from __future__ import annotations

import argparse

from liverseg.stagecli import add_run_options, run_per_case


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def main(args: argparse.Namespace) -> int:
    from .stage import InferStage

    return run_per_case(InferStage(args.device), args, default_cases="test")
