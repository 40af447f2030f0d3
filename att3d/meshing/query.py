"""Field queries: a field's density and albedo at many points, in bounded chunks.

Two kinds of query, one per extraction path:

- a :data:`QueryFn` (points → density, albedo) of one field, queried on a regular grid
  (:func:`query_grid`) or at arbitrary points (:func:`query_albedo`) by the dense path; it works for the
  amortized generator, a per-prompt NeRF or an analytic ShapesWorld object alike;
- a :data:`BatchQuery` of ``P`` prompts of one amortized field at once, for the coarse-to-fine path:
  :class:`BatchFieldQuery` materializes the prompts' grids once and looks them up with the implementation
  named in its constructor (``encoding.backend``: ``torch``, ``tcnn`` or ``auto``), as nerfstudio's
  ``HashEncoding(implementation=...)`` does. :class:`TorchBatchQuery` is the reference;
  :class:`TcnnBatchQuery` runs the lookups in tiny-cuda-nn (imported on first use);
  :class:`KernelBatchQuery` runs them in the compiled CPU kernel of ``att3d.hashgrid_cpu`` (numba; same
  features bit for bit). ``auto`` picks tcnn where it runs, else the kernel on the CPU where it compiled,
  else PyTorch; ``numba`` may also be passed to the constructor.

tcnn places grid vertex ``j`` of a level at ``(j - 0.5) / scale`` and derives all level resolutions from
one geometric series, while ``att3d.encoding`` puts vertex ``i`` at ``i / R_l`` with
``R_l = floor(base * growth^l)``. One multi-level tcnn encoding therefore cannot hold our grids; one
single-level encoding per level can: base resolution ``R_l + 1`` and scale 1 give ``scale = R_l``, the
input is shifted by ``-0.5 / R_l``, and the dense-vs-hash rule, the dense index order and the hash
(coherent primes 1, 2654435761, 805459861, xor) are the same as ours, so the materialized tables are
copied in unchanged. The MLP head stays in PyTorch for both (:func:`evaluate_head`; tcnn's fused MLPs do
not fit it, see ``att3d.meshing.cuda_extensions.fused_mlp_unsupported_reason``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from att3d import encoding, hashgrid_cpu
from att3d.field import AmortizedField
from att3d.meshing.cuda_extensions import require, tcnn_status
from att3d.meshing.grid import grid_points, grid_shape

QueryFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""Points ``[N, 3]`` (world units, float32) → (density ``[N]`` ≥ 0, albedo ``[N, 3]`` in [0, 1])."""

BatchQuery = Callable[[Tensor, Sequence[int]], tuple[Tensor, Tensor]]
"""``query(points [N, 3], counts)`` → density ``[N]`` (float32), albedo ``[N, 3]``; the points are
``len(counts)`` contiguous runs, run ``p`` (``counts[p]`` points) belonging to prompt ``p`` of the batch."""

# --------------------------------------------------------------------------------------------------
# One field (dense path)
# --------------------------------------------------------------------------------------------------


