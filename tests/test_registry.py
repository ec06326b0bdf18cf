"""Model registry and the champion gate: a worse challenger is not promoted, a better one is; rollback works."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from liverseg import layout
from liverseg import manifest as mf
from liverseg.config import load_profile
from liverseg.graph import STEPS
from liverseg.metrics import StageMetrics
from liverseg.ml.modelfile import to_bytes
from liverseg.registry import Registry, RegistryError, held_out_id
from liverseg.stagekit import CaseEntry, Plan, StageContext, run_once
from liverseg.stages.promote import PromoteStage, gate, held_out_of


def test_gate():
    assert gate(0.95, 0.94, 0.0)[0] is True
    assert gate(0.95, 0.95, 0.0)[0] is True           # "not worse" includes equal
    assert gate(0.93, 0.94, 0.0)[0] is False
    assert gate(0.93, 0.94, 0.02)[0] is True          # tolerance is configurable


def fake_run(store, run_id, per_case_dice, trained_on=(), validated_on=(), dataset="d"):
    """A run whose train and evaluate stages are complete, as the pipeline leaves them (no training needed).
    The model file carries only the payload's case lists: the gate reads them, and scores come from evaluations."""
    cases = {}
    for case in per_case_dice:
        image = store.put_bytes(f"datasets/{dataset}/imagesTr/{case}.nii.gz", f"img-{dataset}-{case}".encode())
        label = store.put_bytes(f"datasets/{dataset}/labelsTr/{case}.nii.gz", f"lab-{dataset}-{case}".encode())
        cases[case] = CaseEntry(image=image.key, label=label.key, patient=case)
    profile = load_profile("default", environ={})
    plan = Plan(run_id=run_id, dataset=dataset, cases=cases, split={"train": [], "val": [], "test": list(cases)},
                profile=profile.model_dump(mode="json"))
    model = store.put_bytes(f"runs/{run_id}/train/model.pt", to_bytes(
        {"run_id": run_id, "train_cases": sorted(trained_on), "val_cases": sorted(validated_on)}))
    stamp = mf.Stopwatch().stamp()
    for stage, outputs, details in (
            ("plan", [], {"plan": plan.model_dump(mode="json")}),
            ("train", [model], {"model": model.key, "best_epoch": 3, "epochs_run": 3}),
            ("evaluate", [], {"cases": {c: {"dice": d} for c, d in per_case_dice.items()},
                              "mean_dice": sum(per_case_dice.values()) / len(per_case_dice)})):
        mf.write(store, layout.manifest_key(run_id, stage), mf.Manifest(
            stage=stage, run_id=run_id, fingerprint=stage, code_version="test", outputs=mf.entries(outputs),
            details=details, **stamp))
    return StageContext(store=store, run_id=run_id, step=STEPS["promote"], metrics=StageMetrics("promote", run_id),
                        plan=plan)


def promote(ctx: StageContext) -> dict:
    """The promote step's record for a run (``run_once``, as its command runs it)."""
    return run_once(ctx, PromoteStage(), Path(".")).details


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


def scored_champion_on(store, champion, ctx, mean_dice):
    """The champion's stored evaluation on all of ``ctx``'s held-out cases (as an earlier gate would leave it)."""
    held = held_out_id({c: {"image": store.stat(e.image).sha256, "label": store.stat(e.label).sha256}
                        for c, e in ctx.plan.cases.items()})
    store.put_json(Registry(store).evaluation_key(champion, held), {"held_out": held, "mean_dice": mean_dice})


def test_gate_compares_only_cases_the_champion_never_trained_or_validated_on(store):
    registry = Registry(store)
    promote(fake_run(store, "run-a", {"c2": 0.80, "c3": 0.80}, trained_on=["c1"], validated_on=["c4"]))
    challenger = fake_run(store, "run-b", {"c1": 0.88, "c2": 0.88, "c3": 0.88, "c4": 0.88})
    # Counting c1 and c4, which it trained and validated on, the champion would score 0.895 and block run-b.
    scored_champion_on(store, "run-a", challenger, 0.895)
    decision = promote(challenger)["decision"]
    assert decision["promoted"] is True and registry.champion() == "run-b"
    assert decision["compared_cases"] == 2
    assert decision["dropped_cases"] == {"c1": "champion run-a trained on it", "c4": "champion run-a validated on it"}
    assert decision["challenger_dice"] == pytest.approx(0.88) and decision["champion_dice"] == pytest.approx(0.80)


def test_no_promotion_when_every_held_out_case_was_seen_by_the_champion(store):
    registry = Registry(store)
    promote(fake_run(store, "run-a", {"c3": 0.80}, trained_on=["c1"], validated_on=["c2"]))
    challenger = fake_run(store, "run-b", {"c1": 0.99, "c2": 0.99})
    scored_champion_on(store, "run-a", challenger, 0.90)
    decision = promote(challenger)["decision"]
    assert decision["promoted"] is False and registry.champion() == "run-a"
    assert decision["compared_cases"] == 0 and set(decision["dropped_cases"]) == {"c1", "c2"}
    assert "no fair comparison" in decision["reason"]


def test_case_ids_of_another_dataset_are_other_patients(store):
    promote(fake_run(store, "run-a", {"c3": 0.80}, trained_on=["c1"], validated_on=["c2"], dataset="other"))
    challenger = fake_run(store, "run-b", {"c1": 0.90, "c2": 0.90})
    scored_champion_on(store, "run-a", challenger, 0.85)
    decision = promote(challenger)["decision"]
    assert decision["promoted"] is True and decision["compared_cases"] == 2 and decision["dropped_cases"] == {}


def test_a_decision_against_a_champion_that_has_moved_is_refused(store):
    """Two promotions at once: the second to finish gated against a champion that is no longer the champion."""
    registry = Registry(store)
    for version in ("a", "b", "c"):
        registry.register(version, f"weights {version}".encode(), {"evaluation": {"mean_dice": 0.9}})
    registry.decide("a", True, "first model", {}, gated_against=None)
    registry.decide("b", True, "better than a", {}, gated_against="a")
    with pytest.raises(RegistryError, match="moved from a to b"):
        registry.decide("c", True, "better than a", {}, gated_against="a")
    assert registry.champion() == "b"
    assert [d["challenger"] for d in registry.decisions()] == ["a", "b"]


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


def test_held_out_sets_differ_by_content_even_without_a_sha256(store):
    """Objects another tool uploaded carry no sha256 metadata: their ETags must still tell two sets apart."""
    cases = {"c1": {"image": "x/image.nii.gz", "label": "x/label.nii.gz"}}
    identities = set()
    for content in (b"first", b"second"):
        for key in ("x/image.nii.gz", "x/label.nii.gz"):
            store.client.put_object(store.bucket, key, io.BytesIO(content), len(content))
        assert store.stat("x/image.nii.gz").sha256 is None
        identities.add(held_out_of(store, cases))
    assert len(identities) == 2
