"""Model registry and the champion gate: a worse challenger is not promoted, a better one is; rollback works."""

from __future__ import annotations

import pytest

from liverseg import layout
from liverseg import manifest as mf
from liverseg.config import load_profile
from liverseg.infer.promote import gate, promote
from liverseg.metrics import StageMetrics
from liverseg.registry import Registry, RegistryError, held_out_id
from liverseg.stagekit import CaseEntry, Plan, StageContext


def test_gate():
    assert gate(0.95, 0.94, 0.0)[0] is True
    assert gate(0.95, 0.95, 0.0)[0] is True           # "not worse" includes equal
    assert gate(0.93, 0.94, 0.0)[0] is False
    assert gate(0.93, 0.94, 0.02)[0] is True          # tolerance is configurable


def fake_run(store, run_id, per_case_dice):
    """A run whose train and evaluate stages are complete, as the pipeline leaves them (no training needed)."""
    cases = {}
    for case in per_case_dice:
        image = store.put_bytes(f"datasets/d/imagesTr/{case}.nii.gz", f"img-{case}".encode())
        label = store.put_bytes(f"datasets/d/labelsTr/{case}.nii.gz", f"lab-{case}".encode())
        cases[case] = CaseEntry(image=image.key, label=label.key, patient=case)
    profile = load_profile("default", environ={})
    plan = Plan(run_id=run_id, dataset="d", cases=cases, split={"train": [], "val": [], "test": list(cases)},
                profile=profile.model_dump(mode="json"))
    model = store.put_bytes(f"runs/{run_id}/train/model.pt", f"weights of {run_id}".encode())
    stamp = mf.Stopwatch().stamp()
    for stage, outputs, details in (
            ("plan", [], {"plan": plan.model_dump(mode="json")}),
            ("train", [model], {"model": model.key, "best_epoch": 3, "epochs_run": 3}),
            ("evaluate", [], {"cases": {c: {"dice": d} for c, d in per_case_dice.items()},
                              "mean_dice": sum(per_case_dice.values()) / len(per_case_dice)})):
        mf.write(store, layout.manifest_key(run_id, stage), mf.Manifest(
            stage=stage, run_id=run_id, fingerprint=stage, code_version="test", outputs=mf.entries(outputs),
            details=details, **stamp))
    return StageContext(store=store, run_id=run_id, stage="promote", metrics=StageMetrics("promote", run_id),
                        plan=plan)


def test_first_model_becomes_champion_then_worse_is_refused_and_better_promoted(store):
    registry = Registry(store)
    first = promote(fake_run(store, "run-a", {"c1": 0.90, "c2": 0.92}))
    assert first["decision"]["promoted"] and registry.champion() == "run-a"

    worse = promote(fake_run(store, "run-b", {"c1": 0.85, "c2": 0.86}))
    assert worse["decision"]["promoted"] is False
    assert worse["decision"]["champion_dice"] == pytest.approx(0.91)
    assert registry.champion() == "run-a"
    assert "run-b" in registry.versions()            # registered even when not promoted

    better = promote(fake_run(store, "run-c", {"c1": 0.95, "c2": 0.96}))
    assert better["decision"]["promoted"] is True and registry.champion() == "run-c"
    assert [d["promoted"] for d in registry.decisions()] == [True, False, True]

    card = registry.card("run-c")
    assert card["evaluation"]["mean_dice"] == pytest.approx(0.955)
    assert card["model_sha256"] and card["training_data"] is not None

    registry.rollback()
    assert registry.champion() == "run-a"
    assert registry.resolve("champion") == "models/run-a/model.pt"
    with pytest.raises(RegistryError, match="no model version"):
        registry.resolve("never-trained")


def test_the_same_version_cannot_change_weights(store):
    registry = Registry(store)
    registry.register("v1", b"weights", {"evaluation": {"mean_dice": 0.9}})
    registry.register("v1", b"weights", {"evaluation": {"mean_dice": 0.9}})  # idempotent
    with pytest.raises(RegistryError, match="already exists with other weights"):
        registry.register("v1", b"other", {})


def test_held_out_identity_depends_on_content():
    a = held_out_id({"c1": {"image": "sha1", "label": "sha2"}})
    assert a == held_out_id({"c1": {"image": "sha1", "label": "sha2"}})
    assert a != held_out_id({"c1": {"image": "sha1", "label": "other"}})
