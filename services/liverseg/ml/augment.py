"""Training-time augmentations beyond MONAI's stock ones.

``RandThinSlabd``: a patch reduced to a thin slab of slices, the rest of it set to what inference pads with.
Inference pads an input thinner than the network's patch with zeros (−200 HU after the window); training
sees that only for scans shorter than the patch. A series of a few slices (a perfusion slab, a test series,
a localised rescan) is the extreme of it, and a network that has never met one finds no liver in it at all.

``RandLiverContrastd``: the liver made brighter or darker than its surroundings. The phantoms' livers take the HU
of their contrast phase, and a steatotic liver (darker than spleen and muscle) is one case in four: a small
training set may hold none in some phase, and a network that learnt "liver is the organ a little brighter than
muscle" then misses one. Shifting only the liver's HU (the label says where it is) makes its intensity a weak cue
and its shape and place the strong ones, as SynthSeg's per-structure intensities do; the label gives the liver only,
so only the liver is shifted. Written here because MONAI has no label-wise intensity transform; TorchIO's
``RandomLabelsToImage`` repaints labelled structures with new gaussian intensities, losing their texture, and is
not a MONAI transform the cached pipeline can seed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage

__all__ = ["RandLiverContrastd", "RandThinSlabd"]


class RandThinSlabd(RandomizableTransform, MapTransform):
    """With probability ``prob``, keep only ``slices`` (a range, voxels) consecutive z-slices of a patch, centred
    on a slice with liver when the patch has one, and zero the image and the label everywhere else.

    Args:
        keys: ``(image, label)`` keys of the (C, X, Y, Z) tensors; both are zeroed outside the slab.
        label_key: the key whose foreground chooses the slab's centre.
        prob: probability per patch.
        slices: (low, high) inclusive slab thickness in voxels.
    """

    def __init__(self, keys: Sequence[Hashable], label_key: Hashable, prob: float, slices: tuple[int, int]):
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.slices = slices
        self._range = (0, 0)

    def randomize(self, data: Mapping[Hashable, torch.Tensor]) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        label = torch.as_tensor(data[self.label_key])
        depth = label.shape[-1]
        with_liver = torch.nonzero(label.reshape(-1, depth).any(dim=0)).ravel().numpy()
        centre = int(self.R.choice(with_liver)) if with_liver.size else int(self.R.randint(depth))
        thickness = int(self.R.randint(self.slices[0], self.slices[1] + 1))
        start = int(np.clip(centre - thickness // 2, 0, max(depth - thickness, 0)))
        self._range = (start, start + thickness)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize(out)
        if not self._do_transform:
            return out
        start, stop = self._range
        for key in self.key_iterator(out):
            value = out[key].clone()
            value[..., :start] = 0
            value[..., stop:] = 0
            out[key] = value
        return out


class RandLiverContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``, add one offset drawn from ``-shift..shift`` to the image inside the liver label,
    feathered over ``edge`` voxels (a gaussian-blurred mask) so that no step edge marks where the label is.

    Args:
        image_key: the (C, X, Y, Z) image, windowed to 0..1; the result is clipped to 0..1 as the window clips.
        label_key: the (C, X, Y, Z) label; every non-zero voxel (liver and tumour) is shifted.
        prob: probability per patch.
        shift: largest offset, in window units (the default window of 400 HU: 0.2 is 80 HU).
        edge: sigma of the mask's blur, voxels.
    """

    def __init__(self, image_key: Hashable, label_key: Hashable, prob: float, shift: float, edge: float = 1.0):
        MapTransform.__init__(self, [image_key])
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        self.shift = shift
        self.edge = edge
        self._offset = 0.0

    def randomize(self, data: Mapping[Hashable, torch.Tensor] | None = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._offset = float(self.R.uniform(-self.shift, self.shift))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        out = dict(data)
        self.randomize()
        if not self._do_transform:
            return out
        liver = torch.as_tensor(out[self.label_key]).numpy() > 0
        if not liver.any():
            return out
        weight = ndimage.gaussian_filter(liver.astype(np.float32), sigma=(0, *[self.edge] * (liver.ndim - 1)))
        for key in self.key_iterator(out):
            image = out[key]
            out[key] = (image + torch.as_tensor(weight * np.float32(self._offset))).clamp_(0.0, 1.0)
        return out
