"""convert: NIfTI (MSD) → DICOM CT series + DICOM SEG, per case.

Reads  datasets/<dataset>/imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz
Writes runs/<run>/convert/<case>/ct/0001.dcm … (one file per slice, slice order), seg.dcm
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from liverseg import layout
from liverseg import manifest as mf
from liverseg.errors import InputError
from liverseg.imaging import dicom_write, nifti, seg
from liverseg.imaging.geometry import Volume, same_grid
from liverseg.stagekit import CaseOutput, StageContext
from liverseg.store import ObjectRef

NAME = "convert"
LABEL_VALUES = {0, 1, 2}


def check_label(label: Volume, image: Volume) -> np.ndarray:
    """The label as uint8 on the image's grid, or an ``InputError`` saying why it cannot be."""
    if not same_grid(label.affine, image.affine, label.array.shape, image.array.shape, tol_mm=1e-2):
        raise InputError(f"label grid {label.array.shape} at {np.round(label.affine[:3, 3], 2).tolist()} differs "
                         f"from the image grid {image.array.shape} at {np.round(image.affine[:3, 3], 2).tolist()}")
    values = label.array
    if values.dtype.kind == "f" and np.any(np.mod(values, 1) != 0):
        raise InputError("label has non-integer values")
    present = {int(v) for v in np.unique(values)}
    if not present <= LABEL_VALUES:
        raise InputError(f"label values {sorted(present - LABEL_VALUES)} are outside {{0, 1, 2}}")
    if present == {0}:
        raise InputError("label is empty: no liver voxels")
    return values.astype(np.uint8)


def nifti_to_dicom(image: Volume, label: Volume | None, patient_id: str, uid_namespace: str, out: Path) -> None:
    """Write ``out/ct/NNNN.dcm`` and, with a label, ``out/seg.dcm``."""
    series = dicom_write.ct_series(image, dicom_write.SeriesInfo(patient_id=patient_id, uid_namespace=uid_namespace))
    if label is not None:
        values = check_label(label, image)
        seg.label_to_seg(values, series, uid_namespace).save_as(out / "seg.dcm", enforce_file_format=True)
    dicom_write.write_series(series, out / "ct")


class ConvertStage:
    name = NAME

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        entry = ctx.plan.cases[case]
        refs = {}
        for role, key in (("image", entry.image), ("label", entry.label)):
            if key is None:
                continue
            ref = ctx.store.stat(key)
            if ref is None:
                raise InputError(f"{role} object {key} is missing from the store")
            refs[role] = ref
        return refs

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return {"uids": "sha256(run, case, image content, code version)"}

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> CaseOutput:
        # Image and label share a file name (imagesTr/liver_N.nii.gz, labelsTr/liver_N.nii.gz): name them by role.
        local = {role: ctx.store.get_file(ref.key, work / "in" / role / Path(ref.key).name)
                 for role, ref in inputs.items()}
        image = nifti.load(local["image"], kind="image")
        label = nifti.load(local["label"], kind="label") if "label" in local else None
        namespace = f"{ctx.run_id}|{case}|{inputs['image'].sha256 or inputs['image'].etag}|{mf.code_version()}"
        out = work / "out"
        (out / "ct").mkdir(parents=True)
        nifti_to_dicom(image, label, case, namespace, out)
        refs = ctx.store.upload_dir(out, layout.stage_prefix(ctx.run_id, NAME, case))
        return CaseOutput(refs, {"slices": int(image.array.shape[2]), "shape": list(image.array.shape),
                                 "spacing_mm": [round(s, 4) for s in image.spacing], "has_label": label is not None})
