"""The per-case loop: manifests last, skip on the same fingerprint, refuse to overwrite, quarantine bad data."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverseg import layout
from liverseg.errors import ConflictError, InputError
from liverseg.metrics import StageMetrics
from liverseg.stagekit import CaseOutput, StageContext, run_cases


class Echo:
    """A stage that copies one input object per case, failing on request."""

    name = "echo"

    def __init__(self, param: int = 1):
        self.param, self.calls = param, []

    def inputs(self, ctx, case):
        return {"in": ctx.store.stat(f"in/{case}")}

    def params(self, ctx):
        return {"param": self.param}

    def process(self, ctx, case, inputs, work: Path):
        self.calls.append(case)
        data = ctx.store.get_bytes(inputs["in"].key)
        if data == b"bad":
            raise InputError("content is bad", file=f"{case}.bin")
        if data == b"boom":
            raise RuntimeError("unexpected")
        return CaseOutput([ctx.store.put_bytes(f"out/{case}", data * self.param)], {"n": len(data)})


def context(store):
    return StageContext(store=store, run_id="r1", stage="echo", metrics=StageMetrics("echo", "r1"))


def test_bad_cases_are_set_aside_and_the_others_go_on(store):
    for case, data in {"a": b"1", "b": b"bad", "c": b"boom", "d": b"2"}.items():
        store.put_bytes(f"in/{case}", data)
    outcome = run_cases(Echo(), context(store), ["a", "b", "c", "d"])
    assert outcome.ok == ["a", "d"]
    assert outcome.quarantined["b"] == "b.bin: content is bad"
    assert "internal error: RuntimeError: unexpected" in outcome.quarantined["c"]
    entry = store.get_json(layout.quarantine_key("r1", "echo", "b"))
    assert (entry["reason"], entry["file"]) == ("content is bad", "b.bin")
    manifest = store.get_json(layout.manifest_key("r1", "echo", "b"))
    assert manifest["status"] == "quarantined" and manifest["error"] == "b.bin: content is bad"
    assert store.get_json(layout.manifest_key("r1", "echo", "a"))["outputs"]["out/a"]["size"] == 1


def test_same_inputs_skip_and_changed_inputs_are_refused(store):
    store.put_bytes("in/a", b"1")
    stage = Echo()
    run_cases(stage, context(store), ["a"])
    again = run_cases(stage, context(store), ["a"])
    assert again.skipped == ["a"] and stage.calls == ["a"]
    with pytest.raises(ConflictError, match="never overwritten"):
        run_cases(Echo(param=2), context(store), ["a"])
    assert store.get_bytes("out/a") == b"1"


def test_a_fixed_input_replaces_a_quarantined_case(store):
    store.put_bytes("in/a", b"bad")
    assert "a" in run_cases(Echo(), context(store), ["a"]).quarantined
    assert store.exists(layout.quarantine_key("r1", "echo", "a"))
    store.put_bytes("in/a", b"fixed")
    assert run_cases(Echo(), context(store), ["a"]).ok == ["a"]
    assert not store.exists(layout.quarantine_key("r1", "echo", "a"))


class NeedsInput(Echo):
    """Like ``Echo``, but a missing input is bad data and an input named ``crash`` a bug."""

    def inputs(self, ctx, case):
        ref = ctx.store.stat(f"in/{case}")
        if ref is None:
            raise InputError(f"in/{case} is missing")
        if ctx.store.get_bytes(ref.key) == b"crash":
            raise KeyError("bug")
        return {"in": ref}


@pytest.mark.parametrize("damage", ["delete", "crash"])
def test_a_completed_case_is_never_turned_into_a_quarantined_one(store, damage):
    store.put_bytes("in/a", b"1")
    assert run_cases(NeedsInput(), context(store), ["a"]).ok == ["a"]
    completed = store.get_bytes(layout.manifest_key("r1", "echo", "a"))
    if damage == "delete":
        store.delete("in/a")
    else:
        store.put_bytes("in/a", b"crash")
    with pytest.raises(ConflictError, match="never overwritten"):
        run_cases(NeedsInput(), context(store), ["a"])
    assert store.get_bytes(layout.manifest_key("r1", "echo", "a")) == completed
    assert not store.exists(layout.quarantine_key("r1", "echo", "a"))
