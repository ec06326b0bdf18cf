"""preprocess: NIfTI → Orientation RAS, Spacing, HU window → 0..1, crop to body, (seed) resize → arrays.

Reads  runs/<run>/group/<case>/volume/*.nii.gz   (unit: volume, the default)
       runs/<run>/group/<case>/gNNN/*.nii.gz     (unit: group, the seed)
Writes runs/<run>/preprocess/<case>/<unit>.npz   image float32 (1, X, Y, Z) in 0..1, label uint8 (1, X, Y, Z)
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

import numpy as np

from liverseg.config import PreprocessConfig
from liverseg.errors import InputError
from liverseg.graph import ARRAYS, GROUPS, STEPS, VOLUME
from liverseg.imaging import nifti
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import StageContext, StageOutput
from liverseg.store import ObjectRef

STEP = STEPS["preprocess"]


def preprocess_unit(image_path: Path, label_path: Path, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    from liverseg.ml.transforms import has_body, preprocess_pair  # torch/MONAI only where this stage runs

    image, label = nifti.load_fast(image_path, kind="image"), nifti.load_fast(label_path, kind="label")
    if not has_body(image.array, cfg):
        raise InputError(f"no voxel above {cfg.window[0]:g} HU: an empty scan, or not CT in HU",
                         file=image_path.name)
    img, lab = preprocess_pair(image, label, cfg)
    return {"image": img, "label": lab}


def to_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, image=arrays["image"], label=arrays["label"])
    return buffer.getvalue()


class PreprocessStage:
    """The profile's training units of a case: the whole series (``unit: volume``) or each slice group (seed)."""

    @staticmethod
    def _units(ctx: StageContext) -> tuple:
        return (VOLUME,) if ctx.config.preprocess.unit == "volume" else (GROUPS,)

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        return {k: r for output in self._units(ctx) for k, r in ctx.read(output, case).items()}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return ctx.config.preprocess.model_dump(mode="json")

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> StageOutput:
        source = GROUPS.prefix(ctx.run_id, case)
        units = sorted({key[len(source) + 1:].split("/")[0] for key in inputs})
        if not any(f"{source}/{u}/label.nii.gz" in inputs for u in units):
            raise InputError("no label: preprocessing is for training data")
        refs, shapes = [], {}
        for unit in units:
            paths = {name: ctx.store.get_file(f"{source}/{unit}/{name}.nii.gz", work / unit / f"{name}.nii.gz")
                     for name in ("image", "label")}
            arrays = preprocess_unit(paths["image"], paths["label"], ctx.config.preprocess)
            refs.append(ctx.store.put_bytes(ARRAYS.key(ctx.run_id, case, f"{unit}.npz"), to_npz(arrays)))
            shapes[unit] = list(arrays["image"].shape)
        return StageOutput(refs, {"units": shapes})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)


def main(args: argparse.Namespace) -> int:
    return run_step(STEP, args, PreprocessStage())
