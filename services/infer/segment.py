"""liverseg segment INPUT --out DIR [--model M]: one command for one study, like TotalSegmentator's.

INPUT is a DICOM series folder or a NIfTI file; M is a local model file, or a registry version / ``champion`` in
the store (the default). DIR receives ``mask.nii.gz`` (the study's own grid), ``seg.dcm`` (DICOM input only: a
DICOM SEG referencing the source series), ``overlay_{axial,coronal,sagittal}.png`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("segment", help="segment one study (DICOM folder or NIfTI) into DIR",
                            description=__doc__.split("\n\n")[1])
    parser.add_argument("input", type=Path, help="a DICOM series folder or a .nii/.nii.gz file")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--model", default="champion",
                        help="a local model file, or a registry version / 'champion' in the store (default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.set_defaults(func=main)


def load_model_bytes(model: str) -> tuple[bytes, str]:
    """Weights from a local file, or from the registry in the store. Returns (bytes, where they came from)."""
    path = Path(model)
    if path.is_file():
        return path.read_bytes(), str(path.resolve())
    from liverseg.registry import Registry
    from liverseg.store import ObjectStore

    store = ObjectStore.from_env()
    key = Registry(store).resolve(model)
    return store.get_bytes(key), f"s3://{store.bucket}/{key}"


def segment_study(source: Path, out: Path, model_bytes: bytes, model_name: str, device: str | None) -> dict:
    from liverseg import __version__
    from liverseg.imaging import dicom_read, nifti, seg
    from liverseg.imaging.geometry import Volume
    from liverseg.ml.model import pick_device
    from liverseg.stagekit import StageError
    from liverseg.train.stage import from_bytes

    from .report import ReportEntry, html_report, liver_ml, overlay_pngs
    from .stage import LoadedModel

    try:
        model = LoadedModel(from_bytes(model_bytes), pick_device(device))
    except Exception as exc:  # unpickling or state-dict errors of many kinds: not a model we can use
        raise StageError(f"{model_name} is not a usable liverseg model ({type(exc).__name__}: {exc})") from None
    skipped: list[dicom_read.Skipped] = []
    if source.is_dir():
        image, report, ordered = dicom_read.series_to_volume(dicom_read.series_files(source))
        skipped = report.skipped
        if skipped:
            print(f"liverseg segment: warning: {source}: {dicom_read.skipped_line(skipped)}", file=sys.stderr)
    else:
        image, ordered = nifti.load(source), None
    result = model.segment(image)
    out.mkdir(parents=True, exist_ok=True)
    nifti.save(out / "mask.nii.gz", Volume(result.mask, image.affine))
    written = ["mask.nii.gz"]
    if ordered is not None:
        source_datasets = [h.ds for h in ordered]
        namespace = f"segment|{source_datasets[0].SeriesInstanceUID}|{model_name}|{__version__}"
        seg.label_to_seg(result.mask, source_datasets, namespace, algorithm=f"liverseg {model_name}"[:64],
                         ).save_as(out / "seg.dcm", enforce_file_format=True)
        written.append("seg.dcm")
    overlays = {}
    for view, png in overlay_pngs(image, result.mask).items():
        (out / f"overlay_{view}.png").write_bytes(png)
        overlays[view] = f"overlay_{view}.png"
        written.append(overlays[view])
    figures = {"liver_ml": liver_ml(result.mask, image), "shape": "x".join(map(str, result.mask.shape))}
    (out / "report.html").write_text(html_report(f"liverseg segment {source.name}", [
        ReportEntry(source.name, figures, overlays)], [f"model: {model_name}"]))
    written.append("report.html")
    return {"input": str(source), "out": str(out), "model": model_name, "files": written, **figures,
            "skipped_files": [s.as_dict() for s in skipped]}


def main(args: argparse.Namespace) -> int:
    from liverseg import logs
    from liverseg.errors import InputError
    from liverseg.registry import RegistryError
    from liverseg.settings import SettingsError
    from liverseg.stagekit import StageError
    from liverseg.store import StoreError

    logs.configure(stage="segment")
    if not args.input.exists():
        print(f"liverseg segment: {args.input} does not exist", file=sys.stderr)
        return 2
    try:
        model_bytes, model_name = load_model_bytes(args.model)
        print(json.dumps(segment_study(args.input, args.out, model_bytes, model_name, args.device)))
    except InputError as exc:
        print(f"liverseg segment: {args.input}: {exc}", file=sys.stderr)
        return 1
    except (RegistryError, SettingsError, StoreError, StageError) as exc:
        print(f"liverseg segment: model {args.model}: {exc}", file=sys.stderr)
        return 1
    return 0
