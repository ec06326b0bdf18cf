"""The per-case loop: manifests last, skip on the same fingerprint, refuse to overwrite, quarantine bad data;
and the stage graph's contract: a stage reads only what its step declares and writes only what it declares."""

from __future__ import annotations

from pathlib import Path

import pytest

from liverseg import layout
from liverseg.errors import ConflictError, ContractError, InputError
from liverseg.graph import CT, STEPS, Image, Output, Step
from liverseg.metrics import StageMetrics
from liverseg.stagekit import StageContext, StageOutput, run_cases

COPY = Output("echo", "copy", "copy.bin")
ECHO = Step("echo", Image("convert", base="imaging"), "copies one object per case", covers="cases", writes=(COPY,))


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
        return StageOutput([ctx.store.put_bytes(COPY.key(ctx.run_id, case), data * self.param)], {"n": len(data)})


def context(store, step=ECHO):
    return StageContext(store=store, run_id="r1", step=step, metrics=StageMetrics(step.name, "r1"))


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
    assert store.get_json(layout.manifest_key("r1", "echo", "a"))["outputs"][COPY.key("r1", "a")]["size"] == 1


def test_same_inputs_skip_and_changed_inputs_are_refused(store):
    store.put_bytes("in/a", b"1")
    stage = Echo()
    run_cases(stage, context(store), ["a"])
    again = run_cases(stage, context(store), ["a"])
    assert again.skipped == ["a"] and stage.calls == ["a"]
    with pytest.raises(ConflictError, match="never overwritten"):
        run_cases(Echo(param=2), context(store), ["a"])
    assert store.get_bytes(COPY.key("r1", "a")) == b"1"


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


class Strays(Echo):
    """Writes one object its step does not declare."""

    def process(self, ctx, case, inputs, work: Path):
        return StageOutput([ctx.store.put_bytes(f"runs/r1/echo/{case}/extra.txt", b"x")])


def test_a_stage_that_writes_an_undeclared_object_fails_and_records_nothing(store):
    store.put_bytes("in/a", b"1")
    with pytest.raises(ContractError, match=r"wrote runs/r1/echo/a/extra.txt, which none of its declared outputs"):
        run_cases(Strays(), context(store), ["a"])
    assert not store.exists(layout.manifest_key("r1", "echo", "a"))


def test_a_stage_reads_only_the_outputs_its_step_declares(store):
    """group declares it reads convert's CT; echo does not: the same read is refused for echo, before any store
    access, and served for group."""
    with pytest.raises(ContractError, match=r"step 'echo' reads convert.ct, which its declaration"):
        context(store).read(CT, "a")
    from liverseg.errors import StageError

    with pytest.raises(StageError, match="step 'convert' has not completed"):
        context(store, STEPS["group"]).read(CT, "a")


def test_every_stage_of_the_pipeline_declares_what_its_code_reads():
    """Each step's module reads outputs only through ``ctx.read``/``ctx.record`` with outputs its step lists: no
    stage names another step's keys by hand."""
    import importlib
    import inspect
    import re

    from liverseg import graph

    outputs = {name for name in graph.__all__ if isinstance(getattr(graph, name), Output)}
    for step in graph.PIPELINE:
        source = inspect.getsource(importlib.import_module(step.module))
        used = set(re.findall(r"ctx\.(?:read|record)\(([A-Z_]+)\b", source))
        assert used <= outputs, (step.name, used - outputs)
        undeclared = {n for n in used if getattr(graph, n) not in step.reads and getattr(graph, n).step != step.name}
        assert not undeclared, f"{step.name} reads {undeclared} without declaring them"
        assert "layout.stage_prefix" not in source, f"{step.name} builds another step's keys by hand"
