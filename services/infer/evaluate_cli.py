"""liverseg evaluate: entry point (see evaluate.py for what it reads and writes)."""

from __future__ import annotations

import argparse

from liverseg.stagecli import add_run_options, execute


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, per_case=False)


def main(args: argparse.Namespace) -> int:
    def body(ctx):
        from .evaluate import evaluate

        details = evaluate(ctx).details
        return {k: details[k] for k in ("mean_dice", "min_dice", "scored_cases", "held_out_cases")}

    return execute("evaluate", args, body)
