"""preprocess: NIfTI → Orientation RAS, Spacing, HU window → 0..1, crop to body, (seed) resize → arrays.

Reads  runs/<run>/group/<case>/volume/*.nii.gz   (unit: volume, the default)
       runs/<run>/group/<case>/gNNN/*.nii.gz     (unit: group, the seed)
Writes runs/<run>/preprocess/<case>/<unit>.npz   image float32 (1, X, Y, Z) in 0..1, label uint8 (1, X, Y, Z)
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import layout
from liverseg.config import PreprocessConfig
from liverseg.errors import InputError
from liverseg.imaging import nifti
from liverseg.stagekit import CaseOutput, StageContext, refs_of, upstream
from liverseg.store import ObjectRef

NAME = "preprocess"


def units_of(keys: list[str], prefix: str, unit: str) -> list[str]:
    """Names of the group stage's folders this profile trains on: ``volume``, or every ``gNNN``."""
    names = sorted({k[len(prefix) + 1:].split("/")[0] for k in keys})
    return ["volume"] if unit == "volume" else [n for n in names if n.startswith("g")]


def preprocess_unit(image_path: Path, label_path: Path, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    from liverseg.ml.transforms import has_body, preprocess_pair  # torch/MONAI only where this stage runs

    image, label = nifti.load(image_path, kind="image"), nifti.load(label_path, kind="label")
    if not has_body(image.array, cfg):
        raise InputError(f"no voxel above {cfg.window[0]:g} HU: an empty scan, or not CT in HU",
                         file=image_path.name)
    img, lab = preprocess_pair(image, label, cfg)
    return {"image": img, "label": lab}


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


class PreprocessStage:
    name = NAME

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        refs = refs_of(upstream(ctx, "group", case))
        prefix = layout.stage_prefix(ctx.run_id, "group", case)
        wanted = units_of(list(refs), prefix, ctx.config.preprocess.unit)
        return {k: r for k, r in refs.items() if k[len(prefix) + 1:].split("/")[0] in wanted}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return ctx.config.preprocess.model_dump(mode="json")

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> CaseOutput:
        source = layout.stage_prefix(ctx.run_id, "group", case)
        target = layout.stage_prefix(ctx.run_id, NAME, case)
        units = units_of(list(inputs), source, ctx.config.preprocess.unit)
        if not any(f"{source}/{u}/label.nii.gz" in inputs for u in units):
            raise InputError("no label: preprocessing is for training data")
        refs, shapes = [], {}
        for unit in units:
            paths = {name: ctx.store.get_file(f"{source}/{unit}/{name}.nii.gz", work / unit / f"{name}.nii.gz")
                     for name in ("image", "label")}
            arrays = preprocess_unit(paths["image"], paths["label"], ctx.config.preprocess)
            refs.append(ctx.store.put_bytes(f"{target}/{unit}.npz", to_npz(arrays)))
            shapes[unit] = list(arrays["image"].shape)
        return CaseOutput(refs, {"units": shapes})
