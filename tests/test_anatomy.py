"""The anatomy generator (liverseg.data.anatomy): organs where they are in a real patient, adult sizes,
determinism, grid ranges, intensity randomisation, and the data sets ``data.synth`` writes with it.

Phantoms are rendered here on coarse 4 mm grids around the body (the structures are world-space shapes, so any
grid samples the same anatomy); the pipeline-size and MSD-size grids are checked as grids, and one small
pipeline phantom end to end.
"""

from __future__ import annotations

import numpy as np
import pytest

from liverseg.data.anatomy import VERSION, draw_case, make_phantom
from liverseg.data.anatomy.grids import MSD_PIXEL, MSD_SLICES, msd_grid, pipeline_grid
from liverseg.data.anatomy.render import Scanner, paint_slab, render_grid
from liverseg.data.anatomy.tissues import RANDOM_RANGE, SOFT_TISSUES
from liverseg.data.phantom import LIVER, TUMOUR, axis_coords
from liverseg.data.synth import dataset_case, write_dataset, write_msd_cases
from liverseg.errors import UsageError

STEP = 4.0
NO_SCANNER = Scanner(noise_hu=0.0, noise_corr_mm=0.5, blur_mm=0.0, circle_mm=None, padding=-1024, seed=0)
CASES = 6


def coarse(case):
    """The case rendered on a 4 mm grid covering the trunk from 250 mm above the dome to 450 mm below."""
    fr = case.patient.frame
    half = case.patient.body_half_width() + 20
    affine = np.diag([STEP, STEP, STEP, 1.0])
    affine[:3, 3] = [fr.cx - half, fr.cy - half, fr.dome_z - 450]
    shape = (int(2 * half / STEP), int(2 * half / STEP), int(700 / STEP))
    image, label = render_grid(case.structures, affine, shape, NO_SCANNER)
    return image, label, affine


def body_coords(affine, index, frame):
    """(u, v, t) body coordinates (mm) of voxel indices (n, 3)."""
    world = index * np.diag(affine)[:3] + affine[:3, 3]
    return world - np.array([frame.cx, frame.cy, frame.dome_z])


