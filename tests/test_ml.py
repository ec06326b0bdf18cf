"""ML cores: preprocessing, metrics, the training loop (learning, bit-exact resume), inference geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

import monai_reference
from liverseg.config import load_profile
from liverseg.data.synth import GridSpec, make_phantom
from liverseg.errors import InputError
from liverseg.graph import STEPS
from liverseg.imaging import nifti
from liverseg.imaging.geometry import Volume
from liverseg.ml import metrics, transforms
from liverseg.ml.inference import largest_component, segment
from liverseg.ml.model import bf16_native, build_unet
from liverseg.ml.training import Sample, Trainer, TrainState
from liverseg.ml.transforms import preprocess_pair
from liverseg.stages.preprocess import preprocess_unit


def phantom(shape=(96, 96, 40), spacing=(0.9, 0.9, 3.0), flips=(True, True, False), seed=0):
    p = make_phantom(np.random.default_rng(seed), GridSpec(shape, spacing, flips))
    return Volume(p.image, p.affine), Volume(p.label, p.affine)


def test_default_preprocessing_windows_resamples_and_binarises():
    image, label = phantom()
    cfg = load_profile("default", environ={}).preprocess
    img, lab = preprocess_pair(image, label, cfg)
    assert img.dtype == np.float32 and lab.dtype == np.uint8
    assert img.shape == lab.shape and img.shape[0] == 1
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert set(np.unique(lab)) == {0, 1}
    # At the profile's spacing the liver's volume in ml is kept within a few percent.
    liver_ml = lambda voxels, spacing: voxels * np.prod(spacing) / 1000  # noqa: E731
    before = liver_ml((label.array >= 1).sum(), image.spacing)
    assert liver_ml(lab.sum(), cfg.spacing) == pytest.approx(before, rel=0.05)


def test_seed_preprocessing_resizes_to_128_128_64():
    image, label = phantom()
    cfg = load_profile("seed", environ={}).preprocess
    img, lab = preprocess_pair(image, label, cfg)
    assert img.shape == lab.shape == (1, 128, 128, 64)


def test_seed_nearest_labels_stay_where_the_resize_puts_the_image():
    """Resizing to 128x128x64, torch's plain "nearest" sampled each output voxel at the start of its block: labels
    moved 0.2-0.35 output voxels against the image. Measured on a field of many blobs (one object's edges would
    only show quantisation), the centre of mass must land where the geometry maps it."""
    shape = (300, 260, 150)
    field = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal(shape), 2.0)
    affine = np.diag([1.5, 1.5, 1.0, 1.0])  # already RAS at the seed's spacing: only the resize acts
    label = (field > 0.05).astype(np.uint8)
    seed = load_profile("seed", environ={}).preprocess
    _, resized = preprocess_pair(Volume(np.zeros(shape, np.int16), affine), Volume(label, affine), seed)
    scale = np.array(shape) / np.array(seed.resize)
    expected = (np.array(ndimage.center_of_mass(label)) + 0.5) / scale - 0.5  # voxel centres, half-pixel aligned
    assert np.abs(np.array(ndimage.center_of_mass(resized[0])) - expected).max() < 0.1


def test_area_label_interpolation_dilates():
    image, label = phantom()
    seed = load_profile("seed", environ={}).preprocess
    _, nearest = preprocess_pair(image, label, seed)
    _, area = preprocess_pair(image, label, seed.model_copy(update={"label_interp": "area"}))
    assert area.sum() > nearest.sum() * 1.05


def test_dice_and_hd95_on_known_shapes():
    a = np.zeros((40, 40, 40), bool)
    b = np.zeros_like(a)
    a[10:20, 10:20, 10:20] = True
    b[12:22, 10:20, 10:20] = True
    assert metrics.dice(a, b) == pytest.approx(0.8)
    assert metrics.dice(a, a) == 1.0 and metrics.dice(a, np.zeros_like(a)) == 0.0
    assert metrics.hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert metrics.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(4.0)
    assert metrics.hd95(a, np.zeros_like(a), (1, 1, 1)) == float("inf")


def test_largest_component_drops_islands():
    m = np.zeros((30, 30, 30), bool)
    m[2:12, 2:12, 2:12] = True
    m[20:23, 20:23, 20:23] = True
    kept = largest_component(m)
    assert kept.sum() == 1000 and not kept[21, 21, 21]


def test_largest_component_with_more_islands_than_uint16_labels():
    """179,553 components: past what uint16 labels hold, so the int32 path must give the same answer."""
    m = np.zeros((400, 400, 30), np.uint8)
    m[::3, ::3, ::3] = 1
    m[0:5, 0:5, 0:5] = 1
    kept = largest_component(m)
    assert kept.dtype == np.uint8 and kept.sum() == 125 and kept[0:5, 0:5, 0:5].all()


def tiny_samples(n=2):
    out = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        img = torch.rand((1, 32, 32, 32), generator=g) * 0.2
        lab = torch.zeros((1, 32, 32, 32), dtype=torch.uint8)
        lab[:, 8:24, 8:20, 8:24] = 1
        img[lab.bool()] += 0.6
        out.append(Sample(f"s{i}", img, lab))
    return out


def tiny_cfg(epochs):
    profile = load_profile("default", environ={}, overrides=[
        f"train.epochs={epochs}", "train.patch=[32,32,32]", "train.val_interval=1", "train.lr=0.01",
        "train.samples_per_volume=1"])
    return profile


def test_training_learns_a_tiny_problem():
    profile = tiny_cfg(6)
    trainer = Trainer(profile.train, profile.infer, torch.device("cpu"))
    state = trainer.fit(tiny_samples(), tiny_samples(1))
    losses = [h["loss"] for h in state.history]
    assert losses[-1] < losses[0] * 0.7
    assert state.best_model is not None and state.history[-1]["val_dice"] > 0.5


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_precision_auto_is_bf16_where_the_cpu_has_it_and_fp32_is_fp32(precision):
    profile = load_profile("default", environ={}, overrides=[f"train.precision={precision}"])
    cpu = torch.device("cpu")
    trainer = Trainer(profile.train, profile.infer, cpu)
    net = build_unet().to(memory_format=trainer.fmt)
    x = torch.rand((1, 1, 32, 32, 16))
    logits = trainer._forward(net, x)
    native = precision == "auto" and bf16_native(cpu)
    assert logits.dtype == (torch.bfloat16 if native else torch.float32)
    assert trainer.predict_logits(net.eval(), x[0]).dtype == torch.float32  # blended and thresholded in fp32


def test_resume_is_bit_exact_on_cpu():
    """Killed after epoch 2 and resumed from its checkpoint bytes: the same weights, optimizer state and metrics
    as an uninterrupted run."""
    from liverseg.ml.modelfile import from_bytes, to_bytes

    profile = tiny_cfg(4)
    straight = Trainer(profile.train, profile.infer, torch.device("cpu")).fit(tiny_samples(), tiny_samples(1))
    saved = {}

    def killed_after_epoch_2(state, improved):
        if state.epoch == 2:
            saved["checkpoint"] = to_bytes(state.to_dict())  # what the train stage uploads
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(profile.train, profile.infer, torch.device("cpu")).fit(
            tiny_samples(), tiny_samples(1), on_epoch=killed_after_epoch_2)
    resumed = Trainer(profile.train, profile.infer, torch.device("cpu")).fit(
        tiny_samples(), tiny_samples(1), state=TrainState.from_dict(from_bytes(saved["checkpoint"])))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert [h["val_dice"] for h in resumed.history] == [h["val_dice"] for h in straight.history]
    for key, value in straight.model.items():
        assert torch.equal(value, resumed.model[key]), key
    assert resumed.best_epoch == straight.best_epoch


def test_validation_uses_norm_statistics_measured_for_the_current_weights():
    """Before each validation the batch-norm statistics are re-estimated from fresh training patches: what the
    running averages held before does not matter, the same epoch gives the same figures, and with 0 batches the
    running averages are kept (the seed's way)."""
    from liverseg.ml.loader import training_dataset

    profile = tiny_cfg(1)
    samples = tiny_samples()
    trainer = Trainer(profile.train, profile.infer, torch.device("cpu"))
    assert trainer.cfg.norm_recalibration == 16
    dataset = training_dataset([s.image for s in samples], [s.label for s in samples], trainer.cfg)

    def stats(epoch, start):
        torch.manual_seed(0)  # the same weights every time
        net = build_unet().to(memory_format=trainer.fmt)
        g = torch.Generator().manual_seed(start)  # different running averages before
        for norm in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)):
            norm.running_mean.copy_(torch.rand(norm.num_features, generator=g) * 10 - 5)
            norm.running_var.copy_(torch.rand(norm.num_features, generator=g) * 8 + 1)
        trainer.recalibrate_norms(net, dataset, len(samples), trainer.cfg, epoch)
        return {k: v for k, v in net.state_dict().items() if "running" in k}

    first, other_start = stats(3, start=0), stats(3, start=1)
    assert all(torch.equal(first[k], other_start[k]) for k in first)
    assert any(not torch.equal(first[k], stats(4, start=0)[k]) for k in first)  # new patches each epoch

    # No batches: the running averages stay.
    off = Trainer(profile.train.model_copy(update={"norm_recalibration": 0}), profile.infer, torch.device("cpu"))
    kept = build_unet().to(memory_format=trainer.fmt)
    before = {k: v.clone() for k, v in kept.state_dict().items()}
    off.recalibrate_norms(kept, dataset, len(samples), off.cfg, 3)
    assert all(torch.equal(before[k], v) for k, v in kept.state_dict().items())
    assert load_profile("seed", environ={}).train.norm_recalibration == 0


