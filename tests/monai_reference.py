"""The plain MONAI pipeline liverseg's preprocessing and inference must agree with: whole-volume transforms, a
dictionary ``Compose`` and MONAI's own ``inverse`` (as ``Invertd`` does), written the way the MONAI tutorials write
them. ``liverseg.ml.transforms`` computes the same arrays in slabs; the tests compare the two, and
``make bench-segment`` times ``liverseg segment`` against this pipeline.
"""

from __future__ import annotations

import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor

from liverseg.config import PreprocessConfig, Profile
from liverseg.imaging.geometry import Volume


def as_meta(volume: Volume) -> MetaTensor:
    array = torch.from_numpy(np.ascontiguousarray(volume.array).astype(np.float32))[None]
    return MetaTensor(array, affine=torch.as_tensor(volume.affine, dtype=torch.float64), meta={"space": "RAS"})


def preprocessing(cfg: PreprocessConfig, with_label: bool) -> T.Compose:
    keys = ["image", "label"] if with_label else ["image"]
    modes = ("bilinear", "nearest") if with_label else ("bilinear",)
    steps: list[T.Transform] = []
    if with_label:
        steps.append(T.Lambdad("label", lambda x: (x >= 1).to(torch.uint8)))
    steps += [
        T.Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        T.Spacingd(keys, pixdim=cfg.spacing, mode=modes),
        T.ScaleIntensityRanged("image", a_min=cfg.window[0], a_max=cfg.window[1], b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd(keys, source_key="image", select_fn=lambda x: x > 0, margin=cfg.crop_margin,
                          allow_smaller=True),
    ]
    if cfg.resize is not None:
        label_mode = "area" if cfg.label_interp == "area" else "nearest-exact"
        steps.append(T.Resized(keys, spatial_size=cfg.resize, mode=("area", label_mode) if with_label else ("area",)))
    return T.Compose(steps)


def preprocess_pair(image: Volume, label: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    out = preprocessing(cfg, with_label=True)({"image": as_meta(image), "label": as_meta(label)})
    img = out["image"].as_tensor().numpy().astype(np.float32)
    return img, (out["label"].as_tensor().numpy() > 0).astype(np.uint8)


def probability(predict, volume: Volume, profile: Profile) -> np.ndarray:
    """The liver probability on ``volume``'s own grid (float32, whole volume), the way ``Invertd`` gives it:
    ``predict`` maps the network input (1, X, Y, Z) to logits (1, 2, X, Y, Z)."""
    pipeline = preprocessing(profile.preprocess, with_label=False)
    data = pipeline({"image": as_meta(volume)})
    image: MetaTensor = data["image"]
    prob = torch.softmax(predict(image.as_tensor())[0], dim=0)[1:2]
    data["image"] = MetaTensor(prob, meta=image.meta, applied_operations=image.applied_operations)
    return pipeline.inverse(data)["image"].as_tensor()[0].numpy().astype(np.float32)
