"""Contact sheets: grids of ShapesWorld renders and prior samples, saved as PNG.

- :func:`turntable_sheet`: ground-truth renders of one object, one row per elevation, azimuths across;
- :func:`sample_sheet`: prior samples of a prompt at the same views, each row followed by the GT row;
- :func:`labelled_grid`: the building block (the prior's training script uses it for its sheet of every
  object); ``att3d.images.save_png`` writes the sheets.

Cells are upscaled with nearest-neighbour so 32-pixel images stay crisp when viewed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from att3d.cameras import Cameras, make_cameras
from att3d.shapes.world import ShapeObject

if TYPE_CHECKING:
    from att3d.priors.shapes import ShapesPrior

DEFAULT_ELEVATIONS = (15.0, 45.0)
"""Rows of the turntable sheets (degrees)."""


def to_uint8(images: Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` floats in [0, 1] -> ``[N, H, W, 3]`` uint8."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got shape {tuple(images.shape)}")
    array = (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return array.permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: Tensor, columns: int, scale: int = 1, pad: int = 2) -> np.ndarray:
    """Tile ``[N, 3, H, W]`` images row-major into one ``[rows·(H+pad)+pad, ..., 3]`` uint8 image.

    Padding and empty cells are mid-gray so the white backgrounds of neighbouring cells stay separate.
    """
    if columns < 1 or scale < 1 or pad < 0:
        raise ValueError(f"need columns >= 1, scale >= 1, pad >= 0; got {columns}, {scale}, {pad}")
    tiles = to_uint8(images)
    if scale > 1:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
    n, h, w, _ = tiles.shape
    rows = max(1, -(-n // columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = tiles[i]
    return grid


def labelled_grid(
    rows: Sequence[Tensor], labels: Sequence[str], scale: int = 2, pad: int = 2, label_width: int = 150
) -> Image.Image:
    """One row of images per entry of ``rows`` (each ``[V, 3, H, W]``), its label written on the left."""
    if len(rows) != len(labels):
        raise ValueError(f"got {len(rows)} rows but {len(labels)} labels")
    if not rows:
        raise ValueError("labelled_grid needs at least one row")
    columns = max(r.shape[0] for r in rows)
    strips = [image_grid(r, columns, scale, pad) for r in rows]
    height = strips[0].shape[0] - pad  # rows share the padding line between them
    sheet = Image.new("RGB", (label_width + strips[0].shape[1], pad + len(rows) * height), (128, 128, 128))
    draw = ImageDraw.Draw(sheet)
    for i, (strip, label) in enumerate(zip(strips, labels, strict=True)):
        top = i * height
        sheet.paste(Image.fromarray(strip), (label_width, top))
        draw.text((4, top + height // 2 - 6), label, fill=(255, 255, 255))
    return sheet


def turntable_cameras(views: int, elevations: Sequence[float] = DEFAULT_ELEVATIONS) -> Cameras:
    """``len(elevations) × views`` cameras, elevation-major, azimuths evenly spaced from 0."""
    if views < 1 or not elevations:
        raise ValueError(f"need views >= 1 and at least one elevation, got {views} and {list(elevations)}")
    azimuth = [360.0 * i / views for i in range(views)] * len(elevations)
    elevation = [e for e in elevations for _ in range(views)]
    return make_cameras(elevation, azimuth)


def render_views(obj: ShapeObject, cameras: Cameras, size: int) -> Tensor:
    """Exact renders ``[B, 3, size, size]`` of one object from every camera."""
    from att3d.shapes.render import render_objects

    return render_objects([obj] * len(cameras), cameras, size)


def turntable_sheet(
    obj: ShapeObject, views: int = 8, elevations: Sequence[float] = DEFAULT_ELEVATIONS, size: int = 64
) -> Image.Image:
    """Ground-truth renders of ``obj``: one row per elevation, ``views`` azimuths across."""
    cameras = turntable_cameras(views, elevations)
    images = render_views(obj, cameras, size)
    rows = list(images.split(views))
    return labelled_grid(rows, [f"{obj.canonical_prompt} el {e:g}" for e in elevations], scale=1)


def sample_sheet(
    prior: ShapesPrior,
    prompt: str,
    views: int = 8,
    elevations: Sequence[float] = DEFAULT_ELEVATIONS,
    steps: int = 50,
    guidance_scale: float = 3.0,
    seed: int = 0,
    ground_truth: ShapeObject | None = None,
) -> Image.Image:
    """Prior samples of ``prompt`` at turntable views; with ``ground_truth``, each row is followed by GT."""
    cameras = turntable_cameras(views, elevations)
    generator = torch.Generator().manual_seed(seed)
    samples = prior.sample([prompt] * len(cameras), cameras, steps, guidance_scale, generator).cpu()
    rows, labels = [], []
    truth = render_views(ground_truth, cameras, prior.image_size) if ground_truth is not None else None
    for i, elevation in enumerate(elevations):
        rows.append(samples[i * views : (i + 1) * views])
        labels.append(f"sample el {elevation:g}")
        if truth is not None:
            rows.append(truth[i * views : (i + 1) * views].cpu())
            labels.append(f"truth el {elevation:g}")
    return labelled_grid(rows, labels, scale=2, label_width=110)


__all__ = [
    "DEFAULT_ELEVATIONS",
    "image_grid",
    "labelled_grid",
    "render_views",
    "sample_sheet",
    "to_uint8",
    "turntable_cameras",
    "turntable_sheet",
]
