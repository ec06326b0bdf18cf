"""group: DICOM CT series (+ SEG) → fixed-size slice groups → NIfTI, per case. Sources are only read (copy).

Reads  runs/<run>/convert/<case>/ct/*.dcm, seg.dcm
Writes runs/<run>/group/<case>/g000/image.nii.gz, g000/label.nii.gz, …   one folder per group
       runs/<run>/group/<case>/volume/image.nii.gz, volume/label.nii.gz   the whole series (default profile)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from liverseg import layout
from liverseg.config import GroupConfig
from liverseg.errors import InputError
from liverseg.imaging import dicom_read, nifti, seg
from liverseg.imaging.geometry import Volume
from liverseg.imaging.grouping import SliceGroup, dropped_slices, plan_groups, slab
from liverseg.stagekit import CaseOutput, StageContext, refs_of, upstream
from liverseg.store import ObjectRef

NAME = "group"


@dataclass
class GroupedSeries:
    volume: Volume
    label: np.ndarray | None
    groups: list[SliceGroup]
    report: dicom_read.SeriesReport


def order_slices(headers: list[dicom_read.SliceHeader], order: str) -> list[dicom_read.SliceHeader]:
    if order == "listing":
        # The published method's order: whatever order the files were listed in.
        return sorted(headers, key=lambda h: h.path.name)
    return dicom_read.sort_by_position(headers)


def group_series(files: list[Path], seg_file: Path | None, cfg: GroupConfig) -> GroupedSeries:
    """Read one series, order and check it, cut it into groups; the label comes from the SEG, per slice UID."""
    ordered = order_slices(dicom_read.single_series(dicom_read.read_headers(files)), cfg.order)
    report = dicom_read.check_stack(ordered)
    if report.problems:
        raise InputError("; ".join(report.problems))
    volume = dicom_read.stack_to_volume(ordered)
    label = None
    if seg_file is not None:
        try:
            seg_ds = pydicom.dcmread(seg_file)
        except Exception as exc:  # truncated or not DICOM: many exception types
            raise InputError(f"unreadable DICOM SEG: {type(exc).__name__}: {exc}", file=seg_file.name) from None
        label = seg.seg_to_label(seg_ds, [h.sop_instance_uid for h in ordered], [h.position for h in ordered])
    groups = plan_groups(volume.array.shape[2], cfg.size, cfg.remainder)
    return GroupedSeries(volume, label, groups, report)


def group_volume(volume: Volume, group: SliceGroup) -> Volume:
    """The group's slab, with the affine of its own first slice."""
    return slab(volume, group.start, group.stop)


def write_groups(grouped: GroupedSeries, out: Path) -> None:
    units = [("volume", SliceGroup(0, 0, grouped.volume.array.shape[2]))]
    units += [(g.name, g) for g in grouped.groups]
    for name, g in units:
        nifti.save(out / name / "image.nii.gz", group_volume(grouped.volume, g))
        if grouped.label is not None:
            nifti.save(out / name / "label.nii.gz", group_volume(Volume(grouped.label, grouped.volume.affine), g))


class GroupStage:
    name = NAME

    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        return refs_of(upstream(ctx, "convert", case))

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return ctx.config.group.model_dump(mode="json")

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> CaseOutput:
        source = layout.stage_prefix(ctx.run_id, "convert", case)
        targets = {key: work / "in" / key[len(source) + 1:] for key in inputs}
        ctx.store.get_files(targets)
        local = targets
        ct_files = [p for k, p in local.items() if k.startswith(f"{source}/ct/")]
        seg_file = local.get(f"{source}/seg.dcm")
        grouped = group_series(ct_files, seg_file, ctx.config.group)
        out = work / "out"
        write_groups(grouped, out)
        refs = ctx.store.upload_dir(out, layout.stage_prefix(ctx.run_id, NAME, case))
        n = grouped.volume.array.shape[2]
        return CaseOutput(refs, {
            "slices": n, "groups": [g.as_dict() for g in grouped.groups],
            "dropped_slices": dropped_slices(n, grouped.groups), "slice_spacing_mm": grouped.report.slice_spacing,
            "notes": grouped.report.notes, "policy": ctx.config.group.model_dump(mode="json")})
