"""liverseg segment INPUT --out DIR [--model M]: one command for one study, like TotalSegmentator's.

INPUT is a DICOM series folder or a NIfTI file; M is a local model file, or a registry version / ``champion`` in
the store (the default). DIR receives what the infer stage writes for a study (``mask.nii.gz`` on the study's own
grid, ``seg.dcm`` for DICOM input, ``overlay_{axial,coronal,sagittal}.png``: ``stages.infer.segment_study``)
and ``report.html``. One JSON object on stdout says what was written, the liver volume and the files skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from liverseg.errors import UsageError

__all__ = ["add_arguments", "load_model_bytes", "main", "segment_folder"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="a DICOM series folder or a .nii/.nii.gz file")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--model", default="champion",
                        help="a local model file, or a registry version / 'champion' in the store (default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


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


def segment_folder(source: Path, out: Path, model_bytes: bytes, model_name: str, device: str | None) -> dict:
    """``segment_study`` of the study at ``source`` into ``out``, plus ``report.html``; the command's JSON."""
    from liverseg.imaging import dicom_read
    from liverseg.ml.model import pick_device
    from liverseg.ml.modelfile import LoadedModel
    from liverseg.report import ReportEntry, html_report
    from liverseg.stages.infer import Study, segment_study

    model = LoadedModel.from_bytes(model_bytes, pick_device(device), model_name)
    study = Study.read(source)
    if study.skipped:
        print(f"liverseg segment: warning: {source}: {dicom_read.skipped_line(study.skipped)}", file=sys.stderr)
    done = segment_study(model, hashlib.sha256(model_bytes).hexdigest(), study, out)
    for file, reason in done["not_written"].items():
        print(f"liverseg segment: warning: {source}: no {file}: {reason}", file=sys.stderr)
    figures = {"liver_ml": done["figures"]["liver_ml"], "shape": "x".join(map(str, done["figures"]["shape"]))}
    overlays = {f.removeprefix("overlay_").removesuffix(".png"): f for f in done["files"] if f.startswith("overlay_")}
    not_written = [f"no {file}: {reason}" for file, reason in done["not_written"].items()]
    (out / "report.html").write_text(html_report(f"liverseg segment {source.name}", [
        ReportEntry(source.name, figures, overlays)], [f"model: {model_name}", *not_written]))
    return {"input": str(source), "out": str(out), "model": model_name, "files": [*done["files"], "report.html"],
            **figures, "skipped_files": done["figures"].get("skipped_files", []),
            "not_written": done["not_written"]}


def main(args: argparse.Namespace) -> int:
    from liverseg import logs

    logs.configure(stage="segment")
    if not args.input.exists():
        raise UsageError(f"{args.input} does not exist")
    model_bytes, model_name = load_model_bytes(args.model)
    print(json.dumps(segment_folder(args.input, args.out, model_bytes, model_name, args.device)))
    return 0
