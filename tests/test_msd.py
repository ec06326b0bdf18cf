"""MSD folders: unusable entries are set aside with a reason; ingest is idempotent and never overwrites."""

from __future__ import annotations

import json
import shutil

import pytest

from liverseg.data.msd import DatasetError, ingest, scan
from liverseg.errors import ConflictError


def write_meta(root, training):
    (root / "dataset.json").write_text(json.dumps({"training": training}))


def test_scan_sets_aside_bad_entries(tiny_dataset, tmp_path):
    root = tmp_path / "msd"
    shutil.copytree(tiny_dataset, root)
    good = {"image": "./imagesTr/liver_0.nii.gz", "label": "./labelsTr/liver_0.nii.gz"}
    write_meta(root, [
        good,
        dict(good),                                                               # duplicate id
        {"image": "./imagesTr/liver_1.nii.gz"},                                   # no label entry
        {"image": "../../etc/liver_2.nii.gz", "label": "./labelsTr/liver_2.nii.gz"},  # outside the folder
        {"image": "./imagesTr/a b.nii.gz", "label": "./labelsTr/liver_2.nii.gz"},    # unsafe id
        {"image": "./imagesTr/liver_3.nii.gz", "label": "./labelsTr/missing.nii.gz"},
        "not an object",
    ])
    found = scan(root)
    assert [c.case for c in found.cases] == ["liver_0"]
    reasons = list(found.set_aside.values())
    assert any("duplicate case id" in r for r in reasons)
    assert any("no 'label'" in r for r in reasons)
    assert any("outside the data set folder" in r for r in reasons)
    assert any("invalid case id" in r for r in reasons)
    assert any("label file missing" in r for r in reasons)
    assert len(found.set_aside) == 6


@pytest.mark.parametrize("content", [None, b"{not json", b"\xff\xfe\x00", b"[]"])
def test_not_a_dataset(tmp_path, content):
    if content is not None:
        (tmp_path / "dataset.json").write_bytes(content)
    with pytest.raises(DatasetError):
        scan(tmp_path)


def test_ingest_is_idempotent_and_refuses_changed_content(store, tiny_dataset, tmp_path):
    first = ingest(store, tiny_dataset, "ds")
    before = {r.key: r.etag for r in store.list("datasets/ds/")}
    assert ingest(store, tiny_dataset, "ds") == first
    assert {r.key: r.etag for r in store.list("datasets/ds/")} == before
    changed = tmp_path / "changed"
    shutil.copytree(tiny_dataset, changed)
    (changed / "labelsTr" / "liver_0.nii.gz").write_bytes((changed / "labelsTr" / "liver_1.nii.gz").read_bytes())
    with pytest.raises(ConflictError, match="already holds different content"):
        ingest(store, changed, "ds")
