"""Device names from configs and settings -> ``torch.device``: one rule for the trainer, CLI and service."""

from __future__ import annotations

import torch

from att3d.config import ConfigError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available; a bare ``cuda`` becomes this process's GPU under torchrun.

    Raises :class:`ConfigError` (key ``device``) for a name that is not a device or a CUDA device on a
    machine without CUDA, so the mistake is reported before any model is built.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device
