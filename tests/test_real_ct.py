"""liverseg.real_ct: the label-free plausibility figures and the overlay montage on an anatomy phantom, the body
box and a model's figures on the real CT in ../shared/data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data_or_skip
from liverseg import real_ct
from liverseg.commands.run import real_ct_lines
from liverseg.data.anatomy import draw_case
from liverseg.data.anatomy.render import render_grid
from liverseg.data.phantom import axis_coords
from liverseg.imaging import dicom_read, dicom_volume
from liverseg.imaging.geometry import Volume
from liverseg.real_ct import DCMQI, TCIA, RealCheck, body_box, mask_geography, montage
from model_files import soft_tissue_model


def phantom_volume(structure: str | None = None):
    """A small anatomy phantom as a Volume, its label, and (when named) the voxels inside one of its structures."""
    case = draw_case(np.random.default_rng([21, 0]), matrix=(128, 128))
    image, label = render_grid(case.structures, case.affine, case.grid.shape, case.scanner)
    inside = None
    if structure is not None:
        xs, ys, zs = axis_coords(case.affine, case.grid.shape)
        shape = next(s.shape for s in case.structures if s.name == structure)
        inside = np.broadcast_to(shape.distance(xs[:, None, None], ys[None, :, None], zs[None, None, :]) < 0,
                                 label.shape)
    return Volume(image, case.affine), label, inside


def test_geography_of_the_true_liver_and_of_a_mask_on_the_spleen():
    image, label, spleen = phantom_volume("spleen")
    left, height = mask_geography(label >= 1, image)
    assert left < 0.05, "a liver seldom reaches a quarter body-width left of the midline"
    assert 60 < height < 260
    # Where a model that learnt the liver's HU window paints too: the spleen, posterolateral on the left.
    assert spleen.any() and mask_geography(spleen, image)[0] > 0.5
    assert mask_geography(np.zeros_like(label), image) == (0.0, 0.0)


def test_montage_is_a_picture_of_coronal_and_axial_slices(tmp_path):
    image, label, _ = phantom_volume()
    path = montage(image, label, tmp_path / "m.png", axial_levels=4)
    picture = np.asarray(Image.open(path))
    assert picture.shape[0] == 520 and picture.shape[2] == 3
    reddish = (picture[..., 0].astype(int) - picture[..., 1]) > 40
    assert reddish.any(), "the mask is drawn"


def test_body_box_on_the_real_series_leaves_the_table_out():
    series = shared_data_or_skip(TCIA) / "dicom"
    image, _, _ = dicom_volume.series_to_volume(dicom_read.series_files(series))
    low, high = body_box(image.array)
    width = (high[0] - low[0]) * abs(image.affine[0, 0])
    depth = (high[1] - low[1]) * abs(image.affine[1, 1])
    # The FOV is 550 mm and the table spans most of it; the patient's trunk (shoulders included) is narrower.
    assert 300 < width < 500 and 180 < depth < 320


@pytest.mark.slow
def test_a_models_figures_on_both_real_scans_as_liverseg_run_prints_them(tmp_path):
    """``check_model`` through ``liverseg run``'s last step: both scans segmented through the inference path, the
    figures in range, printed and written with the TCIA overlays and mask. The soft-tissue model is no liver model:
    this checks the plumbing, not the figures."""
    shared_data_or_skip(DCMQI)
    shared_data_or_skip(TCIA)
    model = soft_tissue_model(tmp_path / "model.pt")
    out = tmp_path / "real_ct"
    printed = real_ct_lines(model, out)
    check = RealCheck(**{**json.loads((out / "real_ct.json").read_text()), "overlay": out / "tcia_overlays.png"})
    assert check.line() in printed and str(check.overlay) in printed
    assert check.dcmqi_dice is not None and 0 <= check.dcmqi_dice <= 1
    assert check.tcia_liver_ml is not None and check.tcia_liver_ml > 0
    assert check.tcia_left_fraction is not None and 0 <= check.tcia_left_fraction <= 1
    assert check.tcia_height_mm is not None and check.tcia_height_mm > 0
    assert check.overlay.exists() and (out / "tcia_mask.nii.gz").exists()


def test_without_the_real_ct_the_run_says_it_skipped_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(real_ct, "shared_data", lambda: tmp_path)
    assert real_ct_lines(tmp_path / "no-model.pt", tmp_path / "out") == f"\n  real CT: none under {tmp_path} (skipped)"
    assert RealCheck(None, None, None, None, None).line().count("n/a") == 4
