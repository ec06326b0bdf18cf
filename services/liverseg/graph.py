"""The stage graph: the pipeline's single source of truth and its data contract.

Each ``Step`` declares the image it runs in, which cases it covers, what it reads (other steps' ``Output``s, by
object, never by a string), what it writes, and the resources its pod requests. Everything else is derived from
here: the order of the steps (a step needs the steps whose outputs it reads), the local runner (``liverseg run``),
the Argo templates and the chart (``liverseg_workflows``), the images ``docker/build.py`` builds, and the commands
``liverseg <step>``. At run time ``stagekit`` holds each stage to its declaration: reading an output the step does
not declare, or writing an object none of its outputs covers, is a ``ContractError``.

    plan ─▶ convert ─▶ group ─▶ preprocess ─▶ train ─▶ infer ─▶ evaluate ─▶ promote
            └─────────── every case ─────────┘          held-out cases

Keys: a step's outputs live under ``runs/<run>/<step>/`` (per case under ``runs/<run>/<step>/<case>/``), next to
the ``_manifest.json`` that is written last and marks them complete (``layout``). Two outputs live elsewhere: the
ingested data set (``datasets/<dataset>/``) and the model registry (``models/``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from liverseg import layout

__all__ = [
    "ARRAYS", "CHECKPOINTS", "CONVERT_IMAGE", "CT", "DATASET", "DEFAULT_RESOURCES", "GROUPS", "GROUP_IMAGE",
    "IMAGES", "INFER_IMAGE", "MASK", "METRICS", "MODEL", "OVERLAYS", "PIPELINE", "PLAN", "PREPROCESS_IMAGE",
    "REGISTRY", "REPORT", "RTSTRUCT", "SEG", "SEGMENTATION", "SOURCE", "STEPS", "SUMMARY", "TRAIN_IMAGE", "VOLUME",
    "Covers", "Image", "Output", "Resources", "Step", "topological",
]

Covers = Literal["run", "cases", "test"]
"""``run``: one process for the whole run; ``cases``: every planned case; ``test``: the held-out cases."""


@dataclass(frozen=True)
class Image:
    """A stage image, ``liverseg-<name>``: the pip extra it installs and the shared base it is built on
    (``docker/base.Dockerfile`` targets). ``gpu`` images are built on the GPU base when one is given."""

    name: str
    base: Literal["imaging", "ml"]
    gpu: bool = False

    @property
    def extra(self) -> str:
        return self.name


@dataclass(frozen=True)
class Resources:
    """What a step's pod requests. ``memory`` is request and limit (a stage that outgrows it is OOM-killed visibly
    rather than starving its node); no CPU limit (throttling only slows a batch job). A GPU step's CPU, memory
    and ``/dev/shm`` are per GPU (one training process each), plus ``per_worker`` for each of its input-pipeline
    workers: the template takes both counts from the ``gpus`` and ``loader-workers`` parameters' defaults."""

    cpu: str
    memory: str
    gpu: bool = False
    shm: str | None = None
    per_worker: Resources | None = None


@dataclass(frozen=True)
class Output:
    """Objects one step writes. ``pattern`` is a glob relative to where they live (``root``): the step's prefix
    (per case: the case's), the data set's prefix, or the registry."""

    step: str
    name: str
    pattern: str
    per_case: bool = True
    root: Literal["step", "dataset", "models"] = "step"

    def prefix(self, run_id: str, case: str | None = None, dataset: str | None = None) -> str:
        if self.root == "dataset":
            if dataset is None:
                raise ValueError(f"{self}: the data set's outputs need its name")
            return layout.dataset_prefix(dataset)
        if self.root == "models":
            return "models"
        if self.per_case and case is None:
            raise ValueError(f"{self} is per case: name the case")
        return layout.stage_prefix(run_id, self.step, case if self.per_case else None)

    def key(self, run_id: str, case: str | None = None, path: str | None = None) -> str:
        """The key of one object: ``path`` (relative, matching ``pattern``), or the pattern when it names one."""
        path = path or self.pattern
        if not fnmatch.fnmatchcase(path, self.pattern) or any(c in path for c in "*?["):
            raise ValueError(f"{path!r} is not one object of {self}")
        return f"{self.prefix(run_id, case)}/{path}"

    def owns(self, key: str, run_id: str, case: str | None = None, dataset: str | None = None) -> bool:
        prefix = self.prefix(run_id, case, dataset) + "/"
        return key.startswith(prefix) and fnmatch.fnmatchcase(key[len(prefix):], self.pattern)

    def __str__(self) -> str:
        return f"{self.step}.{self.name}"


