"""Training data of the ShapesWorld classifier: ground-truth renders plus "nothing there" images.

The shape head's :data:`~att3d.shapes.classifier.BACKGROUND` class learns from images in which no object
can be named, made from the object renders themselves so they look like what a renderer produces:

- ``empty``: the white background, sometimes under a faint uniform tint (a thin haze over the scene);
- ``ghost``: a whole render blended into the background at 4–20 % opacity (a smoky halo, no surface);
- ``specks``: one to four renders shrunk to 2–6 px at random places (floaters, small blobs).

A real object fills a good part of the view at full opacity, so none of these is a plausible object. The
augmentations of ``train_classifier`` (noise, blur) apply to them as to the renders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from att3d.shapes.classifier import BACKGROUND, CLASSIFIER_SHAPES, IGNORE, object_labels
from att3d.shapes.render import RenderedViews

KINDS = ("empty", "ghost", "specks")
"""The kinds of background image, made in equal numbers (in this order) by :func:`background_images`."""
GHOST_OPACITY = (0.04, 0.2)
"""Range of a ghost's opacity over the background."""
SPECK_SIZE = (2, 6)
"""Range of a speck's side in pixels."""


def _empty(count: int, size: int, generator: torch.Generator) -> Tensor:
    tint = torch.rand(count, 3, 1, 1, generator=generator)
    strength = torch.rand(count, 1, 1, 1, generator=generator) * 0.08
    strength[torch.rand(count, generator=generator) < 0.5] = 0.0  # half are plain white
    return (1.0 - strength * (1.0 - tint)).expand(count, 3, size, size).clone()


def _ghosts(renders: Tensor, generator: torch.Generator) -> Tensor:
    low, high = GHOST_OPACITY
    opacity = low + (high - low) * torch.rand(renders.shape[0], 1, 1, 1, generator=generator)
    return 1.0 - opacity * (1.0 - renders)


def _specks(renders: Tensor, generator: torch.Generator, max_specks: int = 4) -> Tensor:
    count, _, size, _ = renders.shape
    out = torch.ones_like(renders)
    low, high = SPECK_SIZE
    for i in range(count):
        for _ in range(int(torch.randint(1, max_specks + 1, (1,), generator=generator))):
            side = int(torch.randint(low, high + 1, (1,), generator=generator))
            source = renders[int(torch.randint(0, count, (1,), generator=generator))]
            patch = F.interpolate(source[None], size=(side, side), mode="bilinear", antialias=True)[0]
            y, x = torch.randint(0, size - side + 1, (2,), generator=generator).tolist()
            region = out[i, :, y : y + side, x : x + side]
            out[i, :, y : y + side, x : x + side] = torch.minimum(region, patch)  # darker wins: overlap
    return out


def background_images(renders: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """``count`` background images ``[count, 3, S, S]`` in [0, 1] (see the module docstring).

    ``renders`` are object renders ``[N, 3, S, S]`` (float in [0, 1]) on a white background to make
    ghosts and specks from.
    """
    if renders.dim() != 4 or renders.shape[1] != 3 or renders.shape[0] == 0:
        raise ValueError(f"renders must be a non-empty [N, 3, S, S] batch, got {tuple(renders.shape)}")
    if count < len(KINDS):
        raise ValueError(f"count must be at least {len(KINDS)} (one of each kind), got {count}")
    size = renders.shape[-1]
    share = [count // len(KINDS) + (i < count % len(KINDS)) for i in range(len(KINDS))]
    pick = torch.randint(0, renders.shape[0], (share[1] + share[2],), generator=generator)
    picked = renders[pick].float()
    return torch.cat(
        [
            _empty(share[0], size, generator),
            _ghosts(picked[: share[1]], generator),
            _specks(picked[share[1] :], generator),
        ]
    ).clamp(0.0, 1.0)


def training_set(
    views: RenderedViews, background_fraction: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Images (uint8), shape labels and colour labels: ``views`` plus background images.

    The background images number ``background_fraction`` of the object renders (so about one class's
    worth when it is ``1 / 7``); their shape label is the background class and their colour label
    :data:`~att3d.shapes.classifier.IGNORE`.
    """
    if not 0.0 <= background_fraction <= 1.0:
        raise ValueError(f"background_fraction must be in [0, 1], got {background_fraction}")
    shapes, colors = object_labels([views.objects[i] for i in views.object_index.tolist()])
    images = views.images.float().cpu()
    count = round(background_fraction * len(views))
    if count >= len(KINDS):
        extra = background_images(images, count, generator)
        images = torch.cat([images, extra])
        shapes = torch.cat([shapes, torch.full((count,), CLASSIFIER_SHAPES.index(BACKGROUND))])
        colors = torch.cat([colors, torch.full((count,), IGNORE)])
    return (images * 255.0).round().to(torch.uint8), shapes, colors


__all__ = ["GHOST_OPACITY", "KINDS", "SPECK_SIZE", "background_images", "training_set"]
