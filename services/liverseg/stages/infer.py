"""infer: a trained model + held-out studies → liver masks on each study's original grid, scored when labelled.

Reads  runs/<run>/train/model.pt, datasets/<dataset>/imagesTr/<case>.nii.gz (+ labelsTr) for the plan's test cases
Writes runs/<run>/infer/<case>/mask.nii.gz                  uint8, 1 = liver, the study's own affine and shape
       runs/<run>/infer/<case>/overlay_{axial,coronal,sagittal}.png
       runs/<run>/infer/<case>/seg.dcm, rtstruct.dcm        DICOM studies only: DICOM SEG, RT Structure Set

Study mode (``--study``, the ``liverseg-infer`` workflow) segments any NIfTI object, DICOM series prefix in the
store, or DICOMweb study URL (its series chosen and retrieved by ``dicomweb``) with any model, without a plan;
``--send-to ROOT`` stores each study's SEG and RTSTRUCT in a DICOMweb archive too. ``segment_study`` is the
segmentation itself; this stage (download → segment → upload) and ``liverseg segment`` (files → segment → files)
both call it.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from liverseg import dicomweb, layout
from liverseg.errors import InputError, StageError, UsageError
from liverseg.graph import MASK, MODEL, STEPS
from liverseg.imaging import dicom_read, dicom_volume, nifti
from liverseg.imaging.geometry import Volume, same_grid
from liverseg.ml import metrics
from liverseg.ml.model import pick_device
from liverseg.ml.modelfile import LoadedModel
from liverseg.provenance import code_version
from liverseg.registry import Registry
from liverseg.report import liver_ml, overlay_pngs
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import StageContext, StageOutput
from liverseg.store import ObjectRef

STEP = STEPS["infer"]
log = logging.getLogger(__name__)


@dataclass
class Study:
    """A study to segment: its volume (HU), and for a DICOM study its ordered slices and the files skipped."""

    image: Volume
    slices: list[dicom_read.SliceHeader] | None = None
    skipped: list[dicom_read.Skipped] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Study:
        """A DICOM series folder or a NIfTI file."""
        if path.is_dir():
            image, report, ordered = dicom_volume.series_to_volume(dicom_read.series_files(path))
            return cls(image, ordered, report.skipped)
        return cls(nifti.load_fast(path, kind="image"))


def score(mask: np.ndarray, label: Volume, image: Volume) -> dict[str, float]:
    """Hard foreground Dice and HD95 (mm) against liver = label ≥ 1, on the study's grid."""
    if not same_grid(label.affine, image.affine, label.array.shape, image.array.shape, tol_mm=1e-2):
        raise InputError("label grid differs from the image grid")
    truth = label.array >= 1
    return {"dice": round(metrics.dice(mask, truth), 5),
            "hd95_mm": round(metrics.hd95(mask, truth, image.spacing), 3),
            "liver_ml": liver_ml(mask, image)}


