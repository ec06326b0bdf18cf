"""infer: a trained model + held-out studies → liver masks on each study's original grid, scored when labelled.

Reads  runs/<run>/train/model.pt, datasets/<dataset>/imagesTr/<case>.nii.gz (+ labelsTr) for the plan's test cases
Writes runs/<run>/infer/<case>/mask.nii.gz                  uint8, 1 = liver, the study's own affine and shape
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liverseg import layout
from liverseg.config import Profile, profile_from_dict
from liverseg.errors import InputError
from liverseg.imaging import dicom_read, nifti
from liverseg.imaging.geometry import Volume, same_grid
from liverseg.ml import metrics
from liverseg.ml.inference import Segmentation, segment
from liverseg.ml.model import build_unet, memory_format, pick_device
from liverseg.registry import Registry, RegistryError
from liverseg.stagekit import CaseOutput, StageContext, StageError, completed, refs_of, source_refs, upstream
from liverseg.store import ObjectRef
from liverseg.train.stage import from_bytes

from .report import liver_ml, overlay_pngs

NAME = "infer"
log = logging.getLogger(__name__)


class LoadedModel:
    """A model file's network (eval mode, on ``device``) and the profile it was trained with."""

    def __init__(self, payload: dict[str, Any], device: torch.device):
        if payload.get("format") != "liverseg.model/v1":
            raise StageError("not a liverseg model file (format liverseg.model/v1 expected)")
        self.profile: Profile = profile_from_dict(payload["profile"])
        self.network = build_unet().to(device).to(memory_format=memory_format(device))
        self.network.load_state_dict(payload["state_dict"])
        self.network.eval()
        self.device = device
        self.payload = payload

    def segment(self, volume: Volume, label: Volume | None = None) -> Segmentation:
        return segment(self.network, volume, self.profile, self.device, label)


def score(mask: np.ndarray, label: Volume, image: Volume) -> dict[str, float]:
    """Hard foreground Dice and HD95 (mm) against liver = label ≥ 1, on the study's grid."""
    if not same_grid(label.affine, image.affine, label.array.shape, image.array.shape, tol_mm=1e-2):
        raise InputError("label grid differs from the image grid")
    truth = label.array >= 1
    return {"dice": round(metrics.dice(mask, truth), 5),
            "hd95_mm": round(metrics.hd95(mask, truth, image.spacing), 3),
            "liver_ml": liver_ml(mask, image)}


def study_name(key: str) -> str:
    """A study's id from its key: ``…/liver_7.nii.gz`` -> ``liver_7``; DICOM prefix ``…/patient7/`` -> ``patient7``."""
    last = key.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".nii.gz", ".nii"):
        last = last.removesuffix(suffix)
    return layout.check_id("study", last)


def is_nifti(key: str) -> bool:
    return key.endswith((".nii.gz", ".nii"))


class InferStage:
    """Pipeline mode (``studies`` None): the plan's held-out cases with this run's trained model, scored
    against their labels. Study mode: any NIfTI objects or DICOM series prefixes, with ``model_key``."""

    name = NAME

    def __init__(self, device: str | None = None, model_key: str | None = None,
                 studies: dict[str, str] | None = None):
        self.device = pick_device(device)
        self.model_key, self.studies = model_key, studies
        self._model: tuple[str, LoadedModel] | None = None

    def model(self, ctx: StageContext, ref: ObjectRef) -> LoadedModel:
        if self._model is None or self._model[0] != ref.key + (ref.sha256 or ref.etag):
            self._model = (ref.key + (ref.sha256 or ref.etag), LoadedModel(from_bytes(ctx.store.get_bytes(ref.key)),
                                                                           self.device))
        return self._model[1]

    def _model_ref(self, ctx: StageContext) -> ObjectRef:
        if self.model_key:
            try:
                key = Registry(ctx.store).resolve(self.model_key)
            except RegistryError as exc:
                raise StageError(str(exc)) from None
            ref = ctx.store.stat(key)
            if ref is None:
                raise StageError(f"model {key} is not in the store")
            return ref
        model_key = layout.stage_prefix(ctx.run_id, "train") + "/model.pt"
        trained = refs_of(completed(ctx, "train"))
        if model_key not in trained:
            raise StageError(f"run {ctx.run_id}: the train stage recorded no {model_key}")
        return trained[model_key]

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        refs = {"model": self._model_ref(ctx)}
        if self.studies is not None:
            key = self.studies[case]
            if is_nifti(key):
                ref = ctx.store.stat(key)
                if ref is None:
                    raise InputError(f"study object {key} is missing from the store")
                return {**refs, "image": ref}
            files = ctx.store.list(key.rstrip("/") + "/")
            if not files:
                raise InputError(f"no objects under study prefix {key}")
            return {**refs, **{f"dicom:{f.key}": f for f in files}}
        upstream(ctx, "convert", case)  # a study the convert stage set aside is set aside here too
        return {**refs, **source_refs(ctx, case)}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        # Study mode has no plan: the model's own profile decides inference (and its hash is an input).
        return ctx.config.infer.model_dump(mode="json") if self.studies is None else {}

    @staticmethod
    def _study_volume(ctx: StageContext, inputs: dict[str, ObjectRef], work: Path
                      ) -> tuple[Volume, list[dicom_read.Skipped]]:
        """The study as a volume, and the files of a DICOM study that were skipped as no CT slices."""
        if "image" in inputs:
            return nifti.load(ctx.store.get_file(inputs["image"].key, work / "image.nii.gz"), kind="image"), []
        # Keep the files' own names (relative to the study prefix): errors name the file a person uploaded.
        keys = [r.key for k, r in inputs.items() if k.startswith("dicom:")]
        prefix = os.path.commonpath(keys) if len(keys) > 1 else keys[0].rsplit("/", 1)[0]
        targets = {key: work / "dicom" / key[len(prefix):].lstrip("/") for key in keys}
        volume, report, _ = dicom_read.series_to_volume(ctx.store.get_files(targets))
        if report.skipped:
            log.warning("files skipped", extra={"skipped": dicom_read.skipped_line(report.skipped)})
        return volume, report.skipped

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> CaseOutput:
        model = self.model(ctx, inputs["model"])
        image, skipped = self._study_volume(ctx, inputs, work)
        label = None
        if "label" in inputs:
            label = nifti.load(ctx.store.get_file(inputs["label"].key, work / "label.nii.gz"), kind="label")
        started = time.perf_counter()
        result = model.segment(image, label)
        seconds = time.perf_counter() - started
        ctx.metrics.infer_seconds.observe(seconds)
        out = nifti.save(work / "mask.nii.gz", Volume(result.mask, image.affine))
        prefix = layout.stage_prefix(ctx.run_id, NAME, case)
        refs = [ctx.store.put_file(f"{prefix}/mask.nii.gz", out)]
        refs += [ctx.store.put_bytes(f"{prefix}/overlay_{view}.png", png, content_type="image/png")
                 for view, png in overlay_pngs(image, result.mask).items()]
        details: dict[str, Any] = {"seconds": round(seconds, 2), "shape": list(result.mask.shape),
                                   "model": inputs["model"].key}
        if skipped:
            details["skipped_files"] = [s.as_dict() for s in skipped]
        if label is not None:
            details.update(score(result.mask, label, image))
            details["seed_style_dice"] = round(result.seed_style_dice, 5)
        log.info("case segmented", extra=details)
        return CaseOutput(refs, details)
