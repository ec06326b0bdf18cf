"""convert: NIfTI (MSD) → DICOM CT series + DICOM SEG, per case.

Reads  datasets/<dataset>/imagesTr/<case>.nii.gz, labelsTr/<case>.nii.gz
Writes runs/<run>/convert/<case>/ct/0001.dcm … (one file per slice, slice order), seg.dcm

``encode_case`` is the conversion itself, files in and objects in memory out; the stage (download → encode →
write → upload) and ``liverseg dicom from-nifti`` (files → encode → files) both call it, so one NIfTI gives the
same stored values, rescale and SEG whichever wrote it. The command's start-up time counts (it is compared with
plastimatch as a whole process): numpy, the label checks and the stage's store edge are imported where used.
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from liverseg.errors import InputError
from liverseg.graph import CT, STEPS
from liverseg.imaging import dicom_write, nifti1
from liverseg.imaging.geometry import Grid, Volume, spacing
from liverseg.provenance import code_version

if TYPE_CHECKING:
    from liverseg.stagekit import StageContext, StageOutput
    from liverseg.store import ObjectRef

STEP = STEPS["convert"]


@contextmanager
def blame(file: str | None) -> Iterator[None]:
    """Errors about the data inside the block name ``file`` (what a person gave, a store key, rather than the
    temporary file it was downloaded to); with ``file`` None they keep naming the file they name."""
    try:
        yield
    except InputError as exc:
        if file is not None:
            exc.file = file
        raise


@dataclass
class EncodedCase:
    """A case as DICOM, in memory: the CT series, the SEG's bytes (None without a label) and the image grid."""

    series: dicom_write.EncodedSeries
    seg: bytes | None
    grid: Volume | Grid

    def write(self, out: Path) -> None:
        """``out/ct/NNNN.dcm`` and, with a label, ``out/seg.dcm``."""
        self.series.write(out / "ct")
        if self.seg is not None:
            (out / "seg.dcm").write_bytes(self.seg)

    def details(self) -> dict[str, Any]:
        shape = tuple(int(n) for n in self.grid.shape)
        return {"slices": shape[2], "shape": list(shape), "has_label": self.seg is not None,
                "spacing_mm": [round(s, 4) for s in spacing(self.grid.affine)]}


def uid_namespace(scope: str, patient: str, image_sha256: str, label_sha256: str | None) -> str:
    """What every UID of a converted case derives from (``dicom_write.derive_uid``): the scope (the run id in the
    pipeline, ``--namespace`` for the command), the patient (the case), the inputs' content and the code version.
    A re-run writes the same files; two runs, cases, inputs or code versions never share a UID."""
    return "|".join([scope, patient, image_sha256, label_sha256 or "", code_version()])


def image_encoder(image: Path | Volume
                  ) -> tuple[Volume | Grid, Callable[[dicom_write.SeriesInfo], dicom_write.EncodedSeries]]:
    """The image's grid (what a label is checked against) and the function that encodes it as a CT series.

    A NIfTI whose voxels already are CT stored values (``dicom_write.stored_rescale``: int16/uint16, every CT
    NIfTI we have met) is encoded from its bytes as they are, without numpy; any other is loaded as a ``Volume``
    (numpy; nibabel for variants ``nifti1`` does not read) and its HU stored as ``choose_rescale`` decides, as is
    a ``Volume`` given in memory.
    """
    if isinstance(image, Volume):
        return image, lambda info: dicom_write.encode_series(image, info)
    path = image
    try:
        header, voxels, affine = nifti1.read_checked(path, kind="image")
    except nifti1.Unsupported:
        header = None
    if header is not None and dicom_write.stored_rescale(header) is not None:
        return Grid(header.shape, affine), lambda info: dicom_write.encode_stored(header, voxels, info)
    from liverseg.imaging import nifti  # numpy

    if header is None:
        volume = nifti.load(path, kind="image")
    else:
        volume = nifti.volume_of(header, voxels, affine, kind="image", file=path.name)
    return volume, lambda info: dicom_write.encode_series(volume, info)


def encode_case(image: Path | Volume, label: Path | Volume | None, info: dicom_write.SeriesInfo, *,
                created: datetime | None = None, names: tuple[str | None, str | None] = (None, None)) -> EncodedCase:
    """``image`` as a CT Image Storage series and ``label`` (on the image's voxels) as a DICOM SEG, checked
    before anything is written. ``created`` dates the SEG (``seg.label_to_seg``); ``names`` (image, label) are
    what errors name, when not the files' own names."""
    with blame(names[0]):
        grid, encode = image_encoder(image)
    values = None
    if label is not None:
        from liverseg.imaging import nifti  # numpy: only where there is a label
        from liverseg.imaging.label import check_label

        with blame(names[1]):
            values = check_label(label if isinstance(label, Volume) else nifti.load_fast(label, kind="label"), grid)
    with blame(names[0]):
        series = encode(info)
    seg_bytes = None
    if values is not None:
        from liverseg.imaging import seg  # highdicom: only where there is a label

        buffer = io.BytesIO()
        seg.label_to_seg(values, series.datasets(with_pixels=False), info.uid_namespace, created=created).save_as(
            buffer, enforce_file_format=True)
        seg_bytes = buffer.getvalue()
    return EncodedCase(series, seg_bytes, grid)


class ConvertStage:
    def inputs(self, ctx: StageContext, case: str) -> dict[str, ObjectRef]:
        return ctx.sources(case)

    def params(self, ctx: StageContext) -> dict[str, Any]:
        return {"uids": "sha256(run, case, image and label content, code version)"}

    def process(self, ctx: StageContext, case: str, inputs: dict[str, ObjectRef], work: Path) -> StageOutput:
        from liverseg.stagekit import StageOutput

        # Image and label share a file name (imagesTr/liver_N.nii.gz, labelsTr/liver_N.nii.gz): name them by role.
        local = {role: ctx.store.get_file(ref.key, work / "in" / role / Path(ref.key).name)
                 for role, ref in inputs.items()}
        digests = {role: ref.sha256 or ref.etag for role, ref in inputs.items()}
        namespace = uid_namespace(ctx.run_id, case, digests["image"], digests.get("label"))
        encoded = encode_case(local["image"], local.get("label"),
                              dicom_write.SeriesInfo(patient_id=case, uid_namespace=namespace),
                              created=ctx.planned.created(),
                              names=(inputs["image"].key, inputs["label"].key if "label" in inputs else None))
        out = work / "out"
        encoded.write(out)
        refs = ctx.store.upload_dir(out, CT.prefix(ctx.run_id, case))
        return StageOutput(refs, encoded.details())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from liverseg.stagecli import add_run_options

    add_run_options(parser, STEP)


def main(args: argparse.Namespace) -> int:
    from liverseg.stagecli import run_step

    return run_step(STEP, args, ConvertStage())
