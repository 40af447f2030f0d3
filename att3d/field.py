"""The amortized text-conditioned field (ATT3D).

The mapping network is a two-layer hypernetwork ``c -> SN-Linear(+bias) -> SiLU -> SN-Linear(no bias) -> w``
whose output ``w`` is the whole hash-grid parameter vector. Because the last layer has no bias,
``w(c) = W2 v(c)`` with ``v(c) = SiLU(W1 c + b1)`` in R^K: the grid is a mixture of K *basis grids* (the
columns of W2). We store those columns as a hash grid with K feature vectors per entry:

- training (many prompts, few points each): interpolate the K bases once, contract with ``v(c)``;
- inference (one prompt, millions of points): :meth:`AmortizedField.materialize` computes ``W2 v(c)``
  once and returns a plain single-grid :class:`PromptField`.

Both give the same values (tested). Spectral normalization (the paper reports divergence without it) is
applied to both layers; for W2, stored as per-level tables, the largest singular value is tracked by
power iteration exactly as ``torch.nn.utils.spectral_norm`` does for a matrix. ``mixing_gain`` bounds the
Lipschitz bound of the text-to-grid map. The MLP head that decodes grid features into density and albedo
is shared by all prompts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from att3d.config import FieldConfig
from att3d.encoding import HashGridEncoding, interpolate_levels

INFER_CHUNK = 16384
"""Points per chunk of :meth:`FieldHead.infer` (4k-64k measured alike on a 2-core Ice Lake; the whole
array at once is 2x slower)."""


class _TruncExp(torch.autograd.Function):
    """exp with a clamped argument in the backward pass, so large densities cannot blow up gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.clamp(max=15.0).exp_()

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(-15.0, 15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


class FieldHead(nn.Module):
    """Grid features -> (density, albedo). Shared by every prompt."""

    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        in_dim = config.encoding.levels * config.encoding.features_per_level
        layers: list[nn.Module] = []
        for _ in range(config.hidden_layers):
            layers += [nn.Linear(in_dim, config.hidden_dim), nn.SiLU()]
            in_dim = config.hidden_dim
        layers.append(nn.Linear(in_dim, 4))
        self.mlp = nn.Sequential(*layers)

    def blob(self, points: Tensor) -> Tensor:
        """Density-blob bias ``λ (1 - |x| / r)``: keeps the scene from collapsing to empty early on."""
        return self.config.blob_density * (1.0 - points.norm(dim=-1) / self.config.blob_radius)

    def forward(self, features: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """``features [..., L*F]``, ``points [..., 3]`` -> density ``[...]``, albedo ``[..., 3]``."""
        # Without autograd the activations overwrite their inputs (same values, no fresh buffers); with
        # it, SiLU's backward needs its input, so they stay out of place.
        inplace = not torch.is_grad_enabled()
        raw = features
        for layer in self.mlp:
            raw = F.silu(raw, inplace=True) if inplace and isinstance(layer, nn.SiLU) else layer(raw)
        density_raw = raw[..., 0] + self.config.density_bias
        density_raw = density_raw.add_(self.blob(points)) if inplace else density_raw + self.blob(points)
        if self.config.density_activation == "trunc_exp":
            density = trunc_exp(density_raw)
        else:
            density = F.softplus(density_raw)
        return density, torch.sigmoid(raw[..., 1:])

    @torch.no_grad()
    def infer(self, features: Tensor, points: Tensor, chunk: int = INFER_CHUNK) -> tuple[Tensor, Tensor]:
        """:meth:`forward` for inference on many points (float32, no autograd), ``chunk`` points at a time.

        Same values (each output row is the same float32 operations on the same inputs; tested); faster on
        the CPU because a chunk's activations (``chunk x hidden_dim`` floats) stay in the L2 cache and the
        same buffers serve every chunk, instead of full ``[N, hidden_dim]`` arrays written to and read back
        from memory (2x faster for the 478k points of a 128³ mesh on one core).
        """
        linears = [layer for layer in self.mlp if isinstance(layer, nn.Linear)]
        if len(linears) * 2 - 1 != len(self.mlp) or features.dtype != torch.float32:
            return self(features, points)  # not the Linear/SiLU stack this loop assumes
        n = features.shape[0]
        raw = torch.empty(n, 4, dtype=torch.float32, device=features.device)
        buffers = [
            torch.empty(min(chunk, n), layer.out_features, dtype=torch.float32, device=features.device)
            for layer in linears[:-1]
        ]
        weights = [layer.weight.t() for layer in linears]
        for start in range(0, n, chunk):
            # A short last chunk overlaps the one before instead: every matmul then has ``chunk`` rows
            # (BLAS may round a row differently in a few-row product, e.g. one row is a matrix-vector).
            start = max(0, min(start, n - chunk))
            end = min(start + chunk, n)
            h = features[start:end]
            for layer, weight, buffer in zip(linears[:-1], weights, buffers, strict=False):
                h = torch.addmm(layer.bias, h, weight, out=buffer[: end - start])
                F.silu(h, inplace=True)
            torch.addmm(linears[-1].bias, h, weights[-1], out=raw[start:end])
        # A contiguous copy, as in forward: softplus may round a strided input differently.
        density_raw = (raw[:, 0] + self.config.density_bias).add_(self.blob(points))
        density = (
            trunc_exp(density_raw)
            if self.config.density_activation == "trunc_exp"
            else F.softplus(density_raw)
        )
        return density, torch.sigmoid(raw[:, 1:])


def _to_unit_cube(points: Tensor, bound: float) -> Tensor:
    return (points + bound) / (2.0 * bound)


class AmortizedField(nn.Module):
    """Text embedding + 3D points -> density and albedo, for a batch of prompts at once."""

    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        self.config = config
        k = config.num_bases
        self.mapping = spectral_norm(nn.Linear(config.text_dim, k, bias=True))
        # The basis grids are W2. Spectral normalization makes their scale irrelevant, so they start at
        # unit scale where Adam's step size is meaningful relative to the weights.
        self.bases = HashGridEncoding(config.encoding, bases=k, init_scale=1.0)
        self.head = FieldHead(config)
        self.register_buffer("_sn_u", F.normalize(torch.randn(k), dim=0))
        with torch.no_grad():
            for _ in range(20):
                self._power_iteration()

    # ---- mapping network -------------------------------------------------------------------------

    def _basis_tables(self) -> list[Tensor]:
        """The columns of W2 per level, viewed as ``[T_l, K, F]``."""
        k, f = self.config.num_bases, self.config.encoding.features_per_level
        return [table.view(-1, k, f) for table in self.bases.tables]

    def _power_iteration(self) -> None:
        """One step of power iteration for the top right-singular vector of W2 (no gradient)."""
        tables = self._basis_tables()
        w_u = [torch.einsum("tkf,k->tf", table, self._sn_u) for table in tables]  # W2 u
        wt_w_u = sum(torch.einsum("tkf,tf->k", table, w) for table, w in zip(tables, w_u, strict=True))
        self._sn_u.copy_(F.normalize(wt_w_u, dim=0))

    def output_scale(self) -> Tensor:
        """``mixing_gain * sqrt(n) / σ_max(W2)`` for W2 with ``n`` rows (σ_max tracked, differentiable).

        The ``sqrt(n)`` keeps the bound meaningful per grid entry: a unit ``v`` gives grid entries of RMS at
        most ``mixing_gain``, whatever the table sizes. (A bound on the whole parameter vector, without it,
        left entries ~1e-3 and prompts indistinguishable to the MLP head.)
        """
        if self.training:
            with torch.no_grad():
                self._power_iteration()
        # Clone: the next training forward updates the tracked vector in place, and a backward through a
        # graph that still holds this one (several field calls per step) must see the value used here.
        u = self._sn_u.clone()
        products = [torch.einsum("tkf,k->tf", t, u).reshape(-1) for t in self._basis_tables()]
        sigma = torch.cat(products).norm()
        return self.config.mixing_gain * math.sqrt(sum(p.numel() for p in products)) / sigma

    def mixing_weights(self, embeddings: Tensor) -> Tensor:
        """``v(c)`` ``[P, K]`` scaled by the output normalization: the basis-grid weights per prompt."""
        return F.silu(self.mapping(embeddings)) * self.output_scale()

    # ---- evaluation ------------------------------------------------------------------------------

    def mixed_tables(self, weights: Tensor) -> list[Tensor]:
        """``W2 v`` per level for mixing weights ``[P, K]``: one plain grid ``[P, T_l, F]`` per prompt."""
        k, f = self.config.num_bases, self.config.encoding.features_per_level
        return [torch.einsum("tkf,pk->ptf", table.view(-1, k, f), weights) for table in self.bases.tables]

    def forward(self, points: Tensor, embeddings: Tensor) -> tuple[Tensor, Tensor]:
        """``points [P, N, 3]`` (world units) for ``P`` prompts with ``embeddings [P, D]``
        -> density ``[P, N]``, albedo ``[P, N, 3]``."""
        p, n, _ = points.shape
        weights = self.mixing_weights(embeddings)  # [P, K]
        x = _to_unit_cube(points, self.config.bound)
        if n * 8 >= max(self.bases.table_sizes):
            # Many points per prompt (rendering): mixing the tables first makes every gather K times
            # narrower, and the mixing itself costs only one pass over the tables.
            features = interpolate_levels(
                self.mixed_tables(weights), x, self.bases.resolutions, self.bases.table_sizes
            )
        else:
            # Few points per prompt: interpolate the K bases once, then contract with v(c).
            levels, k = self.config.encoding.levels, self.config.num_bases
            basis_features = self.bases(x.reshape(p * n, 3)).view(p, n, levels, k, -1)
            features = torch.einsum("pnlkf,pk->pnlf", basis_features, weights)
        return self.head(features.reshape(p, n, -1), points)

    @torch.no_grad()
    def materialize(self, embedding: Tensor) -> PromptField:
        """A plain field for one prompt (``embedding [D]``): the basis grids mixed once."""
        was_training = self.training
        self.eval()
        tables = [t[0] for t in self.mixed_tables(self.mixing_weights(embedding[None]))]
        self.train(was_training)
        return PromptField(self.config, tables, self.head)


class PromptField(nn.Module):
    """A single-prompt field: one hash grid plus the shared head. ``forward(points [N, 3])``."""

    def __init__(self, config: FieldConfig, tables: list[Tensor], head: FieldHead) -> None:
        super().__init__()
        self.config = config
        self.grid = HashGridEncoding(config.encoding, bases=1)
        for param, table in zip(self.grid.tables, tables, strict=True):
            param.data = table.detach().clone()
        self.grid.requires_grad_(False)
        self.head = head

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        x = _to_unit_cube(points, self.config.bound)
        features = self.grid(x).reshape(points.shape[0], -1)
        return self.head(features, points)