def segment_study(model: LoadedModel, model_sha256: str, study: Study, out: Path,
                  label: Volume | None = None, created: datetime | None = None) -> dict[str, Any]:
    """Segment ``study`` and write into ``out``: ``mask.nii.gz`` (uint8 on the study's own grid), the three
    overlays and, for a DICOM study, ``seg.dcm`` and ``rtstruct.dcm`` (a DICOM SEG and an RT Structure Set
    referencing its slices; their UIDs derive from the series, the model's content and the code version, so a
    re-run writes the same objects), or, for a series without UIDs, the reason there are none
    (``imaging.derived``); with ``created`` (the stage gives the plan's time) their bytes are the same too, so two
    pods on one case at once upload identical objects. With ``label`` the figures include Dice and HD95. Returns
    the figures, the files written (relative names) and ``not_written`` (file -> reason)."""
    started = time.perf_counter()
    result = model.segment(study.image, label)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    nifti.save_fast(out / "mask.nii.gz", Volume(result.mask, study.image.affine))
    files = ["mask.nii.gz"]
    not_written: dict[str, str] = {}
    if study.slices is not None:
        from liverseg.imaging.derived import write_derived  # highdicom, contourpy: only for DICOM studies

        namespace = f"segment|{study.slices[0].series_uid}|{model_sha256}|{code_version()}"
        derived = write_derived(result.mask, [h.metadata() for h in study.slices], namespace, out,
                                algorithm=f"liverseg {model_sha256[:12]}", created=created)
        files += derived.written
        not_written = derived.skipped
    for view, png in overlay_pngs(study.image, result.mask).items():
        (out / f"overlay_{view}.png").write_bytes(png)
        files.append(f"overlay_{view}.png")
    figures: dict[str, Any] = {"seconds": round(seconds, 2), "shape": list(result.mask.shape),
                               "liver_ml": liver_ml(result.mask, study.image)}
    if label is not None:
        figures.update(score(result.mask, label, study.image))
        if result.seed_style_dice is not None:
            figures["seed_style_dice"] = round(result.seed_style_dice, 5)
    if study.skipped:
        figures["skipped_files"] = [s.as_dict() for s in study.skipped]
    if not_written:
        figures["not_written"] = not_written
    return {"figures": figures, "files": files, "not_written": not_written}


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
    against their labels. Study mode: any NIfTI objects, DICOM series prefixes or DICOMweb study URLs, with
    ``model_key``; ``send_to``: a DICOMweb root that receives each study's SEG and RTSTRUCT."""

    def __init__(self, device: str | None = None, model_key: str | None = None,
                 studies: dict[str, str] | None = None, send_to: str | None = None):
        self.device = pick_device(device)
        self.model_key, self.studies, self.send_to = model_key, studies, send_to
        self._model: tuple[str, LoadedModel] | None = None
        uses_archive = bool(send_to) or any(dicomweb.is_study_url(k) for k in (studies or {}).values())
        self._archives = dicomweb.Archives() if uses_archive else None

    @property
    def archives(self) -> dicomweb.Archives:
        """The archives of the study URLs and of ``send_to`` (made, credentials checked, only when there are any)."""
        if self._archives is None:
            raise UsageError("no DICOMweb study URL and no --send-to: no archive to reach")
        return self._archives

    def model(self, ctx: StageContext, ref: ObjectRef) -> LoadedModel:
        identity = ref.key + (ref.sha256 or ref.etag)
        if self._model is None or self._model[0] != identity:
            self._model = (identity, LoadedModel.from_bytes(ctx.store.get_bytes(ref.key), self.device, ref.key))
        return self._model[1]

    def _model_ref(self, ctx: StageContext) -> ObjectRef:
        if self.model_key:
            key = Registry(ctx.store).resolve(self.model_key)
            ref = ctx.store.stat(key)
            if ref is None:
                raise StageError(f"model {key} is not in the store")
            return ref
        return ctx.read(MODEL)[MODEL.key(ctx.run_id)]

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        refs = {"model": self._model_ref(ctx)}
        if self.studies is None:
            return {**refs, **ctx.sources(case)}
        key = self.studies[case]
        if dicomweb.is_study_url(key):
            series, content, instances = self.archives.series_input(key)
            return {**refs, "series": ObjectRef(series, content, instances)}
        if is_nifti(key):
            ref = ctx.store.stat(key)
            if ref is None:
                raise InputError(f"study object {key} is missing from the store")
            return {**refs, "image": ref}
        files = ctx.store.list(key.rstrip("/") + "/")
        if not files:
            raise InputError(f"no objects under study prefix {key}")
        return {**refs, **{f"dicom:{f.key}": f for f in files}}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        # Study mode has no plan: the model's own profile decides inference (and its hash is an input).
        if self.studies is None:
            return ctx.config.infer.model_dump(mode="json")
        return {"send_to": self.send_to} if self.send_to else {}

    def _download(self, ctx: StageContext, inputs: dict[str, ObjectRef], work: Path) -> Path:
        """The study as local files: a NIfTI file, a DICOMweb series (in the work folder, gone with it), or a folder
        of the DICOM study's objects under their own names (relative to the study prefix: errors name the file a
        person uploaded)."""
        if "series" in inputs:
            return self.archives.retrieve(inputs["series"].key, work / "dicom")
        if "image" in inputs:
            return ctx.store.get_file(inputs["image"].key, work / "image.nii.gz")
        keys = [r.key for k, r in inputs.items() if k.startswith("dicom:")]
        prefix = os.path.commonpath(keys) if len(keys) > 1 else keys[0].rsplit("/", 1)[0]
        ctx.store.get_files({key: work / "dicom" / key[len(prefix):].lstrip("/") for key in keys})
        return work / "dicom"

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> StageOutput:
        model = self.model(ctx, inputs["model"])
        study = Study.read(self._download(ctx, inputs, work / "in"))
        if study.skipped:
            log.warning("files skipped", extra={"skipped": dicom_read.skipped_line(study.skipped)})
        label = None
        if "label" in inputs:
            label = nifti.load_fast(ctx.store.get_file(inputs["label"].key, work / "label.nii.gz"), kind="label")
        # Study mode has no plan to date the SEG and RTSTRUCT by: the clock does, as for the segment command.
        created = ctx.plan.created() if ctx.plan is not None else None
        done = segment_study(model, inputs["model"].sha256 or inputs["model"].etag, study, work / "out", label,
                             created=created)
        ctx.metrics.infer_seconds.observe(done["figures"]["seconds"])
        details = {**done["figures"], "model": inputs["model"].key}
        if self.studies is not None and dicomweb.is_study_url(self.studies[case]):
            details["series"] = self.archives.choices[str(dicomweb.StudyURL.parse(self.studies[case]))].as_dict()
        if self.send_to:  # before the upload: the manifest, written last, records what the archive holds
            from liverseg.imaging.derived import DERIVED_FILES

            details["sent"] = self.archives.at(self.send_to).store_files(
                [work / "out" / f for f in DERIVED_FILES if f in done["files"]])
        refs = ctx.store.upload_dir(work / "out", MASK.prefix(ctx.run_id, case))
        log.info("case segmented", extra=details)
        return StageOutput(refs, details)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--model", default=None, metavar="KEY",
                        help="'champion', a registered version, or a model file key in the store "
                             "(default: this run's runs/<run-id>/train/model.pt)")
    parser.add_argument("--study", action="append", default=[], metavar="KEY",
                        help="segment this study instead of the plan's held-out cases: a NIfTI object "
                             "(.nii/.nii.gz), a prefix holding one DICOM series or a DICOMweb study URL "
                             "(http(s)://HOST/PATH/studies/<UID>), optionally NAME=KEY "
                             "(repeatable; needs --model)")
    parser.add_argument("--send-to", default="", metavar="ROOT",
                        help="study mode: store each study's seg.dcm and rtstruct.dcm in this DICOMweb root "
                             "(STOW-RS; credentials from LIVERSEG_DICOMWEB_*); empty: send nothing")


def main(args: argparse.Namespace) -> int:
    if not args.study:
        if args.send_to:
            raise UsageError("--send-to needs --study (held-out cases of a run are not sent to an archive)")
        return run_step(STEP, args, InferStage(args.device, args.model))
    if not args.model:
        raise UsageError("--study needs --model KEY (the model to segment with)")
    studies = {}
    for item in args.study:
        name, sep, key = item.partition("=")
        studies[name if sep else study_name(item)] = key if sep else item
    for key in [k for k in studies.values() if dicomweb.is_study_url(k)] + [args.send_to]:
        if key:  # a malformed URL or one carrying credentials stops here, not as a case set aside
            dicomweb.check_root(key)
    return run_step(STEP, args, InferStage(args.device, args.model, studies, args.send_to or None),
                    cases=list(studies), needs_plan=False)
