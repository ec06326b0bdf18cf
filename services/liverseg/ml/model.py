"""The published network: MONAI 3D U-Net, channels 16–256, stride 2, two residual units, batch norm."""

from __future__ import annotations

import torch
from monai.networks.layers import Norm
from monai.networks.nets import UNet

CHANNELS = (16, 32, 64, 128, 256)
STRIDES = (2, 2, 2, 2)


def build_unet() -> torch.nn.Module:
    """Input (N, 1, X, Y, Z) with each of X, Y, Z divisible by 16; output logits (N, 2, X, Y, Z):
    channel 0 background, 1 liver."""
    return UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=CHANNELS, strides=STRIDES,
                num_res_units=2, norm=Norm.BATCH)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last_3d speeds 3D convolutions on CPU (10–17% in training here); CUDA uses its own choice."""
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
