"""liverseg segment INPUT --out DIR [--model M] [--send-to ROOT]: one command for one study, like TotalSegmentator's.

INPUT is a DICOM series folder, a NIfTI file, or a DICOMweb study URL (``http(s)://HOST[:PORT]/PATH/studies/<UID>``:
the study's series to segment is chosen by stated rules, ``imaging.series_choice``, and retrieved into a temporary
folder that is gone afterwards); M is a local model file, or a registry version / ``champion`` in the store (the
default). DIR receives what the infer stage writes for a study (``mask.nii.gz`` on the study's own grid,
``seg.dcm`` and ``rtstruct.dcm`` for DICOM input: ``stages.infer.segment_study``) and ``report.html``.
``--send-to`` stores the SEG and the RT Structure Set in a DICOMweb archive (STOW-RS; the same result again adds
nothing there: same UIDs). One JSON object on stdout says what was written, the series chosen and why, the liver
volume, the files skipped, what was not written and why (a series without UIDs has no SEG or RTSTRUCT: the mask
and report are still the result, exit 0) and what was sent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from liverseg.errors import UsageError

__all__ = ["add_arguments", "load_model_bytes", "main", "segment_folder"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a DICOM series folder, a .nii/.nii.gz file, or a DICOMweb study URL "
                                      "(http(s)://HOST[:PORT]/PATH/studies/<StudyInstanceUID>)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--model", default="champion",
                        help="a local model file, or a registry version / 'champion' in the store (default)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--send-to", metavar="ROOT", default=None,
                        help="store seg.dcm and rtstruct.dcm in this DICOMweb root (STOW-RS), e.g. "
                             "https://pacs.example/dicom-web; credentials from LIVERSEG_DICOMWEB_*")


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


def segment_folder(source: Path, out: Path, model_bytes: bytes, model_name: str, device: str | None, *,
                   name: str | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """``segment_study`` of the study at ``source`` into ``out``, plus ``report.html``; the command's JSON.
    ``name`` is what messages and the report call the study (default: the folder's or file's name)."""
    from liverseg.imaging import dicom_read
    from liverseg.ml.model import pick_device
    from liverseg.ml.modelfile import LoadedModel
    from liverseg.report import ReportEntry, html_report
    from liverseg.stages.infer import Study, segment_study

    name = name or source.name
    model = LoadedModel.from_bytes(model_bytes, pick_device(device), model_name)
    study = Study.read(source)
    if study.skipped:
        print(f"liverseg segment: warning: {name}: {dicom_read.skipped_line(study.skipped)}", file=sys.stderr)
    done = segment_study(model, hashlib.sha256(model_bytes).hexdigest(), study, out)
    not_written = [f"no {', '.join(files)}: {reason}" for reason, files in _by_reason(done["not_written"]).items()]
    for line in not_written:
        print(f"liverseg segment: warning: {name}: {line}", file=sys.stderr)
    figures = {"liver_ml": done["figures"]["liver_ml"], "shape": "x".join(map(str, done["figures"]["shape"]))}
    overlays = {f.removeprefix("overlay_").removesuffix(".png"): f for f in done["files"] if f.startswith("overlay_")}
    (out / "report.html").write_text(html_report(f"liverseg segment {name}", [
        ReportEntry(name, figures, overlays)], [f"model: {model_name}", *notes, *not_written]))
    return {"input": str(source), "out": str(out), "model": model_name, "files": [*done["files"], "report.html"],
            **figures, "skipped_files": done["figures"].get("skipped_files", []),
            "not_written": done["not_written"]}


def _by_reason(not_written: dict[str, str]) -> dict[str, list[str]]:
    """File -> reason as reason -> files: one line for the SEG and RTSTRUCT a series without UIDs cannot have."""
    grouped: dict[str, list[str]] = {}
    for file, reason in not_written.items():
        grouped.setdefault(reason, []).append(file)
    return grouped


def main(args: argparse.Namespace) -> int:
    from liverseg import logs
    from liverseg.dicomweb import Archive, StudyURL, is_study_url

    logs.configure(stage="segment")
    archive = Archive(args.send_to) if args.send_to else None  # bad settings fail before minutes of work
    if is_study_url(args.input):
        url = StudyURL.parse(args.input)
        source = Archive(url.root) if archive is None or archive.root != url.root else archive
        choice = source.choose(url.study_uid)
        print(f"liverseg segment: {url.study_uid}: {choice.reason}", file=sys.stderr)
        model_bytes, model_name = load_model_bytes(args.model)
        with tempfile.TemporaryDirectory(prefix="liverseg-segment-") as tmp:
            source.retrieve_series(url.study_uid, choice.series_uid, Path(tmp))
            result = segment_folder(Path(tmp), args.out, model_bytes, model_name, args.device,
                                    name=url.study_uid, notes=[f"series: {choice.reason}"])
        result.update(input=str(url), series=choice.as_dict())
    else:
        path = Path(args.input)
        if not path.exists():
            raise UsageError(f"{path} does not exist")
        model_bytes, model_name = load_model_bytes(args.model)
        result = segment_folder(path, args.out, model_bytes, model_name, args.device)
    if archive is not None:
        from liverseg.imaging.derived import DERIVED_FILES

        result["sent"] = archive.store_files([args.out / f for f in DERIVED_FILES if f in result["files"]])
        if not result["sent"]:
            print(f"liverseg segment: warning: nothing sent to {archive.root}: no SEG or RTSTRUCT was written",
                  file=sys.stderr)
    print(json.dumps(result))
    return 0
