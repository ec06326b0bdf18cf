"""The pipeline's stage graph: the single source of truth for the local runner and the Argo templates.

Each ``Step`` says which command runs it, in which image, after which steps, whether it fans out over cases and
whether it needs a GPU. ``liverseg run`` walks ``PIPELINE`` in order, one process per step; the Hera workflow
(``liverseg.workflows``) turns the same steps into templates and DAG tasks. Neither lists stages on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

FanOut = Literal["none", "cases", "test"]
IMAGES = ("convert", "group", "preprocess", "train", "infer")


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    ``args`` is the step's argument list with ``{placeholders}`` filled from the run's values: the runner passes
    real values, the workflow generator passes Argo expressions. ``fan_out`` names the cases a per-case step
    runs over (one pod each in Argo): ``cases`` = every planned case, ``test`` = the held-out cases. Steps naming
    the same ``mutex`` never run at once, across runs (Argo ``synchronization.mutexes``).
    """

    name: str
    image: str
    summary: str
    module: str
    needs: tuple[str, ...] = ()
    fan_out: FanOut = "none"
    gpu: bool = False
    extra_args: tuple[str, ...] = ()
    mutex: str | None = None

    def args(self, values: Mapping[str, str], case: str | None = None) -> list[str]:
        argv = [self.name, "--run-id", values["run_id"]]
        argv += [a.format(**values) for a in self.extra_args]
        if case is not None:
            argv += ["--case", case]
        return argv


PIPELINE: tuple[Step, ...] = (
    Step("plan", image="convert", module="liverseg.plan_cli",
         summary="list the dataset's cases, split them by patient, fix the run's profile",
         extra_args=("--dataset", "{dataset}", "--profile", "{profile}", "--overrides", "{overrides}",
                     "--max-cases", "{max_cases}")),
    Step("convert", image="convert", module="liverseg.convert.cli", needs=("plan",), fan_out="cases",
         summary="NIfTI image + label -> DICOM CT series + DICOM SEG"),
    Step("group", image="group", module="liverseg.group.cli", needs=("convert",), fan_out="cases",
         summary="DICOM series -> groups of N slices -> NIfTI (and the whole series)"),
    Step("preprocess", image="preprocess", module="liverseg.preprocess.cli", needs=("group",), fan_out="cases",
         summary="MONAI transforms -> network-ready arrays"),
    Step("train", image="train", module="liverseg.train.cli", needs=("preprocess",), gpu=True,
         summary="3D U-Net on the train cases, selected on the val cases, checkpoints"),
    Step("infer", image="infer", module="liverseg.infer.cli", needs=("train",), fan_out="test",
         summary="segment held-out studies; masks on their original grid, Dice"),
    Step("evaluate", image="infer", module="liverseg.infer.evaluate_cli", needs=("infer",),
         summary="held-out scores -> the run's summary"),
    Step("promote", image="infer", module="liverseg.infer.promote_cli", needs=("evaluate",),
         summary="register the model; it becomes champion only if not worse on the same held-out cases",
         # Read champion, gate, move the pointer: two runs doing this at once could crown the worse model.
         mutex="liverseg-champion"),
)

STEPS: dict[str, Step] = {s.name: s for s in PIPELINE}


def topological(steps: tuple[Step, ...] = PIPELINE) -> list[Step]:
    """Steps in an order that respects ``needs`` (checks the graph is a DAG over known steps)."""
    names = {s.name for s in steps}
    done: list[Step] = []
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(n in {d.name for d in done} for n in s.needs)]
        if not ready:
            unknown = {n for s in pending for n in s.needs} - names
            raise ValueError(f"stage graph has a cycle or unknown needs: {unknown or [s.name for s in pending]}")
        done += ready
        pending = [s for s in pending if s not in ready]
    return done
