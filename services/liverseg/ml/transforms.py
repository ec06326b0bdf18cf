"""The network's view of a CT volume and the way back: one preprocessing for training and inference, in slabs.

Keys: ``image`` (CT in HU) and, for training data, ``label`` (MSD values 0/1/2, turned into liver = label ≥ 1).
The network input ``image`` is float32 in 0..1 after the −200..200 HU window, shape (1, X, Y, Z) in RAS at
``spacing`` mm (``unit: volume``) or resized to ``resize`` voxels (``unit: group``, the seed).

The steps are MONAI's — ``Orientationd`` (RAS) → ``Spacingd`` (bilinear image, nearest label, float64 arithmetic)
→ ``ScaleIntensityRanged`` → ``CropForegroundd`` (the body) → ``Resized`` (seed) — and give the same arrays as that
plain pipeline (``tests/monai_reference.py`` holds it; the tests compare). Only how they are computed differs, so
that memory stays bounded whatever the study's size:

- the orientation is done on the stored array as a numpy view (a flip or a transpose copies nothing);
- ``Spacing`` runs slab by slab along the output's last axis, each slab from the input slices it needs, so a
  512×512×987 int16 study is never held as float32, let alone float64 (the plain pipeline holds both: 3 GB);
- the way back (``to_original_grid``) resamples the liver probability onto the study's own grid slab by slab and
  thresholds each slab as it goes: what is kept at full size is the uint8 mask alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai import transforms as T
from monai.data import MetaTensor
from monai.data.utils import compute_shape_offset, zoom_affine

from liverseg.config import PreprocessConfig
from liverseg.imaging import geometry
from liverseg.imaging.geometry import Volume

__all__ = [
    "SLAB_VOXELS",
    "NetworkInput",
    "has_body",
    "preprocess_pair",
    "ras_view",
    "spacing_grid",
    "to_network",
    "to_original_grid",
]

# Destination voxels per slab: bounds the float64 sampling grid of one slab (3 × 8 bytes a voxel: ~100 MB) and
# the source slices it needs (16 slices of a 512×512 study; ~70 slices of a 2 mm grid).
SLAB_VOXELS = 4 * 2**20
# Nearest-neighbour (label) resampling is done whole up to this many source voxels (a 512 MB float64 copy), as the
# plain pipeline does, and in slabs above it. A slab's arithmetic differs from the whole volume's in the last bits,
# which decides where a sample sits exactly half-way between two source voxels: there the nearest neighbour may be
# the other one (both are equally near; 0.2 % of a liver label at 0.8 mm slices). Bilinear slabs agree to the bit
# in every case tested, and within one float32 step where they do not.
WHOLE_NEAREST_VOXELS = 64 * 2**20
# How Spacingd resamples (its defaults, as the plain pipeline uses them).
PADDING, ALIGN_CORNERS, RESAMPLE_DTYPE = "border", False, np.float64


def _body(x: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: anything above the window's lower edge (HU > −200), i.e. the body."""
    return x > 0


def has_body(array: np.ndarray, cfg: PreprocessConfig) -> bool:
    """Whether any voxel lies above the window's lower edge: without one, cropping to the body leaves nothing."""
    return bool((np.asarray(array) > cfg.window[0]).any())


def ras_view(volume: Volume) -> Volume:
    """The volume in RAS axis order, as ``Orientationd(axcodes="RAS")`` makes it: a numpy view (``geometry.ras_view``:
    nothing copied) with the affine MONAI computes for it (the product as MONAI forms it, torch float64, so the
    spacing grid below is the plain pipeline's to the bit)."""
    array, xform = geometry.ras_view(volume)
    affine = torch.as_tensor(np.asarray(volume.affine, dtype=np.float64)) @ torch.as_tensor(xform, dtype=torch.float64)
    return Volume(array, affine.numpy())


