"""liverseg plan: fix a run's cases, split and profile (the first step of every run)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import load_profile
from .plan import make_plan
from .stagecli import add_run_options, execute


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, per_case=False)
    parser.add_argument("--dataset", required=True, help="an ingested dataset name (datasets/<name>/)")
    parser.add_argument("--profile", default=None, help="profile name (default: $LIVERSEG_PROFILE or 'default')")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a profile value (repeatable)")
    parser.add_argument("--overrides", default="", metavar="A=B;C=D",
                        help="more overrides, ';'-separated (one argument, for workflow parameters)")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N cases (0: all)")
    parser.add_argument("--cases-out", type=Path, help="also write the case ids as a JSON list here (Argo)")
    parser.add_argument("--test-out", type=Path, help="also write the held-out case ids as a JSON list here")


def main(args: argparse.Namespace) -> int:
    overrides = [*args.set, *(s for s in args.overrides.split(";") if s.strip())]

    def body(ctx):
        profile = load_profile(args.profile, overrides)
        plan = make_plan(ctx.store, args.run_id, args.dataset, profile, args.max_cases or None)
        for path, cases in ((args.cases_out, list(plan.cases)), (args.test_out, plan.split["test"])):
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(cases))
        return {"cases": len(plan.cases), "split": {k: len(v) for k, v in plan.split.items()},
                "profile": plan.profile["name"]}

    return execute("plan", args, body, needs_plan=False)
