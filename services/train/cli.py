"""liverseg train: entry point (see stage.py for what it reads and writes)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from liverseg.stagecli import add_run_options, execute


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, per_case=False)
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument("--resume", dest="resume", action="store_const", const="require", default="auto",
                        help="continue from the last checkpoint, which must exist (default: continue from one if "
                             "present, else start)")
    resume.add_argument("--no-resume", dest="resume", action="store_const", const="never",
                        help="ignore checkpoints and train from scratch")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def main(args: argparse.Namespace) -> int:
    def body(ctx):
        from .stage import TrainStage

        with tempfile.TemporaryDirectory(prefix="liverseg-train-") as tmp:
            record = TrainStage(ctx, resume=args.resume, device=args.device).run(Path(tmp))
        return {"model": record.details["model"], "best_epoch": record.details["best_epoch"],
                "best_metric": record.details["best_metric"], "epochs_run": record.details["epochs_run"]}

    return execute("train", args, body)
