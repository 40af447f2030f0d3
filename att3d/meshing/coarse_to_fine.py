"""Coarse-to-fine mesh extraction, the default path: prompts → meshes on the device, only the final meshes
crossing to the host.

:func:`att3d.meshing.dense.extract_mesh` (the reference) meshes one field at a time and moves every grid
to the host. Here a batch of ``P`` embeddings goes through the same grids in a handful of device passes:

1. **materialize once**: the mixing weights ``v(c)`` and the per-prompt grids ``W2 v(c)``
   (:meth:`AmortizedField.mixed_tables`) for the whole batch, stored in the query precision
   (``att3d.meshing.query``);
2. **coarse pass**: the ``coarse_resolution^3`` grid over the scene box, refined as in 3. (``coarse_block``),
   for all prompts at once; per prompt the occupied box and the fine grid, as ``extract_mesh`` chooses them;
3. **coarse-to-fine**: every ``block``-th fine sample (the block corners) is queried first; blocks whose
   corners lie on both sides of the iso-level, grown by ``dilation`` blocks, are *active*, and only the
   fine samples of active blocks are queried. The other samples take the trilinear interpolation of their
   block's corners, which stays on the corners' side of the level, so no surface appears there. A surface
   can only be missed where a whole feature fits between the corners of inactive blocks (thinner than a
   block and away from any active block); ``block=1`` queries the full fine grid, ``coarse_block=1`` the
   full coarse grid (the blocks: ``att3d.meshing.grid``).
4. **one marching cubes for the batch**: the fine volumes, each padded with empty space as ``extract_mesh``
   does, are stacked along x into one grid (the empty layers keep them apart) and meshed with
   :func:`att3d.meshing.marching_cubes.marching_cubes`; vertex normals and vertex albedo (one query,
   ``color_depth`` below each vertex) are computed on the device;
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
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import trimesh
from pydantic import StrictBool
from torch import Tensor

from att3d.config import MeshConfig
from att3d.config_validation import NonNegativeInt, PositiveInt, config_dataclass
from att3d.field import AmortizedField
from att3d.meshing.components import keep_large_components
from att3d.meshing.errors import NoSurfaceError, no_surface_error
from att3d.meshing.grid import (
    BlockGrid,
    BlockRefinement,
    active_blocks,
    axis_blocks,
    block_corners,
    fine_grid,
    occupied_box,
    product_index,
    upsample_corners,
)
from att3d.meshing.marching_cubes import marching_cubes
from att3d.meshing.query import BatchFieldQuery, BatchQuery, query_chunked

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@config_dataclass("")
class CoarseToFineOptions:
    """How :class:`CoarseToFineMesher` trades accuracy for speed (the grids come from ``MeshConfig``).

    Validated on construction like the configs (:mod:`att3d.config_validation`): a bad value raises
    ``ConfigError`` naming the field, e.g. ``block: must be >= 1, got 0``.
    """

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Precision of the mixed grids and the MLP head: ``float32``, ``bfloat16``, ``float16`` or ``auto``
    (float16 on CUDA, float32 on the CPU)."""
    block: PositiveInt = 4
    """Side of a coarse-to-fine block in fine samples (1: query every fine sample)."""
    coarse_block: PositiveInt = 4
    """The same for the coarse pass over the scene box, in coarse samples (1: query all
    ``coarse_resolution^3`` of them, as ``extract_mesh`` does)."""
    dilation: NonNegativeInt = 0
    """Blocks around each straddling block queried from the start (the region also grows on its own
    wherever the surface leaves it)."""
    chunk_points: PositiveInt = 1 << 21
    """Points per query call (bounds the memory of the interpolation temporaries)."""
    max_stack_samples: PositiveInt = 1 << 28
    """Most grid samples meshed in one marching-cubes call; larger batches are meshed in groups."""
    compile: StrictBool = False
    """``torch.compile`` the field query (CUDA only; recompiles for new shapes, so warm it up)."""

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.float16 if device.type == "cuda" else torch.float32
        return DTYPES[self.dtype]


