"""liverseg.real_ct: the label-free plausibility figures and the overlay montage on an anatomy phantom, the body
box and a model's figures on the real CT in ../shared/data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import shared_data_or_skip
from liverseg.data.anatomy import draw_case
from liverseg.data.anatomy.render import render_grid
from liverseg.data.phantom import axis_coords
from liverseg.imaging import dicom_read, dicom_volume
from liverseg.imaging.geometry import Volume
from liverseg.real_ct import DCMQI, TCIA, RealCheck, body_box, check_model, mask_geography, montage
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
def test_a_models_figures_on_both_real_scans(tmp_path):
    """``check_model``, as ``liverseg run`` calls it after its summary: both scans segmented through the inference
    path, the figures in range, the TCIA overlays and mask written. The soft-tissue model is no liver model: this
    checks the plumbing, not the figures."""
    data = shared_data_or_skip(DCMQI).parent
    shared_data_or_skip(TCIA)
    model = soft_tissue_model(tmp_path / "model.pt")
    check = check_model(model.read_bytes(), tmp_path / "real_ct", data)
    assert check.dcmqi_dice is not None and 0 <= check.dcmqi_dice <= 1
    assert check.tcia_liver_ml is not None and check.tcia_liver_ml > 0
    assert check.tcia_left_fraction is not None and 0 <= check.tcia_left_fraction <= 1
    assert check.tcia_height_mm is not None and check.tcia_height_mm > 0
    assert check.overlay == tmp_path / "real_ct" / "tcia_overlays.png" and check.overlay.exists()
    assert (tmp_path / "real_ct" / "tcia_mask.nii.gz").exists()
    assert check.line().startswith(f"dcmqi Dice {check.dcmqi_dice:.4f}  TCIA liver ")
    assert RealCheck(None, None, None, None, None).line().count("n/a") == 4
