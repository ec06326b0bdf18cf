"""Profiles and overrides."""

from __future__ import annotations

import pytest

from liverseg.config import ConfigError, available_profiles, load_profile


def test_both_profiles_load_and_differ_where_the_method_differs():
    assert {"default", "seed", "gpu"} <= set(available_profiles())
    seed, default = load_profile("seed", environ={}), load_profile("default", environ={})
    assert (seed.train.lr, seed.train.weight_decay, seed.train.amsgrad, seed.train.epochs) == (1e-5, 1e-5, True, 100)
    assert (seed.train.batch_size, seed.train.loss, seed.preprocess.resize) == (1, "dice", (128, 128, 64))
    assert seed.preprocess.spacing == (1.5, 1.5, 1.0) and seed.preprocess.window == (-200.0, 200.0)
    assert (seed.group.order, seed.group.remainder) == ("listing", "drop")
    assert (default.group.size, default.group.order, default.group.remainder) == (64, "position", "overlap")
    assert default.train.lr > seed.train.lr


def test_env_then_cli_override_the_profile():
    env = {"LIVERSEG__TRAIN__EPOCHS": "7", "LIVERSEG__TRAIN__LR": "0.01", "LIVERSEG_PROFILE": "seed"}
    profile = load_profile(None, ["train.epochs=3", "preprocess.spacing=[2, 2, 3]"], environ=env)
    assert profile.name == "seed"
    assert profile.train.epochs == 3          # CLI beats env
    assert profile.train.lr == 0.01           # env beats the file
    assert profile.preprocess.spacing == (2.0, 2.0, 3.0)


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "epochz"),
    ("trian.epochs=3", "unknown section 'trian'"),
    ("train.epochs=-1", "train.epochs"),
    ("group.remainder=keep", "group.remainder"),
    ("train.epochs", "expected section.field=value"),
    ("train.patch=[96,96", "not valid YAML"),
    ("train.patch=[40,40,40]", r"train.patch \[40, 40, 40\] must be multiples of 16"),
    ("train.patch=null", "set train.patch .* or preprocess.resize"),
])
def test_bad_overrides_name_the_problem(override, message):
    with pytest.raises(ConfigError, match=message):
        load_profile("default", [override], environ={})


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_profile("nope", environ={})
