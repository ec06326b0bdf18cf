"""liverseg preprocess: entry point (see stage.py for what it reads and writes)."""

from __future__ import annotations

import argparse

from liverseg.stagecli import add_run_options, run_per_case


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)


def main(args: argparse.Namespace) -> int:
    from .stage import PreprocessStage

    return run_per_case(PreprocessStage(), args)