_MAX_ROUNDS = 16
"""Rounds of growing the queried region (one or two are typical; the last ones only verify)."""


@dataclass
class _Surface:
    """Meshes of a group of prompts on the host, vertices sorted by prompt."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    vertex_counts: list[int]
    face_counts: list[int]


class CoarseToFineMesher:
    """Meshes for batches of embeddings of one amortized field (see the module docstring)."""

    def __init__(
        self,
        field: AmortizedField,
        config: MeshConfig,
        options: CoarseToFineOptions | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if config.texture != "vertex":
            # The UV unwrap (xatlas) and bake run on the host: att3d.meshing.mesher meshes those densely.
            raise ValueError(
                f"coarse-to-fine meshes carry vertex colours, not mesh.texture={config.texture!r}"
            )
        self.options = options or CoarseToFineOptions()
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
        query = BatchFieldQuery(self.field, embeddings, self.dtype, compile=self.options.compile)
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

    # ---- passes ----------------------------------------------------------------------------------

    def _fine_grids(self, query: BatchQuery, prompts: int, results: list) -> list[BlockGrid | None]:
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
        corners = [block_corners(n, self.options.coarse_block, self.device)] * 3
        coarse = [BlockGrid((n, n, n), box_lo, 2.0 * bound / (n - 1), corners)] * prompts
        volumes = self._refined_volumes(query, coarse)
        grids: list[BlockGrid | None] = []
        for p, volume in enumerate(volumes):
            occupied = (volume > level).cpu().numpy()
            if not occupied.any():
                where = f"coarse {n}^3 grid over the scene box"
                results[p] = no_surface_error(volume.cpu().numpy(), level, where)
                grids.append(None)
                continue
            shape, lo, voxel = fine_grid(*occupied_box(occupied, box_lo, box_hi), self.config.resolution)
            fine_corners = [block_corners(s, self.options.block, self.device) for s in shape]
            grids.append(BlockGrid(shape, lo, voxel, fine_corners))
        return grids

    def _fine_volumes(
        self, query: BatchQuery, grids: list[BlockGrid | None], results: list
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

    def _refined_volumes(self, query: BatchQuery, grids: list[BlockGrid | None]) -> list[Tensor | None]:
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
            corner_points.append(grids[p].points(product_index(grids[p].corners)))
            counts[p] = len(corner_points[-1])
        density, _ = query_chunked(query, torch.cat(corner_points), counts, self.options.chunk_points)
        corner_values = torch.nan_to_num(density, nan=0.0).split(counts)

        states = {}
        for p in live:
            grid = grids[p]
            values = corner_values[p].view(*(len(c) for c in grid.corners))
            blocks = [axis_blocks(c, s) for c, s in zip(grid.corners, grid.shape, strict=True)]
            active = active_blocks(values, level, self.options.dilation)
            if not bool(active.any()):
                # No block straddles the level: query everything rather than miss a thin object.
                active = torch.ones_like(active)
            queried = torch.zeros(grid.shape, dtype=torch.bool, device=self.device)
            states[p] = BlockRefinement(blocks, active, queried, upsample_corners(values, blocks))

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

    def _groups(self, grids: list[BlockGrid | None], volumes: list[Tensor | None]) -> list[list[int]]:
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
        self, query: BatchQuery, group: list[int], grids: list[BlockGrid | None], volumes: list[Tensor | None]
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
        if len(group) == 1:  # already sorted: the stable sorts below would be the identity
            owner = torch.zeros(len(vertices), dtype=torch.int64, device=self.device)
        else:
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
        normals = _vertex_normals(world, faces)
        # The albedo is read color_depth below the surface (MeshConfig.color_depth says why).
        inside = world - self.config.color_depth * normals
        _, albedo = query_chunked(query, inside, counts, self.options.chunk_points)
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
            normals=normals.cpu().numpy().astype(np.float64),
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
