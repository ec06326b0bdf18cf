"""plan: which cases a run works on, how they are split, and the resolved profile (the first step of every run).

Reads  datasets/<dataset>/_manifest.json                  the ingested cases and their content hashes
Writes runs/<run>/plan/_manifest.json                     cases, split by patient, the profile with its overrides

Everything later stages need to agree on is decided here once and written to the store: the split (by patient,
from a seeded hash so it is fixed and reproducible), and the profile with every override applied (so stages in
different pods cannot run with different settings). ``--case-list COVERS=PATH`` also writes the cases a step that
covers ``COVERS`` works on (``cases``, ``test``) as a JSON list, which Argo fans out over.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from liverseg import layout
from liverseg import manifest as mf
from liverseg.config import Profile, SplitConfig, load_profile
from liverseg.data import msd
from liverseg.errors import DatasetError
from liverseg.graph import STEPS
from liverseg.metrics import StageMetrics
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import CaseEntry, Plan, StageContext, StageOutput, run_once
from liverseg.store import ObjectRef, ObjectStore

STEP = STEPS["plan"]
SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def split_patients(patients: dict[str, str], cfg: SplitConfig) -> dict[str, list[str]]:
    """Assign cases to train/val/test so all cases of one patient land in the same part.

    ``patients`` maps case -> patient. Patients are ordered by a hash of (seed, patient id); the first
    ``test_fraction`` go to test, the next ``val_fraction`` to val. At least one patient goes to test, and to
    val when there are three or more patients.
    """
    ids = sorted(set(patients.values()), key=lambda p: hashlib.sha256(f"{cfg.seed}:{p}".encode()).hexdigest())
    n = len(ids)
    n_test = max(1, round(cfg.test_fraction * n)) if n >= 2 else 0
    n_val = max(1, round(cfg.val_fraction * n)) if n >= 3 and cfg.val_fraction > 0 else 0
    part_of = {p: ("test" if i < n_test else "val" if i < n_test + n_val else "train") for i, p in enumerate(ids)}
    split: dict[str, list[str]] = {s: [] for s in SPLITS}
    for case in sorted(patients):
        split[part_of[patients[case]]].append(case)
    return split


class PlanStage:
    """Whole-run stage: the plan of ``dataset`` under the profile ``resolve`` returns, fixed once (idempotent for
    the same inputs; refuses to change an existing one). The profile is resolved on first use, inside the stage's
    error handling: a bad override is a usage error of the step like any other."""

    def __init__(self, dataset: str, resolve: Callable[[], Profile], max_cases: int | None = None,
                 case_lists: dict[str, Path] | None = None):
        self.dataset, self.resolve, self.max_cases = dataset, resolve, max_cases
        self.case_lists = case_lists or {}

    @cached_property
    def profile(self) -> Profile:
        return self.resolve()

    def inputs(self, ctx: StageContext) -> dict[str, ObjectRef]:
        key = layout.dataset_manifest(self.dataset)
        source = ctx.store.stat(key)
        if source is None:
            raise DatasetError(f"dataset '{self.dataset}' is not in the store: run 'liverseg ingest DIR --dataset "
                               f"{self.dataset}'")
        return {source.key: source}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return {"dataset": self.dataset, "profile": self.profile.model_dump(mode="json"), "max_cases": self.max_cases}

    def produce(self, ctx: StageContext, inputs: dict[str, ObjectRef], work: Path, fingerprint: str) -> StageOutput:
        cases = msd.dataset_cases(ctx.store, self.dataset)
        names = sorted(cases, key=_natural)[:self.max_cases] if self.max_cases else sorted(cases, key=_natural)
        entries = {c: CaseEntry(**cases[c]) for c in names}
        split = split_patients({c: e.patient for c, e in entries.items()}, self.profile.split)
        plan = Plan(run_id=ctx.run_id, dataset=self.dataset, cases=entries, split=split,
                    profile=self.profile.model_dump(mode="json"), planned_at=mf.utc_now())
        log.info("plan written", extra={"cases": len(entries), **{k: len(v) for k, v in split.items()}})
        return StageOutput([], {"plan": plan.model_dump(mode="json")})

    def result(self, ctx: StageContext, record: mf.Manifest) -> dict[str, Any]:
        plan = Plan.model_validate(record.details["plan"])
        for covers, path in self.case_lists.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(plan.covered(covers)))
        return {"cases": len(plan.cases), "split": {k: len(v) for k, v in plan.split.items()},
                "profile": plan.profile["name"]}


def make_plan(store: ObjectStore, run_id: str, dataset: str, profile: Profile,
              max_cases: int | None = None) -> Plan:
    """Write the run's plan without the command (tests, benchmarks)."""
    ctx = StageContext(store=store, run_id=run_id, step=STEP, metrics=StageMetrics(STEP.name, run_id))
    record = run_once(ctx, PlanStage(dataset, lambda: profile, max_cases), Path("."))
    return Plan.model_validate(record.details["plan"])


def _natural(case: str) -> tuple[str, int]:
    """liver_2 before liver_10."""
    head, _, tail = case.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (case, -1)


def _case_list(text: str) -> tuple[str, Path]:
    covers, sep, path = text.partition("=")
    if not sep or covers not in ("cases", "test"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cases=PATH or test=PATH")
    return covers, Path(path)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)
    parser.add_argument("--dataset", required=True, help="an ingested dataset name (datasets/<name>/)")
    parser.add_argument("--profile", default=None, help="profile name (default: $LIVERSEG_PROFILE or 'default')")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a profile value (repeatable)")
    parser.add_argument("--overrides", default="", metavar="A=B;C=D",
                        help="more overrides, ';'-separated (one argument, for workflow parameters)")
    parser.add_argument("--max-cases", type=int, default=0, help="use only the first N cases (0: all)")
    parser.add_argument("--case-list", type=_case_list, action="append", default=[], metavar="COVERS=PATH",
                        help="also write the cases a step covering COVERS (cases, test) works on, as a JSON list "
                             "(Argo output parameters; repeatable)")


def main(args: argparse.Namespace) -> int:
    overrides = [*args.set, *(s for s in args.overrides.split(";") if s.strip())]
    stage = PlanStage(args.dataset, lambda: load_profile(args.profile, overrides), args.max_cases or None,
                      dict(args.case_list))
    return run_step(STEP, args, stage, needs_plan=False)
