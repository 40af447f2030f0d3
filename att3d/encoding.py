"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022) in pure PyTorch.

Each level is a grid of resolution ``R_l = floor(base_resolution * growth_factor**l)``; a point's feature
at that level is the trilinear interpolation of the 8 surrounding vertex features. Vertex features live in
one parameter table per level (measured ~3x faster on CPU than one shared table): coarse levels whose
``(R_l + 1)^3`` vertices fit in the table are indexed densely (no collisions), finer levels through the
spatial hash of Instant-NGP (xor of coordinates times large primes, modulo the table size).

A table entry may hold ``bases`` independent feature vectors: the amortized field stores its K basis grids
side by side so one gather serves all of them (see ``att3d.field``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from att3d.config import EncodingConfig

# Instant-NGP's hash primes; the first is 1 so the x coordinate stays coherent in memory.
_PRIMES = (1, 2654435761, 805459861)


def level_resolutions(config: EncodingConfig) -> list[int]:
    """Grid resolution of every level, coarse to fine."""
    return [
        math.floor(config.base_resolution * config.growth_factor**level) for level in range(config.levels)
    ]


def level_table_sizes(config: EncodingConfig) -> list[int]:
    """Entries per level: the dense vertex count when it fits, else ``2**log2_table_size``."""
    cap = 2**config.log2_table_size
    return [min(cap, (r + 1) ** 3) for r in level_resolutions(config)]


def interpolation_plan(x: Tensor, resolution: int, table_size: int) -> tuple[Tensor, Tensor]:
    """Corner indices and trilinear weights (``[N, 8]`` each) of points ``x`` ``[N, 3]`` in ``[0, 1]^3``.

    Works per axis on the two neighbouring vertex coordinates and combines the axes by broadcasting, which
    is several times cheaper than materializing all 8 corners x 3 axes.
    """
    scaled = x.clamp(0.0, 1.0) * resolution
    base = scaled.floor().clamp_(0, resolution - 1)
    frac = scaled - base
    base = base.long()
    lo_hi = torch.stack([base, base + 1], dim=-1)  # [N, 3, 2] vertex coordinates per axis
    w = torch.stack([1.0 - frac, frac], dim=-1)  # [N, 3, 2] weights per axis
    weights = w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]
    cx, cy, cz = lo_hi[:, 0, :, None, None], lo_hi[:, 1, None, :, None], lo_hi[:, 2, None, None, :]
    side = resolution + 1
    if side**3 <= table_size:
        index = cx + side * (cy + side * cz)
    else:
        # Table sizes are powers of two, so the modulo is a mask.
        index = ((cx * _PRIMES[0]) ^ (cy * _PRIMES[1]) ^ (cz * _PRIMES[2])) & (table_size - 1)
    return index.reshape(-1, 8), weights.reshape(-1, 8)


def interpolate_levels(
    tables: list[Tensor], x: Tensor, resolutions: list[int], table_sizes: list[int]
) -> Tensor:
    """Trilinear lookup of every level.

    ``tables[l]`` is ``[T_l, W]`` (one grid) or ``[P, T_l, W]`` (one grid per prompt, with ``x`` shaped
    ``[P, N, 3]``); points are in ``[0, 1]^3``. Returns ``[..., N, levels, W]``.
    """
    batched = tables[0].dim() == 3
    flat_x = x.reshape(-1, 3)
    features = []
    for resolution, size, table in zip(resolutions, table_sizes, tables, strict=True):
        index, weight = interpolation_plan(flat_x, resolution, size)
        if batched:
            # Offset each prompt's indices into its own slice of the stacked tables: one gather for all.
            prompts, points = x.shape[0], x.shape[1]
            offsets = (torch.arange(prompts, device=x.device) * size).repeat_interleave(points)
            index = index + offsets[:, None]
            table = table.reshape(-1, table.shape[-1])
        corner_features = table.index_select(0, index.reshape(-1)).view(index.shape[0], 8, -1)
        features.append(torch.bmm(weight[:, None, :], corner_features)[:, 0])
    out = torch.stack(features, dim=1)
    return out.view(*x.shape[:-1], len(tables), -1)


class HashGridEncoding(nn.Module):
    """Pure-PyTorch multiresolution hash grid holding ``bases`` feature vectors per entry.

    ``forward(x)`` maps points in ``[0, 1]^3`` (``[N, 3]``) to features ``[N, levels, bases * F]``.
    """

    def __init__(self, config: EncodingConfig, bases: int = 1, init_scale: float | None = None) -> None:
        super().__init__()
        self.config = config
        self.bases = bases
        self.resolutions = level_resolutions(config)
        self.table_sizes = level_table_sizes(config)
        scale = config.init_scale if init_scale is None else init_scale
        width = bases * config.features_per_level
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(size, width).uniform_(-scale, scale)) for size in self.table_sizes
        )

    @property
    def levels(self) -> int:
        return self.config.levels

    def forward(self, x: Tensor) -> Tensor:
        return interpolate_levels(list(self.tables), x, self.resolutions, self.table_sizes)
