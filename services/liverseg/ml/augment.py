"""Training-time augmentations beyond MONAI's stock ones.

``RandThinSlabd``: a patch reduced to a thin slab of slices, the rest of it set to what inference pads with.
Inference pads an input thinner than the network's patch with zeros (−200 HU after the window); training
sees that only for scans shorter than the patch. A series of a few slices (a perfusion slab, a test series,
a localised rescan) is the extreme of it, and a network that has never met one finds no liver in it at all.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandThinSlabd"]


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