def spacing_grid(affine: np.ndarray, shape: tuple[int, int, int], spacing) -> tuple[np.ndarray, tuple[int, ...]]:
    """The grid ``Spacing(pixdim=spacing)`` resamples an (affine, shape) volume onto: its affine and shape."""
    out_d = np.array(spacing, dtype=np.float64)
    new_affine = zoom_affine(affine, out_d, diagonal=False)
    out_shape, offset = compute_shape_offset(shape, affine, new_affine, False)
    new_affine[:3, -1] = offset[:3]
    return new_affine, tuple(int(n) for n in out_shape)


def _shifted(affine: np.ndarray, axis: int, start: int) -> np.ndarray:
    """The affine of a sub-grid that starts ``start`` voxels along ``axis``."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = out[:3, 3] + out[:3, axis] * start
    return out


def _source_range(src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...], axis: int,
                  n_source: int) -> tuple[int, int]:
    """The source slices along ``axis`` that interpolation at every voxel of the destination grid can touch."""
    xform = np.linalg.solve(src_affine, dst_affine)
    corners = np.array([[i, j, k, 1.0] for i in (0, dst_shape[0] - 1) for j in (0, dst_shape[1] - 1)
                        for k in (0, dst_shape[2] - 1)])
    reach = (corners @ xform.T)[:, axis]
    return max(int(np.floor(reach.min())) - 2, 0), min(int(np.ceil(reach.max())) + 3, n_source)


def _resample(source: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, dst_shape: tuple[int, ...],
              mode: str, convert=None, threshold: float | None = None) -> np.ndarray:
    """``source`` (X, Y, Z, any dtype) resampled onto (dst_affine, dst_shape) as ``Spacing`` does, one slab of the
    destination's last axis at a time, each from the source slices it needs (along the source axis that maps to
    it); ``convert`` maps a source slab before resampling (e.g. label → liver). Returns float32 (X', Y', Z'), or
    uint8 ``> threshold`` when one is given (thresholded slab by slab: no float copy of the destination)."""
    out = np.empty(dst_shape, dtype=np.float32 if threshold is None else np.uint8)
    resample = T.SpatialResample(mode=mode, padding_mode=PADDING, align_corners=ALIGN_CORNERS, dtype=RESAMPLE_DTYPE)
    xform = np.linalg.solve(src_affine, dst_affine)
    axis = int(np.argmax(np.abs(xform[:3, 2])))  # the source axis the destination's slices advance along
    whole = mode == "nearest" and source.size <= WHOLE_NEAREST_VOXELS
    step = dst_shape[2] if whole else max(1, SLAB_VOXELS // (dst_shape[0] * dst_shape[1]))
    for start in range(0, dst_shape[2], step):
        stop = min(start + step, dst_shape[2])
        slab_affine = _shifted(dst_affine, 2, start)
        slab_shape = (*dst_shape[:2], stop - start)
        lo, hi = (0, source.shape[axis]) if whole else _source_range(src_affine, slab_affine, slab_shape, axis,
                                                                         source.shape[axis])
        index = [slice(None)] * 3
        index[axis] = slice(lo, hi)
        part = np.asarray(source[tuple(index)])
        part = convert(part) if convert is not None else part
        part_tensor = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))[None]
        moved = resample(MetaTensor(part_tensor, affine=torch.as_tensor(_shifted(src_affine, axis, lo))),
                         dst_affine=torch.as_tensor(slab_affine), spatial_size=slab_shape)[0].numpy()
        out[:, :, start:stop] = moved if threshold is None else moved > threshold
    return out


def _liver(labels: np.ndarray) -> np.ndarray:
    return (labels >= 1).astype(np.uint8)


def _tail(cfg: PreprocessConfig, with_label: bool) -> T.Compose:
    """What follows the spacing, on the small grid: window, crop to the body, (seed) resize. Invertible for the
    spatial steps (the way back pads the crop and undoes the resize)."""
    keys = ["image", "label"] if with_label else ["image"]
    steps: list[T.Transform] = [
        T.ScaleIntensityRanged("image", a_min=cfg.window[0], a_max=cfg.window[1], b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd(keys, source_key="image", select_fn=_body, margin=cfg.crop_margin, allow_smaller=True),
    ]
    if cfg.resize is not None:
        # torch's "nearest" samples the first voxel of each block, shifting labels against the area-averaged image
        # by up to half an output voxel; "nearest-exact" samples block centres.
        label_mode = "area" if cfg.label_interp == "area" else "nearest-exact"
        steps.append(T.Resized(keys, spatial_size=cfg.resize, mode=("area", label_mode) if with_label else ("area",)))
    return T.Compose(steps)


@dataclass
class NetworkInput:
    """The network's input ``image`` (MetaTensor (1, X, Y, Z), its crop/resize traced for the way back), the
    ``label`` in the same space when one was given, and the grid the spacing made (``grid_affine``, ``grid_shape``:
    RAS at the profile's spacing, before the crop)."""

    image: MetaTensor
    label: MetaTensor | None
    grid_affine: np.ndarray
    grid_shape: tuple[int, ...]
    tail: T.Compose


def to_network(image: Volume, cfg: PreprocessConfig, label: Volume | None = None) -> NetworkInput:
    """``image`` (and ``label``, on the same grid) as the network sees them; see the module docstring."""
    oriented = ras_view(image)
    src_affine = np.asarray(oriented.affine, dtype=np.float64)
    grid_affine, grid_shape = spacing_grid(src_affine, oriented.array.shape, cfg.spacing)
    data = {"image": MetaTensor(torch.from_numpy(_resample(oriented.array, src_affine, grid_affine, grid_shape,
                                                           "bilinear"))[None], affine=torch.as_tensor(grid_affine))}
    if label is not None:
        labels = ras_view(label)
        data["label"] = MetaTensor(torch.from_numpy(_resample(labels.array, src_affine, grid_affine, grid_shape,
                                                              "nearest", convert=_liver))[None],
                                   affine=torch.as_tensor(grid_affine))
    tail = _tail(cfg, with_label=label is not None)
    data = tail(data)
    return NetworkInput(data["image"], data.get("label"), grid_affine, grid_shape, tail)


def to_original_grid(probability: torch.Tensor, network: NetworkInput, target: Volume,
                     threshold: float | None) -> np.ndarray:
    """The liver probability (1, X, Y, Z) on the network's input grid, mapped back onto ``target``'s own voxels
    (the inverse crop/resize, then bilinear resampling from the spacing grid, as the plain pipeline's ``Invertd``)
    and thresholded slab by slab: uint8 (i, j, k) on ``target``'s grid, 1 where the probability > ``threshold``.
    With ``threshold`` None, the float32 probability itself, for callers that combine probabilities (the seed's
    overlapping groups, 64 slices at a time)."""
    image = network.image
    traced = MetaTensor(probability, meta=image.meta, applied_operations=list(image.applied_operations))
    # MONAI undoes a trace only with the transforms that made it, over all their keys (the label is small here).
    data = {"image": traced, **({"label": network.label} if network.label is not None else {})}
    grid = network.tail.inverse(data)["image"].as_tensor()[0].numpy()
    return _resample(grid, network.grid_affine, np.asarray(target.affine, dtype=np.float64),
                     tuple(target.array.shape), "bilinear", threshold=threshold)


def preprocess_pair(image: Volume, label: Volume, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Image float32 (1, X, Y, Z) in 0..1 and liver label uint8 (1, X, Y, Z) in 0/1."""
    network = to_network(image, cfg, label)
    if network.label is None:  # to_network keeps every key it is given
        raise ValueError("to_network dropped the label")
    img = network.image.as_tensor().numpy().astype(np.float32)
    lab = network.label.as_tensor().numpy()
    # Area interpolation leaves fractions at the liver's edge; any fraction counted as liver is the seed's
    # dilation. Nearest-neighbour labels are already 0/1.
    return img, (lab > 0).astype(np.uint8)