# -- the outputs ---------------------------------------------------------------------------------------------
DATASET = Output("ingest", "dataset", "_manifest.json", per_case=False, root="dataset")
SOURCE = Output("ingest", "source", "*Tr/*.nii*", root="dataset")       # a case's image and label, as planned
PLAN = Output("plan", "plan", "_manifest.json", per_case=False)         # cases, split and resolved profile
CT = Output("convert", "ct", "ct/*.dcm")                                # CT Image Storage, one file per slice
SEG = Output("convert", "seg", "seg.dcm")                               # the label as DICOM SEG
GROUPS = Output("group", "groups", "g[0-9][0-9][0-9]/*.nii.gz")        # image (+ label) per slice group
VOLUME = Output("group", "volume", "volume/*.nii.gz")                   # the whole series (+ label)
ARRAYS = Output("preprocess", "arrays", "*.npz")                        # network-ready image and label
MODEL = Output("train", "model", "model.pt", per_case=False)           # the selected weights + profile
CHECKPOINTS = Output("train", "checkpoints", "checkpoints/epoch_*.pt", per_case=False)  # full state, last two
METRICS = Output("train", "metrics", "metrics.json", per_case=False)   # per-epoch loss, Dice, learning rate
MASK = Output("infer", "mask", "mask.nii.gz")                           # uint8 on the study's own grid
OVERLAYS = Output("infer", "overlays", "overlay_*.png")                # axial, coronal, sagittal
SEGMENTATION = Output("infer", "segmentation", "seg.dcm")               # DICOM studies: the mask as DICOM SEG
RTSTRUCT = Output("infer", "rtstruct", "rtstruct.dcm")                  # DICOM studies: liver contours (RT)
SUMMARY = Output("evaluate", "summary", "summary.json", per_case=False)
REPORT = Output("evaluate", "report", "report.html", per_case=False)
REGISTRY = Output("promote", "registry", "*", per_case=False, root="models")

# -- the images ----------------------------------------------------------------------------------------------
CONVERT_IMAGE = Image("convert", base="imaging")
GROUP_IMAGE = Image("group", base="imaging")
PREPROCESS_IMAGE = Image("preprocess", base="ml")
TRAIN_IMAGE = Image("train", base="ml", gpu=True)
INFER_IMAGE = Image("infer", base="ml", gpu=True)
IMAGES: tuple[Image, ...] = (CONVERT_IMAGE, GROUP_IMAGE, PREPROCESS_IMAGE, TRAIN_IMAGE, INFER_IMAGE)

DEFAULT_RESOURCES = Resources(cpu="1", memory="4Gi")


