"""Medical Segmentation Decathlon (Task03_Liver) folders: read ``dataset.json``, check entries, upload.

Layout: ``dataset.json`` with a ``training`` list of ``{"image": "./imagesTr/liver_N.nii.gz", "label":
"./labelsTr/liver_N.nii.gz"}`` entries; labels 0 background, 1 liver, 2 tumour. An optional ``patient`` field per
entry (our extension) ties several cases to one patient for the split; by default each case is its own patient.

Entries that cannot be used (missing files, unsafe or duplicate ids, paths outside the folder) are set aside with
a reason in the ingest manifest; the others are uploaded. Voxel content is checked later, by the convert stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liverseg import layout
from liverseg import manifest as mf
from liverseg.errors import ConflictError, DatasetError
from liverseg.store import ObjectRef, ObjectStore, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MsdCase:
    case: str
    image: Path
    label: Path
    patient: str


@dataclass
class MsdScan:
    cases: list[MsdCase] = field(default_factory=list)
    set_aside: dict[str, str] = field(default_factory=dict)   # entry description -> reason


def case_id_of(filename: str) -> str:
    name = Path(filename).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _inside(root: Path, relative: str) -> Path | None:
    candidate = (root / relative).resolve()
    return candidate if candidate.is_relative_to(root.resolve()) else None


def scan(root: Path) -> MsdScan:
    """Read ``dataset.json`` and check every training entry."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: no dataset.json (expected the MSD Task03_Liver layout)")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{meta_path}: not valid UTF-8 JSON: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("training"), list):
        raise DatasetError(f"{meta_path}: no 'training' list")
    result = MsdScan()
    seen: dict[str, int] = {}
    for n, entry in enumerate(meta["training"]):
        where = f"training[{n}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            result.set_aside[where] = "entry has no 'image' path"
            continue
        case = case_id_of(entry["image"])
        where = f"{where} ({case!r})"
        try:
            layout.check_id("case", case)
        except ValueError as exc:
            result.set_aside[where] = str(exc)
            continue
        if case in seen:
            result.set_aside[where] = f"duplicate case id (first at training[{seen[case]}])"
            continue
        seen[case] = n
        label_rel = entry.get("label")
        if not isinstance(label_rel, str):
            result.set_aside[where] = "entry has no 'label' path (labelsTr entry missing)"
            continue
        image, label = _inside(root, entry["image"]), _inside(root, label_rel)
        if image is None or label is None:
            result.set_aside[where] = "path points outside the data set folder"
            continue
        if not image.is_file():
            result.set_aside[where] = f"image file missing: {entry['image']}"
            continue
        if not label.is_file():
            result.set_aside[where] = f"label file missing: {label_rel}"
            continue
        patient = str(entry.get("patient") or case)
        result.cases.append(MsdCase(case, image, label, patient))
    return result


def _put_once(store: ObjectStore, key: str, path: Path) -> ObjectRef:
    """Upload unless the same content is already there; refuse to replace different content."""
    existing = store.stat(key)
    sha = sha256_file(path)
    if existing is not None:
        if existing.sha256 == sha:
            return existing
        raise ConflictError(f"{key} already holds different content; ingest under another --dataset name")
    return store.put_file(key, path)


def ingest(store: ObjectStore, root: Path, dataset: str) -> dict[str, Any]:
    """Upload an MSD folder to ``datasets/<dataset>/`` and write its manifest last. Idempotent."""
    clock = mf.Stopwatch()
    found = scan(root)
    prefix = layout.dataset_prefix(dataset)
    store.ensure_bucket()
    cases: dict[str, dict[str, str]] = {}
    refs: list[ObjectRef] = []
    for n, case in enumerate(found.cases, start=1):
        image_key = f"{prefix}/imagesTr/{case.case}{''.join(case.image.suffixes[-2:])}"
        label_key = f"{prefix}/labelsTr/{case.case}{''.join(case.label.suffixes[-2:])}"
        refs += [_put_once(store, image_key, case.image), _put_once(store, label_key, case.label)]
        cases[case.case] = {"image": image_key, "label": label_key, "patient": case.patient}
        log.info("case uploaded", extra={"case": case.case, "progress": f"{n}/{len(found.cases)}"})
    refs.append(_put_once(store, f"{prefix}/dataset.json", Path(root) / "dataset.json"))
    for where, reason in found.set_aside.items():
        log.warning("entry set aside", extra={"entry": where, "reason": reason})
    details = {"dataset": dataset, "source": str(Path(root).resolve()), "cases": cases,
               "set_aside": found.set_aside}
    record = mf.Manifest(stage="ingest", run_id=dataset, fingerprint=mf.fingerprint(
        {r.key: r for r in refs}, {}, ""), code_version=mf.code_version(), outputs=mf.entries(refs),
        details=details, **clock.stamp())
    key = layout.dataset_manifest(dataset)
    existing = mf.read(store, key)
    if existing is None or existing.fingerprint != record.fingerprint:
        mf.write(store, key, record)
    return details


def dataset_cases(store: ObjectStore, dataset: str) -> dict[str, dict[str, str]]:
    record = mf.read(store, layout.dataset_manifest(dataset))
    if record is None:
        raise DatasetError(f"dataset '{dataset}' is not in the store: run 'liverseg ingest DIR --dataset {dataset}'")
    return record.details["cases"]
