"""group: DICOM CT series (+ SEG) → fixed-size slice groups → NIfTI, per case. Sources are only read (copy).

Reads  runs/<run>/convert/<case>/ct/*.dcm, seg.dcm
Writes runs/<run>/group/<case>/g000/image.nii.gz, g000/label.nii.gz, …   one folder per group
       runs/<run>/group/<case>/volume/image.nii.gz, volume/label.nii.gz   the whole series (default profile)

``group_headers`` and ``write_groups`` are the grouping itself; the stage (download → group → upload) and
``liverseg dicom group`` (a folder of series → groups, with copies of each group's DICOM files) both call them.
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liverseg.config import GroupConfig
from liverseg.errors import InputError
from liverseg.graph import CT, GROUPS, SEG, STEPS
from liverseg.imaging import dicom_read, dicom_volume, nifti
from liverseg.imaging.geometry import Volume
from liverseg.imaging.grouping import SliceGroup, dropped_slices, plan_groups, slab
from liverseg.stagecli import add_run_options, run_step
from liverseg.stagekit import StageContext, StageOutput
from liverseg.store import ObjectRef

STEP = STEPS["group"]
WHOLE_SERIES = "volume"


@dataclass
class GroupedSeries:
    """One series, ordered and checked: its slices' headers, the volume (HU), the label from its SEG (uint8, on
    the volume's grid) and the groups it is cut into."""

    ordered: list[dicom_read.SliceHeader]
    volume: Volume
    label: Any  # np.ndarray | None
    groups: list[SliceGroup]
    report: dicom_read.SeriesReport

    def details(self) -> dict[str, Any]:
        n = self.volume.array.shape[2]
        return {"slices": n, "groups": [g.as_dict() for g in self.groups],
                "dropped_slices": dropped_slices(n, self.groups), "slice_spacing_mm": self.report.slice_spacing,
                "notes": self.report.notes}


def order_slices(headers: Sequence[dicom_read.SliceHeader], order: str) -> list[dicom_read.SliceHeader]:
    if order == "listing":
        # The published method's order: whatever order the files were listed in.
        return sorted(headers, key=lambda h: h.path.name)
    return dicom_read.sort_by_position(headers)


def group_headers(headers: Sequence[dicom_read.SliceHeader], seg_file: Path | None, cfg: GroupConfig
                  ) -> GroupedSeries:
    """One series' slices ordered (``cfg.order``), checked, cut into groups (``InputError`` on a problem, before
    any pixel is decoded), decoded; the label comes from the SEG, matched per slice UID."""
    ordered = order_slices(headers, cfg.order)
    report = dicom_read.check_stack(ordered)
    if report.problems:
        raise InputError("; ".join(report.problems))
    groups = plan_groups(len(ordered), cfg.size, cfg.remainder)
    volume = dicom_volume.stack_to_volume(ordered)
    label = None
    if seg_file is not None:
        import pydicom

        from liverseg.imaging import seg

        try:
            seg_ds = pydicom.dcmread(seg_file)
        except Exception as exc:  # truncated or not DICOM: many exception types
            raise InputError(f"unreadable DICOM SEG: {type(exc).__name__}: {exc}", file=seg_file.name) from None
        label = seg.seg_to_label(seg_ds, [h.sop_instance_uid for h in ordered], [h.position for h in ordered])
    return GroupedSeries(ordered, volume, label, groups, report)


def group_series(files: Sequence[Path], seg_file: Path | None, cfg: GroupConfig) -> GroupedSeries:
    """``group_headers`` of the one series in ``files``."""
    return group_headers(dicom_read.single_series(dicom_read.read_headers(files)), seg_file, cfg)


def write_groups(grouped: GroupedSeries, out: Path, *, copy_dicom: bool = False) -> None:
    """``out/volume/`` (the whole series) and ``out/gNNN/`` per group: ``image.nii.gz`` and, with a label,
    ``label.nii.gz``, each slab with the affine of its own first slice. ``copy_dicom`` also copies each group's
    source files into ``gNNN/dicom/`` (the published method's folders; copies, never moves)."""
    units = [(WHOLE_SERIES, SliceGroup(0, 0, grouped.volume.array.shape[2])), *((g.name, g) for g in grouped.groups)]
    for name, g in units:
        nifti.save_fast(out / name / "image.nii.gz", slab(grouped.volume, g.start, g.stop))
        if grouped.label is not None:
            nifti.save_fast(out / name / "label.nii.gz",
                            slab(Volume(grouped.label, grouped.volume.affine), g.start, g.stop))
        if copy_dicom and name != WHOLE_SERIES:
            (out / name / "dicom").mkdir(parents=True)
            for k in range(g.start, g.stop):
                source = grouped.ordered[k].path
                shutil.copyfile(source, out / name / "dicom" / f"{k:04d}_{source.name}")


class GroupStage:
    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        return {**ctx.read(CT, case), **ctx.read(SEG, case)}

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return ctx.config.group.model_dump(mode="json")

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> StageOutput:
        source = CT.prefix(ctx.run_id, case)
        local: dict[str, Path] = {key: work / "in" / key[len(source) + 1:] for key in inputs}
        ctx.store.get_files(local)
        ct_files = [path for key, path in local.items() if CT.owns(key, ctx.run_id, case)]
        seg_files = [path for key, path in local.items() if SEG.owns(key, ctx.run_id, case)]
        grouped = group_series(ct_files, seg_files[0] if seg_files else None, ctx.config.group)
        write_groups(grouped, work / "out")
        refs = ctx.store.upload_dir(work / "out", GROUPS.prefix(ctx.run_id, case))
        return StageOutput(refs, {**grouped.details(), "policy": ctx.config.group.model_dump(mode="json")})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_options(parser, STEP)


def main(args: argparse.Namespace) -> int:
    return run_step(STEP, args, GroupStage())
