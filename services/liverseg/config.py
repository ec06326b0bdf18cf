"""Pipeline configuration: named profiles in one YAML file, overridable from the CLI and the environment.

Precedence, lowest to highest: the profile in ``profiles.yaml`` (or the file named by ``LIVERSEG_CONFIG``),
environment variables ``LIVERSEG__<SECTION>__<FIELD>`` (e.g. ``LIVERSEG__TRAIN__EPOCHS=5``), then ``--set
section.field=value`` flags. Values are parsed as YAML scalars/lists, so ``--set preprocess.spacing=[2,2,2]``
works. Unknown sections or fields are errors, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from liverseg.errors import ConfigError

ENV_CONFIG = "LIVERSEG_CONFIG"
ENV_PROFILE = "LIVERSEG_PROFILE"
ENV_OVERRIDE_PREFIX = "LIVERSEG__"
DEFAULT_PROFILE = "default"
# The U-Net halves its input four times (strides 2, 2, 2, 2): other sizes fail to concatenate on the way up.
NETWORK_DIVISOR = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GroupConfig(_Section):
    size: int = Field(64, ge=1, description="slices per group")
    order: Literal["position", "listing"] = Field(
        "position", description="position: along the slice normal; listing: the store's key order (seed flaw)")
    remainder: Literal["overlap", "drop"] = Field(
        "overlap", description="overlap: the last group ends at the last slice, overlapping its neighbour; "
                               "drop: slices after the last full group are discarded (seed flaw)")


class PreprocessConfig(_Section):
    unit: Literal["volume", "group"] = Field(
        "volume", description="train on whole series (volume) or on each slice group (group, the seed)")
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.0)
    window: tuple[float, float] = (-200.0, 200.0)
    resize: tuple[int, int, int] | None = Field(None, description="fixed output shape, or none to keep spacing")
    label_interp: Literal["nearest", "area"] = Field(
        "nearest", description="area reproduces the seed's label dilation; nearest keeps labels exact")
    crop_margin: int = Field(4, ge=0, description="voxels kept around the body when cropping the foreground")

    @field_validator("spacing")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError("spacing must be positive")
        return v


class SplitConfig(_Section):
    seed: int = 0
    val_fraction: float = Field(0.15, ge=0, lt=1)
    test_fraction: float = Field(0.25, gt=0, lt=1)


class TrainConfig(_Section):
    epochs: int = Field(100, ge=1)
    time_budget_s: float | None = Field(None, gt=0, description="stop after the epoch that passes this wall time")
    batch_size: int = Field(1, ge=1, description="volumes per step (their patches split among the processes)")
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    amsgrad: bool = True
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "poly"] = "constant"
    loss: Literal["dice", "dice_ce"] = "dice"
    patch: tuple[int, int, int] | None = Field(None, description="random patch size, or none for whole inputs")
    samples_per_volume: int = Field(1, ge=1)
    iterations_per_epoch: int | None = Field(
        None, ge=1, description="steps per epoch, whatever the number of cases; none: one pass over the "
                                "training units")
    augment: bool = Field(False, description="intensity: random scale (±10%) and shift (±0.05) of the 0..1 image")
    noise_std: float = Field(0.0, ge=0, description="gaussian noise of this standard deviation (0..1 scale) on 15% "
                                                     "of patches; 0: none")
    rotate_deg: float = Field(0.0, ge=0, le=45, description="spatial: random rotation up to ± this about each axis")
    scale_range: float = Field(0.0, ge=0, lt=1, description="spatial: random zoom by up to ± this fraction")
    spatial_prob: float = Field(0.2, ge=0, le=1, description="probability of the rotation/zoom for one patch")
    thin_slab: float = Field(0.0, ge=0, le=1, description=(
        "probability that a training patch is cut to a slab of 1-8 slices, the rest zeroed as inference pads a thin "
        "series (ml/augment.py); 0: never"))
    liver_contrast: float = Field(0.0, ge=0, le=1, description=(
        "probability that a training patch has its liver's intensity shifted against its surroundings by up to "
        "±0.2 (80 HU at a 400 HU window; ml/augment.py); 0: never"))
    norm_recalibration: int = Field(0, ge=0, description=(
        "batches of training patches that re-estimate the batch-norm statistics for the current weights before "
        "each validation and the final model (ml/training.py); 0: keep the running averages of training"))
    val_interval: int = Field(1, ge=1)
    checkpoint_every: int = Field(5, ge=1)
    selection: Literal["dice", "seed_soft"] = Field(
        "dice", description="dice: hard foreground Dice; seed_soft: 1 - soft Dice loss with background (seed)")
    precision: Literal["auto", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the device computes in bf16 natively (CUDA Ampere and later, "
                            "CPUs with AVX512-BF16 or AMX; ml/model.py), fp32 elsewhere; fp32: always")
    seed: int = 0
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads per process (default: all cores, "
                                                             "shared among the processes)")
    # How the training runs, not what it trains: left out of the train stage's fingerprint, so a checkpoint written
    # with N processes or workers resumes with M (the Argo template sets both from the pod it asks for).
    processes: int = Field(1, ge=1, description="data-parallel training processes (one per GPU; gloo on the CPU)")
    loader_workers: int = Field(0, ge=0, description="input-pipeline worker processes per training process "
                                                     "(0: patches are drawn in the training process)")


class InferConfig(_Section):
    overlap: float = Field(0.25, ge=0, lt=1)
    blend: Literal["gaussian", "constant"] = "gaussian"
    largest_component: bool = True
    threshold: float = Field(0.5, gt=0, lt=1)
    sw_batch_size: int = Field(1, ge=1, description="sliding windows per network call")


class PromoteConfig(_Section):
    tolerance: float = Field(0.0, ge=0, le=1, description=(
        "promote a new model when its mean held-out Dice is at least the champion's minus this, both scored on "
        "the new model's held-out cases"))


class Profile(_Section):
    name: str
    group: GroupConfig = GroupConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    promote: PromoteConfig = PromoteConfig()

    @model_validator(mode="after")
    def _network_input_fits(self) -> Profile:
        shape = self.train.patch or self.preprocess.resize
        if shape is None:
            raise ValueError("set train.patch (patch training) or preprocess.resize (whole resized inputs): "
                             "the network needs a fixed input shape")
        if any(size % NETWORK_DIVISOR for size in shape):
            source = "train.patch" if self.train.patch else "preprocess.resize"
            raise ValueError(f"{source} {list(shape)} must be multiples of {NETWORK_DIVISOR} "
                             "(the U-Net halves its input four times)")
        return self


def _profiles_file() -> str:
    custom = os.environ.get(ENV_CONFIG)
    if custom:
        return Path(custom).read_text()
    return resources.files("liverseg").joinpath("profiles.yaml").read_text()


def available_profiles() -> list[str]:
    return sorted((yaml.safe_load(_profiles_file()) or {}).get("profiles", {}))


def _set_path(tree: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"{origin}: '{dotted}' must be section.field (e.g. train.epochs)")
    section, name = parts
    if section not in Profile.model_fields or section == "name":
        raise ConfigError(f"{origin}: unknown section '{section}' "
                          f"(one of {', '.join(k for k in Profile.model_fields if k != 'name')})")
    tree.setdefault(section, {})[name] = value


def parse_overrides(pairs: Iterable[str], origin: str = "--set") -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"{origin} {pair!r}: expected section.field=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin} {pair!r}: the value is not valid YAML ({exc.problem})") from None
        _set_path(tree, key.strip(), value, origin)
    return tree


def env_override_pairs(environ: Mapping[str, str]) -> list[str]:
    """``LIVERSEG__TRAIN__EPOCHS=5`` as ``train.epochs=5``, in a stable order."""
    return [f"{k[len(ENV_OVERRIDE_PREFIX):].lower().replace('__', '.')}={v}"
            for k, v in sorted(environ.items()) if k.startswith(ENV_OVERRIDE_PREFIX)]


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    return parse_overrides(env_override_pairs(environ), origin="environment")


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for section, fields in extra.items():
        merged.setdefault(section, {}).update(fields)
    return merged


def load_profile(name: str | None = None, overrides: Iterable[str] = (),
                 environ: Mapping[str, str] | None = None) -> Profile:
    """The named profile (default: ``$LIVERSEG_PROFILE`` or ``default``) with env and CLI overrides applied."""
    environ = os.environ if environ is None else environ
    name = name or environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    profiles = (yaml.safe_load(_profiles_file()) or {}).get("profiles", {})
    if name not in profiles:
        raise ConfigError(f"unknown profile '{name}' (available: {', '.join(sorted(profiles))})")
    tree = _merge(profiles[name] or {}, env_overrides(environ))
    tree = _merge(tree, parse_overrides(overrides))
    try:
        return Profile(name=name, **tree)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else
                             e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"profile '{name}': {problems}") from None


def profile_from_dict(data: Mapping[str, Any]) -> Profile:
    """Rebuild a profile recorded in a manifest (the plan stores the resolved profile of a run)."""
    return Profile.model_validate(dict(data))
