"""Renders in, prior input out: the image checks and resizing every prior applies to a batch of renders.

Kept apart from the priors so that the light ShapesWorld prior does not import a hub prior's module.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def check_images(images: Tensor) -> None:
    """Renders must be ``[B, 3, H, W]``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")


def resize_images(images: Tensor, size: int) -> Tensor:
    """Differentiable bilinear resize to ``size × size`` (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def to_pixel_space(images: Tensor, size: int) -> Tensor:
    """Renders ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, size, size]`` in [-1, 1] (checked, differentiable)."""
    check_images(images)
    return resize_images(images, size) * 2.0 - 1.0
