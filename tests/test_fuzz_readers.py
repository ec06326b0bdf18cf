"""Property-based: random bytes and damaged headers fed to the readers produce only the project's own clean
errors (InputError / DatasetError) or a valid result, never an unexpected exception."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dicom_helpers import nifti_to_dicom
from liverseg.data.msd import DatasetError, scan
from liverseg.errors import InputError
from liverseg.imaging import dicom_read, dicom_volume, nifti
from liverseg.imaging.geometry import Volume

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
mutations = st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), min_size=1, max_size=8)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    """A small valid NIfTI (uncompressed) and a small valid DICOM slice, as bytes."""
    root = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    volume = Volume(rng.integers(-1000, 1000, size=(12, 10, 4)).astype(np.int16), affine)
    nifti.save(root / "v.nii", volume)
    nifti_to_dicom(volume, None, "fuzz", "ns-fuzz", root / "dicom")
    return {"nifti": (root / "v.nii").read_bytes(), "dicom": (root / "dicom" / "ct" / "0001.dcm").read_bytes()}


def damaged(data: bytes, changes, cut: int | None) -> bytes:
    raw = bytearray(data)
    for offset, value in changes:
        if offset < len(raw):
            raw[offset] = value
    return bytes(raw[:cut] if cut is not None else raw)


@FUZZ
@given(changes=mutations, cut=st.none() | st.integers(0, 700))
def test_nifti_readers_fail_cleanly(seeds, tmp_path_factory, changes, cut):
    path = tmp_path_factory.mktemp("n") / "x.nii"
    path.write_bytes(damaged(seeds["nifti"], changes, cut))
    for reader in (nifti.load, nifti.load_fast):
        try:
            volume = reader(path)
        except InputError:
            continue
        assert volume.array.ndim == 3 and np.all(np.isfinite(volume.affine))


@FUZZ
@given(changes=mutations, cut=st.none() | st.integers(0, 2000))
@example(changes=[(577, 0)], cut=None)  # a VR byte zeroed: pydicom fails only when the element is read (CI find)
def test_dicom_reader_fails_cleanly(seeds, tmp_path_factory, changes, cut):
    path = tmp_path_factory.mktemp("d") / "x.dcm"
    path.write_bytes(damaged(seeds["dicom"], changes, cut))
    try:
        header = dicom_read.read_header(path)
        volume = dicom_volume.stack_to_volume([header])
    except InputError:
        return
    assert volume.array.ndim == 3


@FUZZ
@given(blob=st.binary(max_size=300))
def test_random_bytes_are_not_dicom(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("r") / "x.dcm"
    path.write_bytes(blob)
    with pytest.raises(InputError):
        dicom_read.read_header(path)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=12)


@FUZZ
@given(document=json_values | st.fixed_dictionaries({"training": st.lists(json_values, max_size=5)}))
def test_dataset_json_scan_fails_cleanly(tmp_path_factory, document):
    root = tmp_path_factory.mktemp("m")
    (root / "dataset.json").write_text(json.dumps(document))
    try:
        found = scan(root)
    except DatasetError:
        return
    assert found.cases == [] or all(c.image.exists() for c in found.cases)
