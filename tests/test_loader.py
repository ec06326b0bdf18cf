"""The training input pipeline: cached cases draw the patches MONAI's own transforms draw, epochs of a fixed number
of batches, seeded loader workers (a resumed run is bit-exact with workers too), and errors that name the sizes."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from monai import transforms as T
from monai.transforms.utils import map_binary_to_indices

from liverseg.config import load_profile
from liverseg.errors import ConfigError
from liverseg.ml.loader import (
    EveryVoxel,
    LiverIndicesd,
    batches,
    draw_order,
    rank_seed,
    share_of_batch,
    training_dataset,
)
from liverseg.ml.modelfile import from_bytes, to_bytes
from liverseg.ml.training import Sample, Trainer, TrainState

CPU = torch.device("cpu")


def unit(i: int, shape=(40, 36, 34)) -> Sample:
    g = torch.Generator().manual_seed(i)
    image = torch.rand((1, *shape), generator=g) * 0.2
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    label[:, 8:30, 6 + i:24, 5:28] = 1
    image[label.bool()] += 0.6
    return Sample(f"u{i}", image, label)


def profile(*overrides: str):
    return load_profile("default", environ={}, overrides=["train.patch=[32,32,32]", "train.samples_per_volume=2",
                                                          "train.lr=0.01", "train.val_interval=1", *overrides])


def test_precomputed_indices_are_monais_own():
    label = unit(0).label
    fg, bg = map_binary_to_indices(label)
    indices = LiverIndicesd()({"label": label})
    assert np.array_equal(indices["fg_indices"], np.asarray(fg))
    # MONAI counts every voxel of a uint8 label as background: negative patches are centred anywhere.
    assert len(indices["bg_indices"]) == len(bg) == label[0].numel()
    assert [indices["bg_indices"][k] for k in (0, 17, len(bg) - 1)] == [int(bg[k]) for k in (0, 17, len(bg) - 1)]
    with pytest.raises(IndexError):
        EveryVoxel(3)[3]


def test_cached_cases_draw_the_patches_monai_draws_without_a_cache():
    """The cache (padding, indices) changes nothing in what is drawn: the same seed gives the same patches as
    RandCropByPosNegLabeld computing the indices itself at every draw."""
    cfg = profile("train.augment=true").train
    samples = [unit(0, (30, 36, 34)), unit(1)]  # the first is smaller than the patch: padded
    plain = T.Compose([T.SpatialPadd(["image", "label"], cfg.patch),
                       T.RandCropByPosNegLabeld(["image", "label"], "label", cfg.patch, pos=1, neg=1, num_samples=2),
                       T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                       T.RandShiftIntensityd("image", offsets=0.05, prob=0.5)])
    plain.set_random_state(seed=7)
    expected = [plain({"image": s.image, "label": s.label}) for s in (samples[1], samples[0], samples[1])]
    dataset = training_dataset([s.image for s in samples], [s.label for s in samples], cfg)
    got = list(batches(dataset, [1, 0, 1], cfg, 7, CPU))
    assert len(got) == 3
    for (x, y), patches in zip(got, expected, strict=True):
        assert x.shape == (2, 1, 32, 32, 32) and x.dtype == y.dtype == torch.float32
        assert torch.equal(x, torch.stack([p["image"].as_tensor() for p in patches]))
        assert torch.equal(y, torch.stack([p["label"].as_tensor() for p in patches]).float())


def test_an_epoch_is_one_pass_or_a_fixed_number_of_steps():
    assert draw_order(5, 2, None, 3) == np.random.default_rng(3).permutation(5).tolist()
    order = draw_order(3, 2, 10, 3)
    assert len(order) == 20 and set(Counter(order).values()) <= {6, 7}  # every unit as often, ±1
    assert rank_seed(11, 0) == 11 and len({rank_seed(11, r) for r in range(4)}) == 4


def test_processes_split_each_steps_patches():
    assert share_of_batch(1, 2, 1) == (1, 2)
    assert share_of_batch(1, 2, 2) == (1, 1)   # default profile, 2 processes: one patch each
    assert share_of_batch(2, 4, 2) == (1, 4)   # gpu profile: one volume's 4 patches each
    assert share_of_batch(2, 4, 8) == (1, 1)
    assert share_of_batch(4, 2, 2) == (2, 2)
    with pytest.raises(ConfigError, match=r"the 8 patches of a step .* do not split evenly"):
        share_of_batch(2, 4, 3)


def test_loader_workers_are_seeded_by_epoch_and_worker():
    cfg = profile("train.loader_workers=2", "train.batch_size=1").train
    samples = [unit(i) for i in range(3)]
    dataset = training_dataset([s.image for s in samples], [s.label for s in samples], cfg)

    def epoch(seed: int) -> list[torch.Tensor]:
        return [x for x, _ in batches(dataset, [0, 1, 2, 0], cfg, seed, CPU)]

    first, again, other = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # Batches 0 and 2 come from worker 0, 1 and 3 from worker 1: each worker has its own stream.
    in_process = [x for x, _ in batches(dataset, [0, 1, 2, 0], cfg.model_copy(update={"loader_workers": 0}), 5, CPU)]
    assert not torch.equal(first[3], in_process[3])


def test_resume_with_workers_and_fixed_epochs_is_bit_exact():
    cfg = profile("train.epochs=3", "train.loader_workers=2", "train.iterations_per_epoch=3",
                  "train.rotate_deg=10", "train.scale_range=0.1", "train.noise_std=0.02")
    train, val = [unit(i) for i in range(3)], [unit(9)]
    straight = Trainer(cfg.train, cfg.infer, CPU).fit(train, val)
    assert len(straight.history) == 3
    saved = {}

    def killed_after_epoch_1(state: TrainState, improved: bool) -> None:
        saved["checkpoint"] = to_bytes(state.to_dict())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg.train, cfg.infer, CPU).fit(train, val, on_epoch=killed_after_epoch_1)
    resumed = Trainer(cfg.train, cfg.infer, CPU).fit(train, val, TrainState.from_dict(from_bytes(saved["checkpoint"])))
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert all(torch.equal(straight.model[k], resumed.model[k]) for k in straight.model)


def test_out_of_memory_names_the_patch_and_the_batch(monkeypatch):
    cfg = profile("train.batch_size=2")
    trainer = Trainer(cfg.train, cfg.infer, CPU)

    def no_memory(model, x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer, "_forward", no_memory)
    model = torch.nn.Conv3d(1, 2, 1)
    x = torch.zeros((4, 1, 32, 32, 32))
    with pytest.raises(ConfigError, match=r"batch of 4 patches of 32x32x32 voxels \(train.batch_size 2 x "
                                          r"train.samples_per_volume 2\)"):
        trainer.step(model, torch.optim.SGD(model.parameters(), 0.1), x, x)
    with pytest.raises(ConfigError, match=r"segmenting a 40x36x34 volume, 1 window\(s\) of 32x32x32"):
        trainer.predict_logits(model, unit(0).image)
