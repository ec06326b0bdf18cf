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


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively, so autocast to it is faster: CUDA cards of Ampere and later, and
    CPUs with AVX512-BF16 or AMX. Elsewhere bf16 is emulated: a CPU without the instructions ran a step 30-40x slower.

    A step of 2 patches of 64x64x48 took 0.83x the fp32 time on an EPYC with AVX512-BF16 and 0.71x on a Xeon with
    AMX (2 cores, 2026-12).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # torch's own test for oneDNN's bf16 kernels; there is no public one.
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
