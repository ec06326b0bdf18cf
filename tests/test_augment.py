"""Training-time augmentations (liverseg.ml.augment) and their switch in the profile and the input pipeline."""

from __future__ import annotations

import numpy as np
import torch

from liverseg.config import load_profile
from liverseg.ml.augment import RandLiverContrastd, RandThinSlabd
from liverseg.ml.loader import batches, training_dataset

CPU = torch.device("cpu")


def patch():
    image = torch.rand(1, 16, 16, 32) + 0.1
    label = torch.zeros(1, 16, 16, 32, dtype=torch.uint8)
    label[:, 4:12, 4:12, 20:28] = 1
    return {"image": image, "label": label}


def kept_slices(image: torch.Tensor) -> np.ndarray:
    """Indices of the z-slices of a (..., Z) tensor with anything non-zero in them."""
    return np.flatnonzero(image.reshape(-1, image.shape[-1]).abs().sum(dim=0).numpy() > 0)


def test_thin_slab_keeps_a_few_slices_through_the_liver_and_zeroes_the_rest():
    t = RandThinSlabd(["image", "label"], "label", prob=1.0, slices=(1, 4))
    t.set_random_state(seed=0)
    for _ in range(20):
        out = t(patch())
        kept = kept_slices(out["image"])
        assert 1 <= len(kept) <= 4 and np.all(np.diff(kept) == 1), "one run of consecutive slices"
        assert out["label"][..., kept].any(), "the slab goes through the liver"
        outside = np.setdiff1d(np.arange(32), kept)
        assert not out["label"][..., outside].any() and not out["image"][..., outside].any()


def test_thin_slab_off_leaves_patches_alone_and_is_seeded():
    data = patch()
    untouched = RandThinSlabd(["image", "label"], "label", prob=0.0, slices=(1, 8))(data)
    assert torch.equal(untouched["image"], data["image"])
    runs = []
    for _ in range(2):
        t = RandThinSlabd(["image", "label"], "label", prob=0.5, slices=(1, 8))
        t.set_random_state(seed=3)
        runs.append([t(patch())["label"].sum().item() for _ in range(10)])
    assert runs[0] == runs[1]


def test_the_profile_switch_cuts_the_input_pipelines_patches_only_when_set():
    def drawn(thin_slab: float) -> list[torch.Tensor]:
        cfg = load_profile("default", environ={}, overrides=["train.patch=[16,16,32]", "train.augment=true",
                                                             f"train.thin_slab={thin_slab}"]).train
        d = patch()
        dataset = training_dataset([d["image"]], [d["label"]], cfg)
        assert isinstance(dataset.transform.transforms[-1], RandThinSlabd) == bool(thin_slab)
        return [x for x, _ in batches(dataset, [0, 0, 0], cfg, 5, CPU)]

    off, on = drawn(0.0), drawn(1.0)
    for x in off:
        assert x.shape == (2, 1, 16, 16, 32)
        assert all(len(kept_slices(p)) == 32 for p in x), "every slice kept"
    for x in on:
        assert all(1 <= len(kept_slices(p)) <= 8 for p in x), "every patch cut to a 1-8 slice slab"


def test_liver_contrast_shifts_the_liver_only_with_a_feathered_edge_and_is_seeded():
    data = patch()
    data["image"] = torch.full((1, 16, 16, 32), 0.5)
    t = RandLiverContrastd("image", "label", prob=1.0, shift=0.2)
    t.set_random_state(seed=1)
    offsets = []
    for _ in range(10):
        out = t(data)
        change = out["image"] - data["image"]
        offsets.append(float(change[0, 8, 8, 24]))  # the middle of the liver: the whole offset
        assert 0 < abs(offsets[-1]) <= 0.2
        assert torch.equal(out["label"], data["label"])
        assert float(change[0, 0, 0, 0]) == 0.0, "far from the liver nothing changes"
        edge = abs(float(change[0, 4, 8, 24]))  # the liver's first voxel: part of the offset, no step at the label
        assert 0.2 * abs(offsets[-1]) < edge < 0.9 * abs(offsets[-1])
    assert min(offsets) < 0 < max(offsets), "darker and brighter livers"
    again = RandLiverContrastd("image", "label", prob=1.0, shift=0.2)
    again.set_random_state(seed=1)
    assert [float((again(data)["image"] - 0.5)[0, 8, 8, 24]) for _ in range(10)] == offsets


def test_liver_contrast_clips_to_the_window_and_leaves_patches_without_liver_alone():
    data = patch()
    data["image"] = torch.full((1, 16, 16, 32), 0.95)
    t = RandLiverContrastd("image", "label", prob=1.0, shift=0.2)
    t.set_random_state(seed=0)
    assert all(float(t(data)["image"].max()) <= 1.0 for _ in range(10))
    empty = {"image": data["image"], "label": torch.zeros_like(data["label"])}
    assert torch.equal(t(empty)["image"], data["image"])


def test_the_profile_switch_adds_liver_contrast_only_when_set():
    for share in (0.0, 0.5):
        cfg = load_profile("default", environ={}, overrides=["train.patch=[16,16,32]",
                                                             f"train.liver_contrast={share}"]).train
        d = patch()
        steps = training_dataset([d["image"]], [d["label"]], cfg).transform.transforms
        assert any(isinstance(s, RandLiverContrastd) for s in steps) == bool(share)
