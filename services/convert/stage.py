"""convert: NIfTI (MSD) → DICOM CT series + DICOM SEG, per case.

Reads  datasets/<dataset>/imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz
Writes runs/<run>/convert/<case>/ct/0001.dcm … (one file per slice, slice order), seg.dcm
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from liverseg import layout
from liverseg import manifest as mf
from liverseg.errors import InputError
from liverseg.imaging import dicom_write, nifti, seg
from liverseg.imaging.geometry import Volume
from liverseg.imaging.label import LABEL_VALUES, check_label  # noqa: F401  (check_label: this stage's API)
from liverseg.stagekit import CaseOutput, StageContext, source_refs
from liverseg.store import ObjectRef

NAME = "convert"


@contextmanager
def blame(file: str) -> Iterator[None]:
    """Errors about the data inside the block name ``file`` (the store key a person uploaded)."""
    try:
        yield
    except InputError as exc:
        exc.file = file
        raise


def nifti_to_dicom(image: Volume, label: Volume | None, patient_id: str, uid_namespace: str, out: Path,
                   created: datetime | None = None, names: tuple[str, str] = ("image", "label")) -> None:
    """Write ``out/ct/NNNN.dcm`` and, with a label, ``out/seg.dcm`` (the label is checked before anything is
    written). ``created`` dates the SEG (see ``seg.label_to_seg``); ``names`` (image, label) go into errors."""
    with blame(names[1]):
        values = check_label(label, image) if label is not None else None
    with blame(names[0]):
        series = dicom_write.encode_series(
            image, dicom_write.SeriesInfo(patient_id=patient_id, uid_namespace=uid_namespace))
    if values is not None:
        seg_ds = seg.label_to_seg(values, series.datasets(with_pixels=False), uid_namespace, created=created)
        out.mkdir(parents=True, exist_ok=True)
        seg_ds.save_as(out / "seg.dcm", enforce_file_format=True)
    series.write(out / "ct")


class ConvertStage:
    name = NAME

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        return source_refs(ctx, case)

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return {"uids": "sha256(run, case, image content, code version)"}

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> CaseOutput:
        # Image and label share a file name (imagesTr/liver_N.nii.gz, labelsTr/liver_N.nii.gz): name them by role.
        local = {role: ctx.store.get_file(ref.key, work / "in" / role / Path(ref.key).name)
                 for role, ref in inputs.items()}
        names = (inputs["image"].key, inputs["label"].key if "label" in inputs else "label")
        with blame(names[0]):
            image = nifti.load(local["image"], kind="image")
        with blame(names[1]):
            label = nifti.load(local["label"], kind="label") if "label" in local else None
        namespace = f"{ctx.run_id}|{case}|{inputs['image'].sha256 or inputs['image'].etag}|{mf.code_version()}"
        planned = datetime.fromisoformat(ctx.plan.planned_at) if ctx.plan.planned_at else None
        out = work / "out"
        (out / "ct").mkdir(parents=True)
        nifti_to_dicom(image, label, case, namespace, out, created=planned, names=names)
        refs = ctx.store.upload_dir(out, layout.stage_prefix(ctx.run_id, NAME, case))
        return CaseOutput(refs, {"slices": int(image.array.shape[2]), "shape": list(image.array.shape),
                                 "spacing_mm": [round(s, 4) for s in image.spacing], "has_label": label is not None})
