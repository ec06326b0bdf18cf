"""liverseg segment: one study in, mask + DICOM SEG + overlays + report out; the SEG lands on the source grid."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from dicom_helpers import dciodvfy, nifti_to_dicom, rtstruct_label
from liverseg.config import load_profile
from liverseg.data.synth import GridSpec, make_phantom
from liverseg.imaging import dicom_read
from liverseg.imaging.geometry import Volume
from liverseg.ml.modelfile import to_bytes
from liverseg.ml.training import Sample, Trainer
from liverseg.ml.transforms import preprocess_pair


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A model briefly trained on one phantom, saved the way the train stage saves models."""
    profile = load_profile("default", environ={}, overrides=[
        "train.epochs=3", "train.patch=[48,48,32]", "train.lr=0.01", "train.val_interval=1", "infer.threshold=0.2"])
    p = make_phantom(np.random.default_rng(3), GridSpec((96, 96, 48), (1.0, 1.0, 3.0), (True, True, False)))
    img, lab = preprocess_pair(Volume(p.image, p.affine), Volume(p.label, p.affine), profile.preprocess)
    sample = Sample("s", torch.from_numpy(img), torch.from_numpy(lab))
    state = Trainer(profile.train, profile.infer, torch.device("cpu")).fit([sample], [sample])
    path = tmp_path_factory.mktemp("model") / "model.pt"
    path.write_bytes(to_bytes({"format": "liverseg.model/v1", "state_dict": state.best_model,
                               "profile": profile.model_dump(mode="json")}))
    return path


def segment(*args):
    return subprocess.run([sys.executable, "-m", "liverseg", "segment", *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=300)


def test_dicom_input_gives_mask_seg_overlays_and_report(model_file, tmp_path):
    p = make_phantom(np.random.default_rng(5), GridSpec((96, 96, 50), (0.9, 0.9, 3.0), (True, False, False)))
    nifti_to_dicom(Volume(p.image, p.affine), None, "study_1", "ns-seg-test", tmp_path / "study")
    series = tmp_path / "study" / "ct"
    done = segment(series, "--out", tmp_path / "out", "--model", model_file)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result["files"]) == {"mask.nii.gz", "seg.dcm", "rtstruct.dcm", "overlay_axial.png",
                                    "overlay_coronal.png", "overlay_sagittal.png", "report.html"}
    assert result["not_written"] == {}
    mask_img = nib.load(tmp_path / "out" / "mask.nii.gz")
    mask = np.asarray(mask_img.dataobj)
    assert mask.any(), "the test model should find some liver"
    assert result["liver_ml"] == pytest.approx(mask.sum() * np.prod(mask_img.header.get_zooms()) / 1000, rel=1e-3)

    # The SEG references the source series and, read back with highdicom onto it, equals the NIfTI mask.
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    ordered = dicom_read.sort_by_position(dicom_read.read_headers(series.glob("*.dcm")))
    uids = [str(h.ds.SOPInstanceUID) for h in ordered]
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=True)
    np.testing.assert_array_equal(np.transpose(frames, (2, 1, 0)) > 0, mask > 0)
    desc = seg.get_segment_description(1)
    assert desc.segmented_property_type.value == "10200004"  # SNOMED CT: Liver
    assert pydicom.dcmread(tmp_path / "out" / "seg.dcm").Modality == "SEG"
    # The RT Structure Set: its contours, read back on the same slices, enclose exactly the mask's voxels.
    rtstruct = pydicom.dcmread(tmp_path / "out" / "rtstruct.dcm")
    assert rtstruct.StructureSetROISequence[0].ROIName == "Liver"
    np.testing.assert_array_equal(rtstruct_label(rtstruct, [h.ds for h in ordered]), mask > 0)
    if shutil.which("dciodvfy"):
        for name in ("seg.dcm", "rtstruct.dcm"):
            errors, _ = dciodvfy(tmp_path / "out" / name)
            assert errors == [], (name, errors)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "overlay_axial.png" in html and "liver_ml" in html


def test_nifti_input_and_clear_errors(model_file, tiny_dataset, tmp_path):
    done = segment(tiny_dataset / "imagesTr" / "liver_0.nii.gz", "--out", tmp_path / "o", "--model", model_file)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "o" / "seg.dcm").exists()
    study = nib.load(tiny_dataset / "imagesTr" / "liver_0.nii.gz")
    assert nib.load(tmp_path / "o" / "mask.nii.gz").shape == study.shape
    bad_model = tmp_path / "bad.pt"
    bad_model.write_bytes(b"not a model")
    done = segment(tiny_dataset / "imagesTr" / "liver_0.nii.gz", "--out", tmp_path / "o2", "--model", bad_model)
    assert done.returncode == 2 and "is not a usable liverseg model" in done.stderr  # a wrong argument
    assert "Traceback" not in done.stderr
    done = segment(tmp_path / "missing.nii.gz", "--out", tmp_path / "o3", "--model", model_file)
    assert done.returncode == 2 and "does not exist" in done.stderr
