"""Choosing the torch device; shared by the open_clip encoder and the CCI trainer.

A module of its own so that adapter training imports torch without also importing open_clip.
"""

from __future__ import annotations

import torch

from exemplar.errors import EncoderUnavailable

__all__ = ["resolve_device"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderUnavailable(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)