def query_grid(
    fn: QueryFn,
    lo: Sequence[float],
    hi: Sequence[float],
    resolution: int | Sequence[int],
    chunk_points: int,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Density on the regular grid ``lo + index * (hi - lo) / (resolution - 1)`` (both ends included).

    Points are generated and queried ``chunk_points`` at a time, so besides the returned float32 array
    ``[nx, ny, nz]`` memory stays bounded at any resolution. ``resolution`` is one count for all axes or
    one per axis. Non-finite densities become 0 (NaN) or the float32 maximum (+inf).
    """
    shape = grid_shape(resolution)
    _check_chunk(chunk_points)
    _, ny, nz = shape
    total = math.prod(shape)
    density = np.empty(total, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, total, chunk_points):
            flat = torch.arange(start, min(start + chunk_points, total), device=device)
            index = torch.stack((flat // (ny * nz), (flat // nz) % ny, flat % nz), dim=-1)
            points = grid_points(lo, hi, shape, index)
            sigma, _ = call_field(fn, points)
            density[start : start + len(flat)] = sigma.cpu().numpy()
    return _finite(density).reshape(shape)


def query_albedo(
    fn: QueryFn, points: np.ndarray, chunk_points: int, device: torch.device | str = "cpu"
) -> np.ndarray:
    """Albedo ``[N, 3]`` (float32, clipped to [0, 1]) at arbitrary points ``[N, 3]``, queried in chunks."""
    _check_chunk(chunk_points)
    albedo = np.empty((len(points), 3), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, len(points), chunk_points):
            chunk = torch.as_tensor(points[start : start + chunk_points], dtype=torch.float32, device=device)
            _, rgb = call_field(fn, chunk)
            albedo[start : start + len(chunk)] = rgb.cpu().numpy()
    return np.clip(np.nan_to_num(albedo, nan=0.0), 0.0, 1.0)


def call_field(fn: QueryFn, points: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``fn`` and check its output shapes, so a wrong field fails here with a readable message."""
    density, albedo = fn(points)
    n = points.shape[0]
    if tuple(density.shape) != (n,):
        raise ValueError(f"query function returned density of shape {tuple(density.shape)}, expected ({n},)")
    if tuple(albedo.shape) != (n, 3):
        raise ValueError(f"query function returned albedo of shape {tuple(albedo.shape)}, expected ({n}, 3)")
    return density.float(), albedo.float()


def _finite(density: np.ndarray) -> np.ndarray:
    # Marching cubes interpolates between samples, so NaN/inf would put vertices at NaN.
    return np.nan_to_num(density, copy=False, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)


def _check_chunk(chunk_points: int) -> None:
    if chunk_points < 1:
        raise ValueError(f"chunk_points must be >= 1, got {chunk_points}")


# --------------------------------------------------------------------------------------------------
# A batch of prompts of one amortized field (coarse-to-fine path)
# --------------------------------------------------------------------------------------------------


def resolve_implementation(implementation: str, device: torch.device | str = "cpu") -> str:
    """``torch``, ``tcnn`` or ``numba`` for ``implementation`` on ``device``: ``auto`` is tcnn where it can
    run, else the numba CPU kernel on the CPU where it compiles (compiling it now), else torch."""
    if implementation == "torch":
        return "torch"
    if implementation == "tcnn":
        status = tcnn_status()
        if status is not None:
            raise RuntimeError(f"encoding.backend=tcnn but {status}")
        return "tcnn"
    if implementation == "numba":
        if torch.device(device).type != "cpu":
            raise RuntimeError(f"the numba hash-grid kernel runs on the CPU only, not {device}")
        status = hashgrid_cpu.status()
        if status is not None:
            raise RuntimeError(status)
        return "numba"
    if implementation == "auto":
        if tcnn_status() is None:
            return "tcnn"
        if torch.device(device).type == "cpu" and hashgrid_cpu.status() is None:
            return "numba"
        return "torch"
    raise ValueError(f"encoding.backend must be torch, tcnn, numba or auto, got {implementation!r}")


class BatchFieldQuery:
    """The :data:`BatchQuery` of ``field`` conditioned on ``embeddings [P, D]``.

    ``implementation`` (default: the field's ``encoding.backend``) picks the grid lookup here, once:
    :class:`TcnnBatchQuery` (one fused kernel per level and prompt), :class:`KernelBatchQuery` (the
    compiled CPU kernel) or :class:`TorchBatchQuery` (``compile`` applies to it).
    """

    def __init__(
        self,
        field: AmortizedField,
        embeddings: Tensor,
        dtype: torch.dtype,
        implementation: str | None = None,
        compile: bool = False,
    ) -> None:
        self.implementation = resolve_implementation(
            implementation or field.config.encoding.backend, embeddings.device
        )
        self._query: BatchQuery
        if self.implementation == "tcnn":
            self._query = TcnnBatchQuery(field, embeddings, dtype)
        elif self.implementation == "numba":
            self._query = KernelBatchQuery(field, embeddings, dtype)
        else:
            self._query = TorchBatchQuery(field, embeddings, dtype, compile=compile)

    def __call__(self, points: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
        return self._query(points, counts)


class TorchBatchQuery:
    """Pure-PyTorch query of ``P`` materialized prompt grids at once (one gather per level).

    Each prompt's grid sits in its own slice of one table per level, so a point's corner indices are offset
    by ``prompt * table_size`` (:func:`att3d.encoding.encode_levels`); the stored precision is read into
    float32 sums.
    """

    def __init__(self, field: AmortizedField, embeddings: Tensor, dtype: torch.dtype, compile: bool = False):
        if field.training:
            raise ValueError("the field must be in eval mode (training mode updates spectral-norm state)")
        self.field = field
        self.dtype = dtype
        with torch.no_grad():
            tables = field.mixed_tables(field.mixing_weights(embeddings))  # [P, T_l, F] per level
        self.tables = [t.reshape(-1, t.shape[-1]).to(dtype).contiguous() for t in tables]
        self.num_prompts = embeddings.shape[0]
        forward = self._forward
        if compile and embeddings.device.type == "cuda":
            forward = torch.compile(forward, dynamic=True)
        self._compiled = forward

    def _forward(self, points: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor]:
        config = self.field.config
        x = (points + config.bound) / (2.0 * config.bound)
        bases = self.field.bases
        # Looked up through the module so that benchmarks can swap in the reference implementation.
        features = encoding.encode_levels(self.tables, x, bases.resolutions, bases.table_sizes, prompt)
        return evaluate_head(self.field, features.reshape(len(points), -1), points, self.dtype)

    @torch.no_grad()
    def __call__(self, points: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
        if len(counts) != self.num_prompts:
            raise ValueError(f"got {len(counts)} point runs for {self.num_prompts} prompts")
        prompt = torch.repeat_interleave(
            torch.arange(len(counts), device=points.device), torch.as_tensor(counts, device=points.device)
        )
        return self._compiled(points, prompt)


class KernelBatchQuery(TorchBatchQuery):
    """:class:`TorchBatchQuery` with the grid lookup in ``att3d.hashgrid_cpu``'s compiled kernel (CPU,
    inference): the same features bit for bit, the same head."""

    def __init__(self, field: AmortizedField, embeddings: Tensor, dtype: torch.dtype) -> None:
        super().__init__(field, embeddings, dtype)
        bases = field.bases
        self.packed = hashgrid_cpu.PackedTables(self.tables, bases.resolutions, bases.table_sizes)

    def _forward(self, points: Tensor, prompt: Tensor) -> tuple[Tensor, Tensor]:
        bound = self.field.config.bound
        x = (points + bound) / (2.0 * bound)
        features = hashgrid_cpu.encode(self.packed, x, prompt if self.num_prompts > 1 else None)
        return evaluate_head(self.field, features.view(len(points), -1), points, self.dtype)


def evaluate_head(
    field: AmortizedField, features: Tensor, points: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The field's MLP head on grid ``features [N, L*F]``, in float32 out whatever ``dtype``.

    In reduced precision, autocast runs the head's matmuls in ``dtype``; the density blob, the density
    activation and the outputs stay float32 (the iso-level test needs them).
    """
    if dtype == torch.float32:
        if features.device.type == "cpu":  # cache-sized chunks, same values (FieldHead.infer)
            return field.head.infer(features.float(), points)
        return field.head(features.float(), points)
    with torch.autocast(points.device.type, dtype=dtype):
        density, albedo = field.head(features.float(), points)
    return density.float(), albedo.float()


def query_chunked(
    query: BatchQuery, points: Tensor, counts: Sequence[int], chunk: int
) -> tuple[Tensor, Tensor]:
    """``query`` over contiguous runs of points, at most ``chunk`` points per call."""
    counts = [int(c) for c in counts]
    if sum(counts) <= chunk:
        return query(points, counts)
    densities, albedos = [], []
    start, run, used = 0, 0, 0  # used: points of run ``run`` already queried
    while start < len(points):
        take, pieces = min(chunk, len(points) - start), []
        remaining = take
        while remaining > 0:
            n = min(counts[run] - used, remaining)
            pieces.append((run, n))
            remaining -= n
            used += n
            if used == counts[run]:
                run, used = run + 1, 0
        chunk_counts = [0] * len(counts)
        for r, n in pieces:
            chunk_counts[r] += n
        density, albedo = query(points[start : start + take], chunk_counts)
        densities.append(density)
        albedos.append(albedo)
        start += take
    return torch.cat(densities), torch.cat(albedos)


class TcnnLevel:
    """One level of an ``att3d.encoding`` grid as a single-level tcnn encoding (see module docstring)."""

    def __init__(self, resolution: int, table_size: int, features: int, log2_table_size: int) -> None:
        import tinycudann as tcnn

        self.resolution = resolution
        self.table_size = table_size
        self.features = features
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "Grid",
                "type": "Hash",
                "n_levels": 1,
                "n_features_per_level": features,
                "log2_hashmap_size": log2_table_size,
                "base_resolution": resolution + 1,
                "per_level_scale": 1.0,
                "interpolation": "Linear",
            },
            dtype=torch.float32,
        )
        # tcnn rounds a level's entries up to a multiple of 8; the extra entries are never read.
        if self.encoding.params.numel() < table_size * features:
            raise RuntimeError(
                f"tcnn level (resolution {resolution}) has {self.encoding.params.numel()} parameters, "
                f"fewer than the {table_size * features} of the att3d table: incompatible tcnn version"
            )

    @torch.no_grad()
    def load(self, table: Tensor) -> None:
        """Copy one prompt's table ``[T, F]`` into the encoding."""
        params = self.encoding.params.data
        params.zero_()
        params[: table.numel()] = table.reshape(-1).to(params.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        """Features ``[N, F]`` of points ``x [N, 3]`` in [0, 1]^3 (as ``att3d.encoding`` clamps them)."""
        return self.encoding(x.clamp(0.0, 1.0) - 0.5 / self.resolution).float()


class TcnnBatchQuery:
    """A :data:`BatchQuery` whose grid lookups run in tiny-cuda-nn.

    Each level's tcnn encoding is loaded with one prompt's materialized table at a time, so a batch costs
    ``prompts × levels`` fused kernels; the head runs in PyTorch in ``dtype``.
    """

    def __init__(self, field: AmortizedField, embeddings: Tensor, dtype: torch.dtype) -> None:
        require(tcnn_status())
        if field.training:
            raise ValueError("the field must be in eval mode (training mode updates spectral-norm state)")
        self.field = field
        self.dtype = dtype
        self.num_prompts = embeddings.shape[0]
        config = field.config.encoding
        with torch.no_grad():
            self.tables = field.mixed_tables(field.mixing_weights(embeddings))  # [P, T_l, F] per level
        self.levels = [
            TcnnLevel(r, s, config.features_per_level, config.log2_table_size)
            for r, s in zip(field.bases.resolutions, field.bases.table_sizes, strict=True)
        ]

    @torch.no_grad()
    def __call__(self, points: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
        if len(counts) != self.num_prompts:
            raise ValueError(f"got {len(counts)} point runs for {self.num_prompts} prompts")
        bound = self.field.config.bound
        x = (points + bound) / (2.0 * bound)
        features = torch.empty(len(points), len(self.levels), self.levels[0].features, device=points.device)
        start = 0
        for prompt, count in enumerate(counts):
            if count:
                for level, grid in enumerate(self.levels):
                    grid.load(self.tables[level][prompt])
                    features[start : start + count, level] = grid(x[start : start + count])
            start += count
        return evaluate_head(self.field, features.reshape(len(points), -1), points, self.dtype)
