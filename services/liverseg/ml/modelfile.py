"""The model file: a trained network's weights, the profile it was trained with, and where it came from.

One format (``FORMAT``), written by the train stage and read by inference, the promote gate and
``liverseg segment``. ``from_bytes`` loads with ``weights_only``: a model file from a store is data, never code.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from liverseg.config import Profile, profile_from_dict
from liverseg.errors import UsageError
from liverseg.imaging.geometry import Volume
from liverseg.ml.inference import Segmentation, segment
from liverseg.ml.model import build_unet, memory_format

__all__ = ["FORMAT", "LoadedModel", "from_bytes", "model_payload", "to_bytes"]

FORMAT = "liverseg.model/v1"


def to_bytes(obj: Any) -> bytes:
    """``torch.save`` of ``obj`` (a model payload or a training checkpoint) into bytes."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def model_payload(state_dict: dict[str, torch.Tensor], profile: dict[str, Any], **provenance: Any) -> dict[str, Any]:
    """What a model file holds: ``FORMAT``, the weights, the resolved profile and the provenance fields (run,
    train/val cases, fingerprint, code version, selection)."""
    return {"format": FORMAT, "state_dict": state_dict, "profile": profile, **provenance}


class LoadedModel:
    """A model file's network (eval mode, on ``device``) and the profile it was trained with."""

    def __init__(self, payload: dict[str, Any], device: torch.device):
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise UsageError(f"not a liverseg model file (format {FORMAT} expected)")
        self.profile: Profile = profile_from_dict(payload["profile"])
        # torch's stubs lack Module.to(memory_format=...), which torch has.
        self.network = build_unet().to(device).to(memory_format=memory_format(device))  # type: ignore[call-overload]
        self.network.load_state_dict(payload["state_dict"])
        self.network.eval()
        self.device = device
        self.payload = payload

    @classmethod
    def from_bytes(cls, data: bytes, device: torch.device, name: str = "model") -> LoadedModel:
        """The model in ``data``; anything that is not a usable model file is a ``UsageError`` naming ``name``."""
        try:
            return cls(from_bytes(data), device)
        except UsageError:
            raise
        except Exception as exc:  # unpickling or state-dict errors of many kinds: not a model we can use
            raise UsageError(f"{name} is not a usable liverseg model ({type(exc).__name__}: {exc})") from None

    def segment(self, volume: Volume, label: Volume | None = None) -> Segmentation:
        return segment(self.network, volume, self.profile, self.device, label)