def centroid(case, name):
    """Body coordinates of a structure's centroid, from its own shape on the coarse grid's points."""
    fr = case.patient.frame
    shapes = [s.shape for s in case.structures if s.name == name]
    assert shapes, f"no {name} in the case"
    points = []
    for shape in shapes:
        lo, hi = shape.bounds()
        lo = np.maximum(lo, [fr.cx - 400, fr.cy - 400, fr.dome_z - 700])
        hi = np.minimum(hi, [fr.cx + 400, fr.cy + 400, fr.dome_z + 500])
        axes = [np.arange(lo[i], hi[i], STEP, dtype=np.float32) for i in range(3)]
        d = shape.distance(axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
        inside = np.argwhere(np.broadcast_to(d, tuple(len(a) for a in axes)) < 0)
        points.append(np.stack([axes[i][inside[:, i]] for i in range(3)], axis=1))
    world = np.concatenate(points).mean(axis=0)
    return world - np.array([fr.cx, fr.cy, fr.dome_z])


@pytest.fixture(scope="module")
def cases():
    return [draw_case(np.random.default_rng([11, i])) for i in range(CASES)]


@pytest.fixture(scope="module")
def rendered(cases):
    return [coarse(c) for c in cases]


def test_the_liver_fills_the_right_upper_quadrant_at_adult_size(cases, rendered):
    """RAS+: the patient's right is +x. The liver hangs under the right dome, mostly right of the midline."""
    for case, (_, label, affine) in zip(cases, rendered, strict=True):
        liver = np.argwhere(label >= LIVER)
        u, _, t = body_coords(affine, liver, case.patient.frame).T
        ml = len(liver) * STEP**3 / 1000
        assert 800 < ml < 3200, ml
        assert np.mean(u > 0) > 0.75, "most of the liver is right of the midline"
        assert np.median(u) > 30
        assert t.max() < 25 and np.percentile(t, 5) > -230, "between the right dome and the right lobe's tip"
        assert np.percentile(t, 95) > -40, "the liver reaches up under the dome"


def test_every_structure_that_looks_like_liver_is_where_it_really_is(cases):
    for case in cases:
        s = case.patient.s
        heart, spleen = centroid(case, "myocardium"), centroid(case, "spleen")
        liver = centroid(case, "liver")
        assert heart[2] > liver[2] + 40, "the heart sits above the diaphragm, the liver below"
        assert heart[0] < 10 * s, "the heart lies left of the midline"
        assert spleen[0] < -60 * s and spleen[1] < 0, "the spleen is left and posterior"
        assert liver[0] > 30 * s
        kidneys = [centroid(case, "kidney cortex")]
        assert abs(kidneys[0][0]) < 20 * s, "one kidney either side: their joint centroid is central"
        assert kidneys[0][1] < 0 and -170 < kidneys[0][2] / case.patient.h < -80
        stomach = centroid(case, "stomach wall")
        assert stomach[0] < -20 * s and stomach[2] > -160 * case.patient.h
        aorta = centroid(case, "abdominal aorta")
        ivc = centroid(case, "inferior vena cava")
        assert aorta[0] < 0 < ivc[0], "aorta left of the midline, IVC right"
        assert centroid(case, "urine")[2] < -300 * case.patient.h, "the bladder is in the pelvis"


def test_nothing_labelled_liver_above_the_diaphragm(cases, rendered):
    for case, (_, label, affine) in zip(cases, rendered, strict=True):
        xs, ys, _ = axis_coords(affine, label.shape)
        surface = case.patient.diaphragm.height(xs[:, None, None], ys[None, :, None])[:, :, 0]
        i, j, k = np.argwhere(label >= LIVER).T
        t = np.diag(affine)[2] * k + affine[2, 3] - case.patient.frame.dome_z
        assert np.mean(t > surface[i, j] + STEP) < 0.01


def test_lungs_above_and_heart_in_chest_are_not_liver_and_keep_their_hu(cases, rendered):
    for case, (image, label, affine) in zip(cases, rendered, strict=True):
        fr = case.patient.frame
        k = int((fr.dome_z + 60 * case.patient.h - affine[2, 3]) / STEP)  # a slice through the heart
        chest = image[:, :, k]
        assert (label[:, :, k] == 0).all()
        assert np.mean(chest < -700) > 0.25, "lungs fill much of the chest"


def test_tumours_lie_inside_the_liver(cases, rendered):
    found = 0
    for case, (_, label, affine) in zip(cases, rendered, strict=True):
        assert set(np.unique(label)) <= {0, LIVER, TUMOUR}
        tumour = np.argwhere(label == TUMOUR)
        if not len(tumour):
            continue
        found += 1
        liver = next(s.shape for s in case.structures if s.name == "liver")
        world = (tumour * np.diag(affine)[:3] + affine[:3, 3]).astype(np.float32)
        d = np.array([liver.distance(*(np.array([[[c]]], np.float32) for c in p)).ravel()[0] for p in world[:200]])
        assert (d < 1.0).all(), "tumours are painted only over liver"
    assert found >= 1, "some of the cases have tumours"


def test_generation_is_deterministic_per_seed_and_case():
    a = make_phantom(np.random.default_rng([5, 2]), matrix=(128, 128))
    b = make_phantom(np.random.default_rng([5, 2]), matrix=(128, 128))
    c = make_phantom(np.random.default_rng([5, 3]), matrix=(128, 128))
    assert a.image.dtype == np.int16 and a.label.dtype == np.uint8
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_array_equal(a.affine, b.affine)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)


def test_slabs_paint_the_same_voxels_as_one_box(cases):
    """The renderer paints slab by slab: a box must not depend on how z is cut."""
    case = cases[0]
    fr = case.patient.frame
    xs = np.arange(fr.cx - 150, fr.cx + 150, 5.0, dtype=np.float32)
    ys = np.arange(fr.cy - 120, fr.cy + 120, 5.0, dtype=np.float32)
    zs = np.arange(fr.dome_z - 120, fr.dome_z + 40, 5.0, dtype=np.float32)
    whole, whole_label = paint_slab(case.structures, xs, ys, zs, -1000.0)
    top, top_label = paint_slab(case.structures, xs, ys, zs[:13], -1000.0)
    bottom, _ = paint_slab(case.structures, xs, ys, zs[13:], -1000.0)
    np.testing.assert_allclose(np.concatenate([top, bottom], axis=2), whole, atol=0.01)  # BLAS order only
    np.testing.assert_array_equal(top_label, whole_label[:, :, :13])


def test_pipeline_grids_keep_the_matrix_and_follow_the_body():
    rng = np.random.default_rng(0)
    for _ in range(50):
        grid = pipeline_grid(rng, body_half_width=170.0, coverage=float(rng.uniform(120, 700)))
        assert grid.shape[0] == grid.shape[1] and grid.shape[0] in (256, 288, 320)
        assert 64 <= grid.shape[2] <= 160
        fov = grid.shape[0] * grid.spacing[0]
        assert 0.85 * 340 - 1 <= fov <= 1.25 * 340 + 1