@pytest.mark.parametrize("profile_name", ["default", "seed", "gpu"])
def test_inference_returns_a_mask_on_the_original_grid(profile_name):
    image, _ = phantom(shape=(80, 72, 70), flips=(True, False, True))
    profile = load_profile(profile_name, environ={})
    torch.manual_seed(0)
    result = segment(build_unet(), image, profile, torch.device("cpu"))
    assert result.mask.shape == image.array.shape and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1}


def test_inference_refuses_a_scan_without_a_body_and_skips_air_groups():
    air = Volume(np.full((40, 40, 20), -1000, np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    for name in ("default", "seed"):
        with pytest.raises(InputError, match="no voxel above -200 HU"):
            segment(build_unet(), air, load_profile(name, environ={}), torch.device("cpu"))
    image, _ = phantom(shape=(48, 40, 70), flips=(False, False, False))
    padded = np.concatenate([np.full((48, 40, 64), -1000, np.int16), image.array], axis=2)
    torch.manual_seed(0)
    result = segment(build_unet(), Volume(padded, image.affine), load_profile("seed", environ={}), torch.device("cpu"))
    assert result.mask.shape == padded.shape and not result.mask[:, :, :64].any()


# -- the same arrays as the plain MONAI pipeline (tests/monai_reference.py), computed in slabs -----------------
GEOMETRIES = [((False, False, False), 0.0), ((True, True, False), 0.0), ((True, False, True), 0.0),
              ((False, True, True), 17.0)]


def rotated(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def study(flips, degrees, shape=(96, 96, 150), spacing=(0.9, 0.9, 2.0), seed=2):
    p = make_phantom(np.random.default_rng(seed), GridSpec(shape, spacing, flips))
    affine = rotated(degrees) @ p.affine
    return Volume(p.image, affine), Volume(p.label, affine)


@pytest.mark.parametrize("profile_name", ["default", "seed"])
@pytest.mark.parametrize(("flips", "degrees"), GEOMETRIES)
def test_preprocessing_gives_the_plain_monai_pipelines_arrays_to_the_bit(profile_name, flips, degrees,
                                                                          monkeypatch):
    """Slabs of a few slices each (forced small here) and numpy views instead of whole-volume float copies:
    the training arrays are the plain pipeline's, bit for bit, for any orientation."""
    monkeypatch.setattr(transforms, "SLAB_VOXELS", 96 * 96 * 7)
    image, label = study(flips, degrees)
    cfg = load_profile(profile_name, environ={}).preprocess
    ours, theirs = transforms.preprocess_pair(image, label, cfg), monai_reference.preprocess_pair(image, label, cfg)
    assert ours[0].shape == theirs[0].shape
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


@pytest.mark.parametrize(("flips", "degrees"), GEOMETRIES)
def test_the_way_back_is_the_plain_pipelines_inverse_within_1e6(flips, degrees, monkeypatch):
    """The probability mapped back onto the study's grid in slabs against MONAI's own ``inverse`` of the whole
    pipeline; and the masks that ``segment`` and the plain pipeline make of it are the same voxels."""
    monkeypatch.setattr(transforms, "SLAB_VOXELS", 96 * 96 * 9)
    image, _ = study(flips, degrees)
    profile = load_profile("default", environ={})
    torch.manual_seed(3)
    model = build_unet().eval()
    trainer = Trainer(profile.train, profile.infer, torch.device("cpu"))
    theirs = monai_reference.probability(lambda x: trainer.predict_logits(model, x), image, profile)
    network = transforms.to_network(image, profile.preprocess)
    logits = trainer.predict_logits(model, network.image.as_tensor())
    ours = transforms.to_original_grid(torch.softmax(logits[0], 0)[1:2], network, image, threshold=None)
    assert ours.shape == image.array.shape
    assert np.abs(ours - theirs).max() <= 1e-6
    mask = segment(model, image, profile.model_copy(update={"infer": profile.infer.model_copy(
        update={"largest_component": False})}), torch.device("cpu")).mask
    np.testing.assert_array_equal(mask, (theirs > profile.infer.threshold).astype(np.uint8))


def test_a_large_label_in_slabs_differs_from_the_whole_volume_only_at_exact_half_voxel_ties(monkeypatch):
    """Nearest-neighbour resampling of a label too large to resample whole: where slab and whole volume disagree,
    the sample sits exactly half-way between two source slices (0.8 mm slices to 2 mm: one in four lies so)."""
    monkeypatch.setattr(transforms, "WHOLE_NEAREST_VOXELS", 0)
    monkeypatch.setattr(transforms, "SLAB_VOXELS", 40 * 40 * 5)
    label = np.zeros((100, 100, 300), np.uint8)
    x, y, z = np.ogrid[:100, :100, :300]
    label[((x - 50) / 30.0) ** 2 + ((y - 45) / 25.0) ** 2 + ((z - 150) / 100.0) ** 2 < 1] = 1
    affine = np.diag([-1.0, -1.0, 0.8, 1.0])
    affine[:3, 3] = [50.0, 40.0, -100.0]
    image = Volume(np.where(label > 0, 60, -100).astype(np.int16), affine)
    cfg = load_profile("default", environ={}).preprocess.model_copy(update={"crop_margin": 1000})  # no crop
    ours = transforms.preprocess_pair(image, Volume(label, affine), cfg)[1][0]
    theirs = monai_reference.preprocess_pair(image, Volume(label, affine), cfg)[1][0]
    differ = np.argwhere(ours != theirs)
    assert 0 < len(differ) <= 0.01 * theirs.sum()
    oriented = transforms.ras_view(Volume(label, affine))
    grid_affine, _ = transforms.spacing_grid(oriented.affine, oriented.array.shape, cfg.spacing)
    # the network arrays are the spacing grid cropped to the body, here the whole grid: same voxel indices
    source = (np.c_[differ, np.ones(len(differ))] @ np.linalg.solve(oriented.affine, grid_affine).T)[:, :3]
    assert np.all(np.min(np.abs(source % 1 - 0.5), axis=1) < 1e-6)


def test_time_budget_stops_after_a_validated_epoch():
    """A budget that runs out before the first scheduled validation still validates and keeps a model."""
    profile = load_profile("default", environ={}, overrides=[
        "train.epochs=10", "train.patch=[32,32,32]", "train.val_interval=5", "train.time_budget_s=0.001",
        "train.samples_per_volume=1"])
    trainer = Trainer(profile.train, profile.infer, torch.device("cpu"))
    state = trainer.fit(tiny_samples(), tiny_samples(1))
    assert state.epoch == 1 and "val_dice" in state.history[-1]
    assert state.best_epoch == 1 and state.best_model is not None
    # Killed after that last checkpoint and resumed: the budget is spent, no epoch is added.
    resumed = trainer.fit(tiny_samples(), tiny_samples(1), TrainState.from_dict(state.to_dict()))
    assert resumed.epoch == 1 and len(resumed.history) == 1


def test_no_resume_discards_the_abandoned_attempts_checkpoints(store, tmp_path, monkeypatch):
    """--no-resume after a full attempt: the old, higher-epoch checkpoints must not outrank the fresh run's (pruning
    would delete the new ones) nor be what a later resume loads."""
    import io

    from liverseg.metrics import StageMetrics
    from liverseg.stagekit import CaseEntry, Plan, StageContext
    from liverseg.stages.train import TrainStage

    sample = tiny_samples(1)[0]
    buffer = io.BytesIO()
    np.savez(buffer, image=sample.image.numpy(), label=sample.label.numpy())
    refs = {"runs/r/preprocess/a/volume.npz": store.put_bytes("runs/r/preprocess/a/volume.npz", buffer.getvalue())}
    profile = load_profile("default", environ={}, overrides=[
        "train.epochs=3", "train.patch=[32,32,32]", "train.val_interval=1", "train.samples_per_volume=1",
        "train.checkpoint_every=1"])
    plan = Plan(run_id="r", dataset="d", cases={"a": CaseEntry(image="i", label="l", patient="a")},
                split={"train": ["a"], "val": [], "test": []}, profile=profile.model_dump(mode="json"))
    ctx = StageContext(store=store, run_id="r", step=STEPS["train"], metrics=StageMetrics("train", "r"), plan=plan)
    TrainStage(resume="auto", device="cpu").produce(ctx, refs, tmp_path, "FP")
    assert [epoch for epoch, _ in TrainStage(device="cpu")._checkpoints(ctx)] == [2, 3]

    def killed(self) -> bool:  # the fresh attempt dies right after its first checkpoint
        raise KeyboardInterrupt

    monkeypatch.setattr(StageMetrics, "push", killed)
    with pytest.raises(KeyboardInterrupt):
        TrainStage(resume="never", device="cpu").produce(ctx, refs, tmp_path, "FP")
    assert [epoch for epoch, _ in TrainStage(device="cpu")._checkpoints(ctx)] == [1]
    assert TrainStage(resume="auto", device="cpu")._resume_state(ctx, "FP").epoch == 1


def test_preprocess_sets_aside_a_unit_without_a_body(tmp_path):
    air = Volume(np.full((40, 40, 20), -1000, np.int16), np.diag([1.0, 1.0, 2.0, 1.0]))
    nifti.save(tmp_path / "image.nii.gz", air)
    nifti.save(tmp_path / "label.nii.gz", Volume(np.zeros((40, 40, 20), np.uint8), air.affine))
    cfg = load_profile("default", environ={}).preprocess
    with pytest.raises(InputError, match="no voxel above -200 HU"):
        preprocess_unit(tmp_path / "image.nii.gz", tmp_path / "label.nii.gz", cfg)


def test_the_train_stage_refuses_more_processes_than_training_units_and_gpus_0_is_the_cpu(store, tmp_path):
    import io

    from liverseg.errors import ConfigError
    from liverseg.metrics import StageMetrics
    from liverseg.stagekit import CaseEntry, Plan, StageContext
    from liverseg.stages.train import TrainStage

    sample = tiny_samples(1)[0]
    buffer = io.BytesIO()
    np.savez(buffer, image=sample.image.numpy(), label=sample.label.numpy())
    refs = {"runs/p/preprocess/a/volume.npz": store.put_bytes("runs/p/preprocess/a/volume.npz", buffer.getvalue())}
    profile = load_profile("default", environ={}, overrides=["train.patch=[32,32,32]", "train.processes=2"])
    plan = Plan(run_id="p", dataset="d", cases={"a": CaseEntry(image="i", label="l", patient="a")},
                split={"train": ["a"], "val": [], "test": []}, profile=profile.model_dump(mode="json"))
    ctx = StageContext(store=store, run_id="p", step=STEPS["train"], metrics=StageMetrics("train", "p"), plan=plan)
    with pytest.raises(ConfigError, match=r"train.processes 2: more processes than training units \(1\)"):
        TrainStage(device="cpu").produce(ctx, refs, tmp_path, "FP")
    on_the_cpu = TrainStage(gpus=0, loader_workers=3)
    assert on_the_cpu.device.type == "cpu" and on_the_cpu.shape == {"processes": 1, "loader_workers": 3}
    # How many processes and workers is not part of what is trained: the same fingerprint parameters.
    assert TrainStage().params(ctx)["train"] == TrainStage(gpus=0).params(
        StageContext(store=store, run_id="p", step=STEPS["train"], metrics=StageMetrics("train", "p"),
                     plan=plan.model_copy(update={"profile": load_profile("default", environ={}, overrides=[
                         "train.patch=[32,32,32]", "train.loader_workers=2"]).model_dump(mode="json")})))["train"]
