"""Multiresolution hash encoding (Instant-NGP, Müller et al. 2022) in pure PyTorch.

Each level is a grid of resolution ``R_l = floor(base_resolution * growth_factor**l)``; a point's feature
at that level is the trilinear interpolation of the 8 surrounding vertex features. Vertex features live in
one parameter table per level (measured ~3x faster on CPU than one shared table): coarse levels whose
``(R_l + 1)^3`` vertices fit in the table are indexed densely (no collisions), finer levels through the
spatial hash of Instant-NGP (xor of coordinates times large primes, modulo the table size).

A table entry may hold ``bases`` independent feature vectors: the amortized field stores its K basis grids
side by side so one gather serves all of them (see ``att3d.field``).

The CPU layout (issue #16; ~2x the points/s of a row gather + ``bmm``, same values): points are handled
axis-major (``[3, N]``) and corners corner-major (``[8, N]``), so every elementwise op runs on contiguous
rows; indices are int32 wherever they provably fit (hash primes reduced modulo the power-of-two table size,
which keeps the masked low bits); each feature column is gathered with a 1-D ``index_select`` and the 8
corners are accumulated in place. :func:`reference_encode_levels` keeps the previous implementation as the
parity reference for tests and benchmarks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from att3d.config import EncodingConfig

# Instant-NGP's hash primes; the first is 1 so the x coordinate stays coherent in memory.
_PRIMES = (1, 2654435761, 805459861)
_INT32_END = 2**31


def level_resolutions(config: EncodingConfig) -> list[int]:
    """Grid resolution of every level, coarse to fine."""
    return [
        math.floor(config.base_resolution * config.growth_factor**level) for level in range(config.levels)
    ]


def level_table_sizes(config: EncodingConfig) -> list[int]:
    """Entries per level: the dense vertex count when it fits, else ``2**log2_table_size``."""
    cap = 2**config.log2_table_size
    return [min(cap, (r + 1) ** 3) for r in level_resolutions(config)]


def _index_dtype(largest: int) -> torch.dtype:
    """int32 when no intermediate index value can exceed ``largest`` < 2**31, else int64."""
    return torch.int32 if largest < _INT32_END else torch.int64


def _corner_plan(
    xt: Tensor, resolution: int, table_size: int, prompt: Tensor | None = None, rows: int = 1
) -> tuple[Tensor, Tensor]:
    """Indices and trilinear weights ``[8, N]`` (corner ``4 i + 2 j + k`` for steps ``i, j, k`` along
    x, y, z) of points ``xt [3, N]`` already clamped to ``[0, 1]``. With ``prompt [N]`` (values below
    ``rows``) the indices point into ``rows`` tables stacked: ``prompt * table_size`` is added."""
    scaled = xt * resolution
    base = scaled.floor().clamp_(0, resolution - 1)
    frac = scaled.sub_(base)
    pairs = torch.stack([1.0 - frac, frac], dim=1)  # [3, 2, N] weights per axis
    weights = (pairs[0, :, None, None] * pairs[1, None, :, None]) * pairs[2, None, None, :]

    side = resolution + 1
    dense = side**3 <= table_size
    if not dense and table_size & (table_size - 1):
        raise ValueError(f"a hashed level needs a power-of-two table size, got {table_size}")
    largest = max(rows * table_size, side**3 if dense else resolution * table_size)
    dtype = _index_dtype(largest)
    low = base.to(dtype)  # [3, N]
    ax, ay, az = (torch.stack([low[a], low[a] + 1]) for a in range(3))  # [2, N] vertex coordinates
    if dense:
        ay.mul_(side)
        az.mul_(side * side)
        if prompt is not None:
            ax.add_(prompt.to(dtype) * table_size)
        index = (ax[:, None] + ay[None])[:, :, None] + az[None, None]
    else:
        # (c * p) mod T == (c * (p mod T)) mod T for a power-of-two T, and xor commutes with the mask, so
        # every term is reduced to [0, T) on its own (int32 suffices while R * T < 2**31).
        mask = table_size - 1
        ax.bitwise_and_(mask)
        ay.mul_(_PRIMES[1] % table_size).bitwise_and_(mask)
        az.mul_(_PRIMES[2] % table_size).bitwise_and_(mask)
        if prompt is not None:
            # The hash is below T and the offset a multiple of T: or == add.
            ax.bitwise_or_(prompt.to(dtype) * table_size)
        index = (ax[:, None] ^ ay[None])[:, :, None] ^ az[None, None]
    return index.view(8, -1), weights.view(8, -1)


def interpolation_plan(x: Tensor, resolution: int, table_size: int) -> tuple[Tensor, Tensor]:
    """Corner indices and trilinear weights (``[8, N]`` each, corner-major) of points ``x`` ``[N, 3]`` in
    ``[0, 1]^3``; indices are int32 where they fit, else int64."""
    xt = x.t().clamp(0.0, 1.0).contiguous()
    return _corner_plan(xt, resolution, table_size)


def _interpolate(table: Tensor, index: Tensor, weight: Tensor, out: Tensor | None = None) -> Tensor:
    """``out[f, n] = sum_c weight[c, n] * table[index[c, n], f]`` (``[W, N]``, float32), no autograd."""
    n, width = index.shape[1], table.shape[1]
    if out is None:
        out = torch.empty(width, n, dtype=torch.float32, device=table.device)
    flat = index.view(-1)
    # Gather from contiguous columns; the copy costs a pass over the table, which pays once the points
    # read each entry about once.
    source = table.t().contiguous() if 8 * n >= table.shape[0] else table.t()
    for f in range(width):
        products = source[f].index_select(0, flat).view(8, n).float().mul_(weight)
        # Products first, then added corner by corner: bit-identical to the reference's bmm (a fused
        # multiply-add, or torch.sum's vectorized tail, would round differently).
        acc = torch.add(products[0], products[1], out=out[f])
        for c in range(2, 8):
            acc.add_(products[c])
    return out


class _Interpolate(torch.autograd.Function):
    """:func:`_interpolate` with gradients for the table and the weights (the points' path)."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(table, index, weight)
        return _interpolate(table, index, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        table, index, weight = ctx.saved_tensors
        grad_table = grad_weight = None
        flat = index.view(-1)
        if ctx.needs_input_grad[0]:
            # One 1-D scatter per feature into feature-major rows (a 2-D index_add_ with int32 indices
            # takes a ~9x slower path).
            columns = torch.zeros(table.shape[1], table.shape[0], dtype=table.dtype, device=table.device)
            for f in range(table.shape[1]):
                columns[f].index_add_(0, flat, (weight * grad[f]).view(-1).to(table.dtype))
            grad_table = columns.t()
        if ctx.needs_input_grad[2]:
            grad_weight = torch.zeros_like(weight)
            for f in range(table.shape[1]):
                corners = table[:, f].index_select(0, flat).view(weight.shape).float()
                grad_weight.addcmul_(corners, grad[f])
        return grad_table, None, grad_weight


def encode_levels(
    tables: list[Tensor],
    x: Tensor,
    resolutions: list[int],
    table_sizes: list[int],
    prompt: Tensor | None = None,
) -> Tensor:
    """Features ``[N, levels, W]`` (float32) of points ``x [N, 3]`` in ``[0, 1]^3``.

    ``tables[l]`` is ``[rows * T_l, W]``: ``rows`` grids stacked, point ``i`` reading grid ``prompt[i]``
    (grid 0 without ``prompt``). Tables may be stored in reduced precision; the sum is float32. The result
    is a transposed view (contiguous as ``[levels * W, N]``), which ``reshape(N, -1)`` keeps as a view and
    matmuls read directly.
    """
    n, width = x.shape[0], tables[0].shape[-1]
    xt = x.t().clamp(0.0, 1.0).contiguous()
    grad = torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in tables))
    out = None if grad else torch.empty(len(tables), width, n, dtype=torch.float32, device=x.device)
    levels = []
    for level, (resolution, size, table) in enumerate(zip(resolutions, table_sizes, tables, strict=True)):
        index, weight = _corner_plan(xt, resolution, size, prompt, table.shape[0] // size)
        if grad:
            levels.append(_Interpolate.apply(table, index, weight))
        else:
            _interpolate(table, index, weight, out[level])
    if grad:
        out = torch.stack(levels)
    return out.permute(2, 0, 1)


def interpolate_levels(
    tables: list[Tensor], x: Tensor, resolutions: list[int], table_sizes: list[int]
) -> Tensor:
    """Trilinear lookup of every level.

    ``tables[l]`` is ``[T_l, W]`` (one grid) or ``[P, T_l, W]`` (one grid per prompt, with ``x`` shaped
    ``[P, N, 3]``); points are in ``[0, 1]^3``. Returns ``[..., N, levels, W]``.
    """
    prompt = None
    if tables[0].dim() == 3:
        prompts, points = x.shape[0], x.shape[1]
        prompt = torch.arange(prompts, device=x.device).repeat_interleave(points)
        tables = [t.reshape(-1, t.shape[-1]) for t in tables]
    out = encode_levels(tables, x.reshape(-1, 3), resolutions, table_sizes, prompt)
    return out.reshape(*x.shape[:-1], len(tables), -1)


def reference_encode_levels(
    tables: list[Tensor],
    x: Tensor,
    resolutions: list[int],
    table_sizes: list[int],
    prompt: Tensor | None = None,
) -> Tensor:
    """:func:`encode_levels` as implemented before issue #16 (``[N, 8]`` int64 plans, a row gather and
    ``bmm``): the parity reference of the tests and the "old" side of ``scripts/bench_*.py``."""
    features = []
    for resolution, size, table in zip(resolutions, table_sizes, tables, strict=True):
        scaled = x.clamp(0.0, 1.0) * resolution
        base = scaled.floor().clamp_(0, resolution - 1)
        frac = scaled - base
        base = base.long()
        lo_hi = torch.stack([base, base + 1], dim=-1)  # [N, 3, 2]
        w = torch.stack([1.0 - frac, frac], dim=-1)
        weight = (w[:, 0, :, None, None] * w[:, 1, None, :, None] * w[:, 2, None, None, :]).reshape(-1, 8)
        cx, cy, cz = lo_hi[:, 0, :, None, None], lo_hi[:, 1, None, :, None], lo_hi[:, 2, None, None, :]
        side = resolution + 1
        if side**3 <= size:
            index = cx + side * (cy + side * cz)
        else:
            index = ((cx * _PRIMES[0]) ^ (cy * _PRIMES[1]) ^ (cz * _PRIMES[2])) & (size - 1)
        index = index.reshape(-1, 8)
        if prompt is not None:
            index = index + (prompt * size)[:, None]
        corners = table.index_select(0, index.reshape(-1)).view(*index.shape, -1)
        features.append(torch.bmm(weight[:, None, :], corners.float())[:, 0])
    return torch.stack(features, dim=1)


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
