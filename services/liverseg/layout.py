"""The key scheme of the store: where each stage reads and writes. One place, so stages and docs agree.

    datasets/<dataset>/imagesTr/<case>.nii.gz         ingested MSD images (and labelsTr/, dataset.json)
    datasets/<dataset>/_manifest.json                 ingest manifest: cases, content hashes, cases set aside
    runs/<run>/<stage>/<case>/...                     a stage's per-case outputs
    runs/<run>/<stage>/<case>/_manifest.json          written last: the case is complete (or quarantined)
    runs/<run>/<stage>/_manifest.json                 written last by whole-run stages (plan, train, evaluate)
    runs/<run>/quarantine/<stage>/<case>.json         why a case was set aside
    models/<version>/...                              registered models; models/champion.json points at one
    watch/<archive>/state.json                        the watch loop's watermark for one DICOMweb archive
    watch/<archive>/studies/<study>.json              each study it found: submitted, done or set aside, and why
"""

from __future__ import annotations

import re

MANIFEST = "_manifest.json"
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_id(kind: str, value: str) -> str:
    """Ids become key segments: refuse anything that could escape its prefix or confuse a listing."""
    if not isinstance(value, str) or not _SAFE_ID.match(value) or ".." in value:
        raise ValueError(f"invalid {kind} id {value!r}: use letters, digits, '.', '_' and '-' "
                         "(start with a letter or digit, no '..', at most 128 characters)")
    return value


def dataset_prefix(dataset: str) -> str:
    return f"datasets/{check_id('dataset', dataset)}"


def dataset_manifest(dataset: str) -> str:
    return f"{dataset_prefix(dataset)}/{MANIFEST}"


def run_prefix(run_id: str) -> str:
    return f"runs/{check_id('run', run_id)}"


def stage_prefix(run_id: str, stage: str, case: str | None = None) -> str:
    prefix = f"{run_prefix(run_id)}/{stage}"
    return f"{prefix}/{check_id('case', case)}" if case is not None else prefix


def manifest_key(run_id: str, stage: str, case: str | None = None) -> str:
    return f"{stage_prefix(run_id, stage, case)}/{MANIFEST}"


def quarantine_key(run_id: str, stage: str, case: str) -> str:
    return f"{run_prefix(run_id)}/quarantine/{stage}/{check_id('case', case)}.json"


def model_prefix(version: str) -> str:
    return f"models/{check_id('model version', version)}"


CHAMPION_KEY = "models/champion.json"


def watch_prefix(archive: str) -> str:
    """Where ``liverseg watch`` keeps what it knows of one archive (``archive``: an id derived from its URL)."""
    return f"watch/{check_id('archive', archive)}"