@dataclass(frozen=True)
class Step:
    """One pipeline step.

    ``args`` is the step's argument list with ``{placeholders}`` filled from the run's values: the runner passes
    real values, the workflow generator passes Argo expressions. Steps naming the same ``mutex`` never run at
    once, across runs (Argo ``synchronization.mutexes``).
    """

    name: str
    image: Image
    summary: str
    covers: Covers = "run"
    reads: tuple[Output, ...] = ()
    writes: tuple[Output, ...] = ()
    resources: Resources = DEFAULT_RESOURCES
    extra_args: tuple[str, ...] = ()
    mutex: str | None = None

    @property
    def module(self) -> str:
        """The module that implements the step: ``add_arguments(parser)`` and ``main(args)``."""
        return f"liverseg.stages.{self.name}"

    @property
    def needs(self) -> tuple[str, ...]:
        """The steps whose outputs this one reads (the data set is ingested before any run)."""
        return tuple(dict.fromkeys(o.step for o in self.reads if o.root != "dataset" and o.step != self.name))

    def args(self, values: Mapping[str, str], case: str | None = None) -> list[str]:
        argv = [self.name, "--run-id", values["run_id"]]
        argv += [a.format(**values) for a in self.extra_args]
        if case is not None:
            argv += ["--case", case]
        return argv


PIPELINE: tuple[Step, ...] = (
    Step("plan", CONVERT_IMAGE, "list the dataset's cases, split them by patient, fix the run's profile",
         reads=(DATASET,), writes=(PLAN,),
         extra_args=("--dataset", "{dataset}", "--profile", "{profile}", "--overrides", "{overrides}",
                     "--max-cases", "{max_cases}")),
    Step("convert", CONVERT_IMAGE, "NIfTI image + label -> DICOM CT series + DICOM SEG", covers="cases",
         reads=(PLAN, SOURCE), writes=(CT, SEG)),
    Step("group", GROUP_IMAGE, "DICOM series -> groups of N slices -> NIfTI (and the whole series)",
         covers="cases", reads=(PLAN, CT, SEG), writes=(GROUPS, VOLUME)),
    Step("preprocess", PREPROCESS_IMAGE, "MONAI transforms -> network-ready arrays", covers="cases",
         reads=(PLAN, GROUPS, VOLUME), writes=(ARRAYS,), resources=Resources(cpu="2", memory="8Gi")),
    Step("train", TRAIN_IMAGE, "3D U-Net on the train cases, selected on the val cases, checkpoints",
         reads=(PLAN, ARRAYS), writes=(MODEL, METRICS, CHECKPOINTS),
         # Per GPU: a process that caches its share of the training cases (100 MSD cases at 1.5x1.5x2 mm: about
         # 5 GB in all) and holds CUDA's runtime; each loader worker shares that cache (forked) and sends batches
         # through /dev/shm (the gpu profile's 8 patches of 96^3: 57 MB a batch, 2 in flight per worker).
         resources=Resources(cpu="2", memory="24Gi", gpu=True, shm="1Gi",
                             per_worker=Resources(cpu="1", memory="2Gi", shm="512Mi"))),
    Step("infer", INFER_IMAGE, "segment held-out studies; masks on their original grid, Dice", covers="test",
         reads=(PLAN, SOURCE, MODEL), writes=(MASK, OVERLAYS, SEGMENTATION, RTSTRUCT),
         resources=Resources(cpu="2", memory="8Gi")),
    Step("evaluate", INFER_IMAGE, "held-out scores -> the run's summary",
         reads=(PLAN, MODEL, METRICS, MASK, OVERLAYS), writes=(SUMMARY, REPORT)),
    Step("promote", INFER_IMAGE, "register the model; it becomes champion only if not worse on the same held-out "
                                 "cases",
         reads=(PLAN, SOURCE, MODEL, SUMMARY), writes=(REGISTRY,),
         # Read champion, gate, move the pointer: two runs doing this at once could crown the worse model.
         mutex="liverseg-champion"),
)

STEPS: dict[str, Step] = {s.name: s for s in PIPELINE}


def topological(steps: tuple[Step, ...] = PIPELINE) -> list[Step]:
    """Steps in an order that respects ``needs`` (checks the graph is a DAG over known steps, and that every
    output a step writes is declared for that step)."""
    names = {s.name for s in steps}
    for step in steps:
        foreign = [str(o) for o in step.writes if o.step != step.name]
        if foreign:
            raise ValueError(f"step {step.name} declares outputs of other steps: {foreign}")
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
