"""MONAI dictionary transforms for both profiles, built from one function so training and inference agree.

Keys: ``image`` (CT in HU) and, for training data, ``label`` (MSD values 0/1/2, turned into liver = label ≥ 1).
Output ``image`` is float32 in 0..1 after the −200..200 HU window, shape (1, X, Y, Z) in RAS at ``spacing`` mm
(``unit: volume``) or resized to ``resize`` voxels (``unit: group``, the seed).
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor

from liverseg.config import PreprocessConfig
from liverseg.imaging.geometry import Volume


def _body(x: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: anything above the window's lower edge (HU > −200), i.e. the body."""
    return x > 0


def has_body(array: np.ndarray, cfg: PreprocessConfig) -> bool:
    """Whether any voxel lies above the window's lower edge: without one, cropping to the body leaves nothing."""
    return bool((np.asarray(array) > cfg.window[0]).any())


def _liver(x: torch.Tensor) -> torch.Tensor:
    return (x >= 1).to(torch.uint8)


def preprocessing(cfg: PreprocessConfig, with_label: bool) -> T.Compose:
    """Orientation RAS → Spacing → window to 0..1 → crop to the body → (seed) resize. Invertible for ``image``."""
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[T.Transform] = []
    if with_label:
        steps.append(T.Lambdad("label", _liver))
    steps += [
        T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys, pixdim=cfg.spacing, mode=modes),
        T.ScaleIntensityRanged("image", a_min=cfg.window[0], a_max=cfg.window[1], b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd(keys, source_key="image", select_fn=_body, margin=cfg.crop_margin, allow_smaller=True),
    ]
    if cfg.resize is not None:
        # torch's "nearest" samples the first voxel of each block, shifting labels against the area-averaged image
        # by up to half an output voxel; "nearest-exact" samples block centres.
        label_mode = "area" if cfg.label_interp == "area" else "nearest-exact"
        steps.append(T.Resized(keys, spatial_size=cfg.resize, mode=("area", label_mode) if with_label else ("area",)))
    return T.Compose(steps)


def as_meta(volume: Volume) -> MetaTensor:
    """A volume as MONAI's (1, X, Y, Z) MetaTensor with its affine, ready for the transforms."""
    array = torch.from_numpy(np.ascontiguousarray(volume.array).astype(np.float32))[None]
    return MetaTensor(array, affine=torch.as_tensor(volume.affine, dtype=torch.float64),
                      meta={"space": "RAS"})


def preprocess_pair(image: Volume, label: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image float32 (1, X, Y, Z) in 0..1 and liver label uint8 (1, X, Y, Z) in 0/1."""
    out = preprocessing(cfg, with_label=True)({"image": as_meta(image), "label": as_meta(label)})
    img = out["image"].as_tensor().numpy().astype(np.float32)
    lab = out["label"].as_tensor().numpy()
    # Area interpolation leaves fractions at the liver's edge; any fraction counted as liver is the seed's
    # dilation. Nearest-neighbour labels are already 0/1.
    return img, (lab > 0).astype(np.uint8)
