"""The plan step: which cases a run works on, how they are split, and the resolved profile.

Everything later stages need to agree on is decided here once and written to the store: the split (by patient,
from a seeded hash so it is fixed and reproducible), and the profile with every override applied (so stages in
different pods cannot run with different settings).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from . import layout, msd
from .config import Profile, SplitConfig
from .manifest import utc_now
from .metrics import StageMetrics
from .stagekit import CaseEntry, Plan, StageContext, run_once
from .store import ObjectStore

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


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


def make_plan(store: ObjectStore, run_id: str, dataset: str, profile: Profile,
              max_cases: int | None = None) -> Plan:
    """Write the run's plan (idempotent for the same inputs; refuses to change an existing one)."""
    cases = msd.dataset_cases(store, dataset)
    names = sorted(cases, key=_natural)[:max_cases] if max_cases else sorted(cases, key=_natural)
    entries = {c: CaseEntry(**cases[c]) for c in names}
    split = split_patients({c: e.patient for c, e in entries.items()}, profile.split)
    plan = Plan(run_id=run_id, dataset=dataset, cases=entries, split=split,
                profile=profile.model_dump(mode="json"), planned_at=utc_now())
    source = store.stat(layout.dataset_manifest(dataset))
    params = {"dataset": dataset, "profile": plan.profile, "max_cases": max_cases}
    ctx = StageContext(store=store, run_id=run_id, stage="plan", metrics=StageMetrics("plan", run_id))

    def produce(_: str) -> tuple[list, dict[str, Any]]:
        log.info("plan written", extra={"cases": len(entries), **{k: len(v) for k, v in split.items()}})
        return [], {"plan": plan.model_dump(mode="json")}

    record = run_once(ctx, {source.key: source}, params, produce)
    return Plan.model_validate(record.details["plan"])


def _natural(case: str) -> tuple[str, int]:
    """liver_2 before liver_10."""
    head, _, tail = case.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (case, -1)
