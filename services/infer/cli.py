"""liverseg infer: entry point (see stage.py for what it reads and writes)."""

from __future__ import annotations

import argparse

from liverseg.stagecli import add_run_options, execute, run_per_case


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--model", default=None, metavar="KEY",
                        help="'champion', a registered version, or a model file key in the store "
                             "(default: this run's runs/<run-id>/train/model.pt)")
    parser.add_argument("--study", action="append", default=[], metavar="KEY",
                        help="segment this study instead of the plan's held-out cases: a NIfTI object "
                             "(.nii/.nii.gz) or a prefix holding one DICOM series, optionally NAME=KEY "
                             "(repeatable; needs --model)")


def main(args: argparse.Namespace) -> int:
    from .stage import InferStage, study_name

    if not args.study:
        return run_per_case(InferStage(args.device, args.model), args, default_cases="test")

    def body(ctx):
        from liverseg.stagekit import StageError, run_cases

        if not args.model:
            raise StageError("--study needs --model KEY (the model to segment with)")
        studies = {}
        for item in args.study:
            name, sep, key = item.partition("=")
            studies[name if sep else study_name(item)] = key if sep else item
        stage = InferStage(args.device, args.model, studies)
        return run_cases(stage, ctx, args.case or list(studies)).as_dict()

    return execute("infer", args, body, needs_plan=False)