def test_msd_grids_have_the_decathlon_ranges():
    rng = np.random.default_rng(1)
    seen = []
    for _ in range(300):
        grid = msd_grid(rng, coverage=float(rng.uniform(120, 800)))
        assert grid.shape[:2] == (512, 512)
        assert MSD_SLICES[0] <= grid.shape[2] <= MSD_SLICES[1]
        assert MSD_PIXEL[0] <= grid.spacing[0] <= MSD_PIXEL[1] and grid.spacing[0] == grid.spacing[1]
        assert 0.7 <= grid.spacing[2] <= 5.0
        seen.append(grid.shape[2])
    assert max(seen) > 600 and min(seen) < 150, "thin and thick slices both occur"


def test_msd_grids_take_a_slice_count_and_keep_the_scans_middle():
    rng = np.random.default_rng(2)
    for slices in (74, 300, 987):
        grid = msd_grid(rng, coverage=400.0, slices=slices)
        assert grid.shape == (512, 512, slices) and 0.7 <= grid.spacing[2] <= 5.0
    assert msd_grid(rng, coverage=400.0, slices=200).spacing[2] == 2.0
    drawn = draw_case(np.random.default_rng([4, 0]), size="msd")
    forced = draw_case(np.random.default_rng([4, 0]), size="msd", slices=987)
    assert forced.grid.shape[2] == 987 and forced.patient.frame == drawn.patient.frame
    middle = [c.affine[2, 3] + c.affine[2, 2] * (c.grid.shape[2] - 1) / 2 for c in (drawn, forced)]
    assert middle[0] == pytest.approx(middle[1]), "the same scan range's middle, whatever the slice count"
    with pytest.raises(ValueError, match="msd"):
        draw_case(np.random.default_rng(0), size="pipeline", slices=100)


def test_randomised_cases_redraw_soft_tissue_hu_and_keep_their_anatomy():
    plain = draw_case(np.random.default_rng([8, 1]), matrix=(128, 128))
    random = draw_case(np.random.default_rng([8, 1]), matrix=(128, 128), randomise=1.0)
    assert plain.palette.randomised == () and random.palette.randomised
    assert set(random.palette.randomised) <= set(SOFT_TISSUES)
    for name in random.palette.randomised:
        assert RANDOM_RANGE[0] <= random.palette[name] <= RANDOM_RANGE[1]
    assert random.patient.frame == plain.patient.frame and random.grid == plain.grid
    assert np.array_equal(random.affine, plain.affine)
    assert [s.name for s in random.structures] == [s.name for s in plain.structures]


def test_write_dataset_generators(tmp_path):
    import json

    import nibabel as nib

    ids = write_dataset(tmp_path / "a", 2, seed=3, matrix=(128, 128))
    meta = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert f"generator {VERSION}" in meta["description"] and len(ids) == 2
    img = nib.load(tmp_path / "a" / "imagesTr" / "liver_0.nii.gz")
    lab = nib.load(tmp_path / "a" / "labelsTr" / "liver_0.nii.gz")
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert (np.asarray(lab.dataobj) == LIVER).any()
    again = write_dataset(tmp_path / "again", 2, seed=3, matrix=(128, 128))
    for folder in ("imagesTr", "labelsTr"):
        for case in again:
            file = f"{folder}/{case}.nii.gz"
            assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "again" / file).read_bytes(), file
    legacy = dataset_case(3, 0, "legacy", matrix=(128, 128))
    write_dataset(tmp_path / "b", 1, seed=3, matrix=(128, 128), generator="legacy")
    assert np.array_equal(np.asarray(nib.load(tmp_path / "b" / "imagesTr" / "liver_0.nii.gz").dataobj), legacy.image)
    for bad, match in (({"generator": "nope"}, "generator"), ({"generator": "legacy", "size": "msd"}, "legacy"),
                       ({"size": "huge"}, "size"), ({"randomise": 1.5}, "randomise")):
        with pytest.raises(UsageError, match=match):
            write_dataset(tmp_path / "c", 1, seed=3, **bad)
    assert not (tmp_path / "c").exists(), "settings are checked before anything is written"


def test_write_msd_cases_draws_anatomy_phantoms_with_the_slice_counts_given(tmp_path):
    import nibabel as nib

    (case,) = write_msd_cases(tmp_path, [74], seed=5)
    image = nib.load(tmp_path / "imagesTr" / f"{case}.nii.gz")
    label = np.asarray(nib.load(tmp_path / "labelsTr" / f"{case}.nii.gz").dataobj)
    assert image.shape == (512, 512, 74) and image.get_data_dtype() == np.int16
    expected = make_phantom(np.random.default_rng([5, 0, 74]), size="msd", slices=74)
    assert np.array_equal(label, expected.label) and np.allclose(image.affine, expected.affine, atol=1e-4)
