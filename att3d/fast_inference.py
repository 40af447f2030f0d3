"""Batched inference on the device: prompts → meshes, with only the final meshes crossing to the host.

:func:`att3d.mesh.extract_mesh` meshes one field at a time and moves every grid to the host. Here a batch of
``P`` embeddings goes through the same grids in a handful of device passes:

1. **materialize once**: the mixing weights ``v(c)`` and the per-prompt grids ``W2 v(c)``
   (:meth:`AmortizedField.mixed_tables`) for the whole batch, stored in the query precision;
2. **coarse pass**: the ``coarse_resolution^3`` grid over the scene box, refined as in 3. (``coarse_block``),
   for all prompts at once; per prompt the occupied box and the fine grid, as ``extract_mesh`` chooses them;
3. **coarse-to-fine**: every ``block``-th fine sample (the block corners) is queried first; blocks whose
   corners lie on both sides of the iso-level, grown by ``dilation`` blocks, are *active*, and only the
   fine samples of active blocks are queried. The other samples take the trilinear interpolation of their
   block's corners, which stays on the corners' side of the level, so no surface appears there. A surface
   can only be missed where a whole feature fits between the corners of inactive blocks (thinner than a
   block and away from any active block); ``block=1`` queries the full fine grid, ``coarse_block=1`` the
   full coarse grid.
4. **one marching cubes for the batch**: the fine volumes, each padded with empty space as ``extract_mesh``
   does, are stacked along x into one grid (the empty layers keep them apart) and meshed with
   :func:`att3d.marching_cubes.marching_cubes`; vertex albedo (one query) and vertex normals are computed
   on the device;
5. floaters are dropped on the device (``min_component_fraction``, the same rule as ``extract_mesh``,
   with a union-find over the vertex graph); on the **host** the meshes are split per prompt and wrapped
   as coloured ``trimesh.Trimesh`` objects.

With ``dtype="float32"`` and ``block=coarse_block=1`` the surfaces equal those of ``extract_mesh`` with
``marching_cubes="torch"`` (tested); with blocks of 4 they are equal on smooth fields (tested, and on all 56
ShapesWorld prompts with the shipped model: ``scripts/compare_grid_query.py``). Reduced precision
(``bfloat16``/``float16``) stores the mixed grids in half the bytes and runs the MLP head under autocast;
accumulation, the density activation and the iso-level test stay in float32 (see docs/BENCHMARKS.md for
the measured IoU change). ``torch.compile`` of the query is optional and applies on CUDA only (on the
CPU it was measured 4x slower).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from torch import Tensor

from att3d.config import MeshConfig
from att3d.encoding import interpolation_plan, resolve_backend
from att3d.field import AmortizedField
from att3d.marching_cubes import marching_cubes
from att3d.mesh import (
    NoSurfaceError,
    check_mesh_config,
    extract_mesh,
    fine_grid,
    no_surface_error,
    occupied_box,
)

BatchQuery = Callable[[Tensor, Sequence[int]], tuple[Tensor, Tensor]]
"""``query(points [N, 3], counts)`` → density ``[N]`` (float32), albedo ``[N, 3]``; the points are
``len(counts)`` contiguous runs, run ``p`` (``counts[p]`` points) belonging to prompt ``p`` of the batch."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FastInferenceOptions:
    """How :class:`FastMesher` trades accuracy for speed (the grids themselves come from ``MeshConfig``)."""

    dtype: str = "auto"
    """Precision of the mixed grids and the MLP head: ``float32``, ``bfloat16``, ``float16`` or ``auto``
    (float16 on CUDA, float32 on the CPU)."""
    block: int = 4
    """Side of a coarse-to-fine block in fine samples (1: query every fine sample)."""
    coarse_block: int = 4
    """The same for the coarse pass over the scene box, in coarse samples (1: query all
    ``coarse_resolution^3`` of them, as ``extract_mesh`` does)."""
    dilation: int = 0
    """Blocks around each straddling block queried from the start (the region also grows on its own
    wherever the surface leaves it)."""
    chunk_points: int = 1 << 21
    """Points per query call (bounds the memory of the interpolation temporaries)."""
    max_stack_samples: int = 1 << 28
    """Most grid samples meshed in one marching-cubes call; larger batches are meshed in groups."""
    compile: bool = False
    """``torch.compile`` the field query (CUDA only; recompiles for new shapes, so warm it up)."""

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        return DTYPES[self.dtype]

    def check(self) -> None:
        problems = []
        if self.dtype != "auto" and self.dtype not in DTYPES:
            problems.append(f"dtype must be auto or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.block < 1:
            problems.append(f"block must be >= 1, got {self.block}")
        if self.coarse_block < 1:
            problems.append(f"coarse_block must be >= 1, got {self.coarse_block}")
        if self.dilation < 0:
            problems.append(f"dilation must be >= 0, got {self.dilation}")
        if self.chunk_points < 1:
            problems.append(f"chunk_points must be >= 1, got {self.chunk_points}")
        if self.max_stack_samples < 1:
            problems.append(f"max_stack_samples must be >= 1, got {self.max_stack_samples}")
        if problems:
            raise ValueError("; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Batched field queries
# --------------------------------------------------------------------------------------------------


class TorchBatchQuery:
    """Pure-PyTorch query of ``P`` materialized prompt grids at once (one gather per level).

    Each prompt's grid sits in its own slice of one table per level, so a point's corner indices are offset
    by ``prompt * table_size``, as in :func:`att3d.encoding.interpolate_levels` for batched tables.
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
        features = []
        for resolution, size, table in zip(
            self.field.bases.resolutions, self.field.bases.table_sizes, self.tables, strict=True
        ):
            index, weight = interpolation_plan(x, resolution, size)
            index = index + (prompt * size)[:, None]
            corners = table.index_select(0, index.reshape(-1)).view(*index.shape, -1)
            # Accumulate in float32 whatever the storage precision (bmm: ~3x faster than mul + sum on CPU).
            features.append(torch.bmm(weight[:, None, :], corners.float())[:, 0])
        return evaluate_head(self.field, torch.cat(features, dim=-1), points, self.dtype)

    @torch.no_grad()
    def __call__(self, points: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
        if len(counts) != self.num_prompts:
            raise ValueError(f"got {len(counts)} point runs for {self.num_prompts} prompts")
        prompt = torch.repeat_interleave(
            torch.arange(len(counts), device=points.device), torch.as_tensor(counts, device=points.device)
        )
        return self._compiled(points, prompt)


def evaluate_head(
    field: AmortizedField, features: Tensor, points: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The field's MLP head on grid ``features [N, L*F]``, in float32 out whatever ``dtype``.

    In reduced precision, autocast runs the head's matmuls in ``dtype``; the density blob, the density
    activation and the outputs stay float32 (the iso-level test needs them).
    """
    if dtype == torch.float32:
        return field.head(features.float(), points)
    with torch.autocast(points.device.type, dtype=dtype):
        density, albedo = field.head(features.float(), points)
    return density.float(), albedo.float()


def build_query(
    field: AmortizedField, embeddings: Tensor, dtype: torch.dtype, compile: bool = False
) -> BatchQuery:
    """The fastest available query for ``field`` conditioned on ``embeddings [P, D]``.

    ``encoding.backend`` decides: tiny-cuda-nn (one fused kernel per level and prompt, see
    ``att3d.backends``) when it resolves to ``tcnn``, else :class:`TorchBatchQuery`.
    """
    if resolve_backend(field.config.encoding) == "tcnn":
        from att3d.backends import TcnnBatchQuery

        return TcnnBatchQuery(field, embeddings, dtype)
    return TorchBatchQuery(field, embeddings, dtype, compile=compile)


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


# --------------------------------------------------------------------------------------------------
# Coarse-to-fine grids
# --------------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """One prompt's sample grid (the coarse one over the scene box, or the fine one ``extract_mesh`` would
    use) and its coarse-to-fine blocks."""

    shape: tuple[int, int, int]
    lo: np.ndarray
    """World coordinates of the first sample."""
    voxel: float
    corners: list[Tensor]
    """Sample indices of the block corners along each axis (0, block, 2 block, ..., n - 1)."""

    def points(self, index: Tensor) -> Tensor:
        """World coordinates of samples ``index [N, 3]``."""
        return _grid_points(self.lo, self.lo + (np.array(self.shape) - 1) * self.voxel, self.shape, index)


def _grid_points(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int], index: Tensor) -> Tensor:
    """Sample ``index [N, 3]`` of the grid from ``lo`` to ``hi``, rounded as ``att3d.mesh.query_grid`` does
    (so both paths query bit-identical points)."""
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=index.device)
    hi_t = torch.as_tensor(hi, dtype=torch.float32, device=index.device)
    step = (hi_t - lo_t) / (torch.as_tensor(shape, dtype=torch.float32, device=index.device) - 1)
    return lo_t + index.to(torch.float32) * step


def _block_corners(n: int, block: int, device: torch.device) -> Tensor:
    corners = list(range(0, n, block))
    if corners[-1] != n - 1:
        corners.append(n - 1)
    return torch.tensor(corners, device=device)


def _product_index(axes: Sequence[Tensor]) -> Tensor:
    """All index triples of the product of three index vectors ``[len0 * len1 * len2, 3]`` (row-major)."""
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _axis_blocks(corners: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per fine sample along one axis: its block (``left``), the block before it when the sample is a
    shared corner (``right``, else ``left``), and its position ``t`` in ``left``."""
    samples = torch.arange(n, device=corners.device)
    left = (torch.searchsorted(corners, samples, right=True) - 1).clamp(max=len(corners) - 2)
    at_corner = corners[left] == samples
    right = torch.where(at_corner & (left > 0), left - 1, left)
    t = (samples - corners[left]).float() / (corners[left + 1] - corners[left]).float()
    return left, right, t


def _active_blocks(corner_values: Tensor, level: float, dilation: int) -> Tensor:
    """Blocks whose 8 corners are not all on one side of ``level``, grown by ``dilation`` blocks."""
    inside = (corner_values > level).float()[None, None]
    most = F.max_pool3d(inside, 2, stride=1)
    least = -F.max_pool3d(-inside, 2, stride=1)
    active = (most != least).float()
    if dilation > 0:
        active = F.max_pool3d(active, 2 * dilation + 1, stride=1, padding=dilation)
    return active[0, 0] > 0


def _upsample(corner_values: Tensor, blocks: Sequence[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """Trilinear interpolation of the block-corner values at every fine sample (separable, axis by axis)."""
    volume = corner_values
    for axis, (left, _, t) in enumerate(blocks):
        shape = [1, 1, 1]
        shape[axis] = -1
        t = t.view(shape)
        volume = volume.index_select(axis, left) * (1 - t) + volume.index_select(axis, left + 1) * t
    return volume


_MAX_ROUNDS = 16
"""Rounds of growing the queried region (one or two are typical; the last ones only verify)."""


@dataclass
class _Refinement:
    """One prompt's coarse-to-fine state: active blocks, queried samples and the current volume."""

    blocks: list[tuple[Tensor, Tensor, Tensor]]
    """Per axis: ``_axis_blocks`` of the fine samples."""
    active: Tensor
    """Active blocks ``[bx, by, bz]``."""
    queried: Tensor
    """Fine samples holding a queried value ``[nx, ny, nz]``."""
    volume: Tensor
    """Queried values where ``queried``, the block corners' trilinear interpolation elsewhere."""

    def samples(self) -> Tensor:
        """Fine samples of active blocks (a sample on a block boundary belongs to every block it touches)."""
        mask = torch.zeros_like(self.queried)
        for pick in range(8):
            ix, iy, iz = (self.blocks[axis][pick >> axis & 1] for axis in range(3))
            mask |= self.active[ix[:, None, None], iy[None, :, None], iz[None, None, :]]
        return mask

    def update(self, new: Tensor, values: Tensor, level: float) -> None:
        """Store queried ``values`` at the ``new`` samples; activate the blocks the surface leaks into."""
        self.volume[new] = torch.nan_to_num(values, nan=0.0, posinf=torch.finfo(torch.float32).max)
        self.queried |= new
        inside = self.volume > level
        leaks = torch.zeros_like(self.queried)
        for axis in range(3):
            n = inside.shape[axis] - 1
            a, b = inside.narrow(axis, 0, n), inside.narrow(axis, 1, n)
            qa, qb = self.queried.narrow(axis, 0, n), self.queried.narrow(axis, 1, n)
            crossing = a != b
            # An interpolated sample next to a queried one on the other side of the level: the true
            # surface may continue into its blocks.
            leaks.narrow(axis, 0, n).logical_or_(crossing & ~qa & qb)
            leaks.narrow(axis, 1, n).logical_or_(crossing & qa & ~qb)
        index = leaks.nonzero()
        for pick in range(8):
            bx, by, bz = (self.blocks[axis][pick >> axis & 1][index[:, axis]] for axis in range(3))
            self.active[bx, by, bz] = True


# --------------------------------------------------------------------------------------------------
# The mesher
# --------------------------------------------------------------------------------------------------


@dataclass
class _Surface:
    """Meshes of a group of prompts on the host, vertices sorted by prompt."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    vertex_counts: list[int]
    face_counts: list[int]


class FastMesher:
    """Meshes for batches of embeddings of one amortized field (see the module docstring)."""

    def __init__(
        self,
        field: AmortizedField,
        config: MeshConfig,
        options: FastInferenceOptions | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        check_mesh_config(config, field.config.bound)
        self.options = options or FastInferenceOptions()
        self.options.check()
        self.field = field.eval()
        self.config = config
        self.device = torch.device(device) if device is not None else next(field.parameters()).device
        self.dtype = self.options.resolved_dtype(self.device)

    @torch.no_grad()
    def meshes(
        self, embeddings: Tensor, return_exceptions: bool = False
    ) -> list[trimesh.Trimesh | NoSurfaceError]:
        """One mesh per row of ``embeddings [P, D]``.

        A prompt whose field has no surface raises :class:`NoSurfaceError` (naming the batch item), or with
        ``return_exceptions`` takes the error's place in the returned list.
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.field.config.text_dim:
            raise ValueError(
                f"embeddings must be [P, {self.field.config.text_dim}], got {tuple(embeddings.shape)}"
            )
        embeddings = embeddings.to(self.device, torch.float32)
        if self.config.texture == "uv":
            # The UV unwrap (xatlas) and bake run on the host anyway: use the reference path per prompt.
            return [self._reference_mesh(e, i, return_exceptions) for i, e in enumerate(embeddings)]
        query = build_query(self.field, embeddings, self.dtype, self.options.compile)
        results: list[trimesh.Trimesh | NoSurfaceError | None] = [None] * len(embeddings)
        grids = self._fine_grids(query, len(embeddings), results)
        volumes = self._fine_volumes(query, grids, results)
        for group in self._groups(grids, volumes):
            surface = self._surface(query, group, grids, volumes)
            for prompt, mesh in zip(group, self._split(surface), strict=True):
                results[prompt] = mesh
        for i, result in enumerate(results):
            if isinstance(result, NoSurfaceError) and not return_exceptions:
                raise NoSurfaceError(f"batch item {i}: {result}")
        return results  # type: ignore[return-value]

    def _reference_mesh(
        self, embedding: Tensor, i: int, return_exceptions: bool
    ) -> trimesh.Trimesh | NoSurfaceError:
        try:
            return extract_mesh(
                self.field.materialize(embedding), self.config, self.field.config.bound, self.device
            )
        except NoSurfaceError as error:
            if return_exceptions:
                return error
            raise NoSurfaceError(f"batch item {i}: {error}") from None

    # ---- passes ----------------------------------------------------------------------------------

    def _fine_grids(self, query: BatchQuery, prompts: int, results: list) -> list[_Grid | None]:
        """Coarse pass over the scene box for all prompts, then each prompt's fine grid.

        The coarse grid is refined like the fine one (``coarse_block``), so its occupancy, and with it the
        fine grid, equals ``extract_mesh``'s wherever no feature hides inside a block (see the module
        docstring); ``coarse_block=1`` queries every coarse sample.
        """
        bound, n, level = (
            self.field.config.bound,
            self.config.coarse_resolution,
            self.config.density_threshold,
        )
        box_lo, box_hi = np.full(3, -bound), np.full(3, bound)
        corners = [_block_corners(n, self.options.coarse_block, self.device)] * 3
        coarse = [_Grid((n, n, n), box_lo, 2.0 * bound / (n - 1), corners)] * prompts
        volumes = self._refined_volumes(query, coarse)
        grids: list[_Grid | None] = []
        for p, volume in enumerate(volumes):
            occupied = (volume > level).cpu().numpy()
            if not occupied.any():
                where = f"coarse {n}^3 grid over the scene box"
                results[p] = no_surface_error(volume.cpu().numpy(), level, where)
                grids.append(None)
                continue
            shape, lo, voxel = fine_grid(*occupied_box(occupied, box_lo, box_hi), self.config.resolution)
            fine_corners = [_block_corners(s, self.options.block, self.device) for s in shape]
            grids.append(_Grid(shape, lo, voxel, fine_corners))
        return grids

    def _fine_volumes(
        self, query: BatchQuery, grids: list[_Grid | None], results: list
    ) -> list[Tensor | None]:
        """Every prompt's fine density grid (``None`` where it has no surface, the error in ``results``)."""
        level = self.config.density_threshold
        volumes = self._refined_volumes(query, grids)
        for p, volume in enumerate(volumes):
            if volume is not None and not bool((volume > level).any()):
                where = f"fine {'x'.join(map(str, grids[p].shape))} grid inside the occupied box"
                results[p] = no_surface_error(volume.cpu().numpy(), level, where)
                volumes[p] = None
        return volumes

    def _refined_volumes(self, query: BatchQuery, grids: list[_Grid | None]) -> list[Tensor | None]:
        """Each grid's density, coarse-to-fine: block corners first, then the samples of active blocks.

        Active blocks start as those whose corners straddle the level (plus ``dilation``) and grow until
        no grid edge between a queried and an interpolated sample crosses the level, i.e. until the
        queried region encloses every surface it touches; the queries of all prompts go in one call per
        round. Samples never queried hold the trilinear interpolation of their block's corners.
        """
        level = self.config.density_threshold
        live = [p for p, g in enumerate(grids) if g is not None]
        volumes: list[Tensor | None] = [None] * len(grids)
        if not live:
            return volumes
        counts = [0] * len(grids)
        corner_points = []
        for p in live:
            corner_points.append(grids[p].points(_product_index(grids[p].corners)))
            counts[p] = len(corner_points[-1])
        density, _ = query_chunked(query, torch.cat(corner_points), counts, self.options.chunk_points)
        corner_values = torch.nan_to_num(density, nan=0.0).split(counts)

        states = {}
        for p in live:
            grid = grids[p]
            values = corner_values[p].view(*(len(c) for c in grid.corners))
            blocks = [_axis_blocks(c, s) for c, s in zip(grid.corners, grid.shape, strict=True)]
            active = _active_blocks(values, level, self.options.dilation)
            if not bool(active.any()):
                # No block straddles the level: query everything rather than miss a thin object.
                active = torch.ones_like(active)
            queried = torch.zeros(grid.shape, dtype=torch.bool, device=self.device)
            states[p] = _Refinement(blocks, active, queried, _upsample(values, blocks))

        for _ in range(_MAX_ROUNDS):
            new = {p: state.samples() & ~state.queried for p, state in states.items()}
            index = {p: mask.nonzero() for p, mask in new.items()}
            sample_counts = [len(index[p]) if p in index else 0 for p in range(len(grids))]
            if sum(sample_counts) == 0:
                break
            points = torch.cat([grids[p].points(index[p]) for p in states])
            density, _ = query_chunked(query, points, sample_counts, self.options.chunk_points)
            for p, values in zip(range(len(grids)), density.split(sample_counts), strict=True):
                if p in states and len(values):
                    states[p].update(new[p], values, level)
        for p, state in states.items():
            volumes[p] = state.volume
        return volumes

    def _groups(self, grids: list[_Grid | None], volumes: list[Tensor | None]) -> list[list[int]]:
        """Prompts meshed together, each group's stacked grid within ``max_stack_samples``."""
        groups, current, samples = [], [], 0
        for p, volume in enumerate(volumes):
            if volume is None:
                continue
            size = math.prod(s + 2 for s in grids[p].shape)
            if current and samples + size > self.options.max_stack_samples:
                groups.append(current)
                current, samples = [], 0
            current.append(p)
            samples += size
        if current:
            groups.append(current)
        return groups

    def _surface(
        self, query: BatchQuery, group: list[int], grids: list[_Grid | None], volumes: list[Tensor | None]
    ) -> _Surface:
        """One marching cubes over the group's grids stacked along x, then albedo and normals."""
        ny = max(grids[p].shape[1] for p in group) + 2
        nz = max(grids[p].shape[2] for p in group) + 2
        starts = np.cumsum([0] + [grids[p].shape[0] + 2 for p in group])
        # Density 0 (below any valid level) pads every grid, as in extract_mesh, and separates the grids.
        stacked = torch.zeros(int(starts[-1]), ny, nz, device=self.device)
        for i, p in enumerate(group):
            sx, sy, sz = grids[p].shape
            stacked[starts[i] + 1 : starts[i] + 1 + sx, 1 : 1 + sy, 1 : 1 + sz] = volumes[p]
        vertices, faces = marching_cubes(stacked, self.config.density_threshold)

        # Which grid each vertex came from; then sort vertices (and remap faces) by grid.
        starts_t = torch.as_tensor(starts, device=self.device, dtype=torch.float32)
        owner = torch.searchsorted(starts_t, vertices[:, 0].contiguous(), right=True) - 1
        order = torch.argsort(owner, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(len(order), device=self.device)
        vertices, owner, faces = vertices[order], owner[order], rank[faces]
        faces = faces[torch.argsort(owner[faces[:, 0]], stable=True)]

        # Floaters out (extract_mesh's rule), then drop the vertices no face uses any more.
        faces = faces[keep_large_components(faces, owner, len(group), self.config.min_component_fraction)]
        used = torch.zeros(len(vertices), dtype=torch.bool, device=self.device)
        used[faces.reshape(-1)] = True
        faces = (torch.cumsum(used, 0) - 1)[faces]
        vertices, owner = vertices[used], owner[used]

        lo = torch.as_tensor(np.stack([grids[p].lo for p in group]), dtype=torch.float32, device=self.device)
        voxel = torch.tensor([grids[p].voxel for p in group], dtype=torch.float32, device=self.device)
        offset = torch.stack([starts_t[:-1] + 1, torch.ones_like(voxel), torch.ones_like(voxel)], dim=-1)
        world = lo[owner] + (vertices - offset[owner]) * voxel[owner, None]

        vertex_counts = torch.bincount(owner, minlength=len(group))
        face_counts = torch.bincount(owner[faces[:, 0]], minlength=len(group))
        counts = [0] * len(grids)
        for i, p in enumerate(group):
            counts[p] = int(vertex_counts[i])
        _, albedo = query_chunked(query, world, counts, self.options.chunk_points)
        colors = torch.cat(
            [
                (torch.nan_to_num(albedo, nan=0.0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8),
                torch.full((len(world), 1), 255, dtype=torch.uint8, device=self.device),
            ],
            dim=1,
        )
        return _Surface(
            vertices=world.cpu().numpy().astype(np.float64),
            faces=faces.cpu().numpy(),
            normals=_vertex_normals(world, faces).cpu().numpy().astype(np.float64),
            colors=colors.cpu().numpy(),
            vertex_counts=vertex_counts.tolist(),
            face_counts=face_counts.tolist(),
        )

    def _split(self, surface: _Surface) -> list[trimesh.Trimesh]:
        """Per-prompt meshes (vertices and faces are sorted by prompt)."""
        meshes = []
        v0 = f0 = 0
        for nv, nf in zip(surface.vertex_counts, surface.face_counts, strict=True):
            sl = slice(v0, v0 + nv)
            meshes.append(
                trimesh.Trimesh(
                    vertices=surface.vertices[sl],
                    faces=surface.faces[f0 : f0 + nf] - v0,
                    vertex_normals=surface.normals[sl],
                    vertex_colors=surface.colors[sl],
                    process=False,
                )
            )
            v0, f0 = v0 + nv, f0 + nf
        return meshes


def _vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted vertex normals ``[V, 3]`` (unit length; zero-area neighbourhoods give +z)."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    face_normals = torch.linalg.cross(b - a, c - a)  # length = twice the area
    normals = torch.zeros_like(vertices)
    for i in range(3):
        normals.index_add_(0, faces[:, i], face_normals)
    length = normals.norm(dim=1, keepdim=True)
    fallback = torch.tensor([0.0, 0.0, 1.0], device=vertices.device).expand_as(normals)
    return torch.where(length > 0, normals / length.clamp_min(1e-30), fallback)


def component_labels(faces: Tensor, num_vertices: int) -> Tensor:
    """Connected components of a mesh's vertex graph on the device: each vertex's smallest connected id.

    Union-find by rounds: every edge hooks the larger of its two roots under the smaller one
    (``scatter_reduce`` with ``amin``), then pointer jumping flattens the trees; parents only ever
    decrease, so the forest stays acyclic, and it ends when no edge joins two roots (a few rounds, each a
    handful of kernels and one host sync).
    """
    parent = torch.arange(num_vertices, device=faces.device)
    if len(faces) == 0:
        return parent
    a = torch.cat([faces[:, 0], faces[:, 1]])
    b = torch.cat([faces[:, 1], faces[:, 2]])
    while True:
        root_a, root_b = parent[a], parent[b]
        if bool((root_a == root_b).all()):
            return parent
        parent = parent.scatter_reduce(
            0, torch.maximum(root_a, root_b), torch.minimum(root_a, root_b), reduce="amin"
        )
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped


def keep_large_components(faces: Tensor, owner: Tensor, prompts: int, min_fraction: float) -> Tensor:
    """Faces ``[F]`` to keep: those of components with at least ``min_fraction`` of the faces of their
    prompt's largest component (``extract_mesh``'s floater rule). ``owner [V]``: each vertex's prompt."""
    if len(faces) == 0:
        return torch.zeros(0, dtype=torch.bool, device=faces.device)
    labels = component_labels(faces, len(owner))[faces[:, 0]]
    size = torch.bincount(labels, minlength=len(owner))[labels]
    prompt = owner[faces[:, 0]]
    largest = torch.zeros(prompts, dtype=size.dtype, device=faces.device)
    largest = largest.scatter_reduce(0, prompt, size, reduce="amax")
    return size >= min_fraction * largest[prompt]
