"""Dense mesh extraction, the reference path: every grid sample is queried.

1. a coarse grid over the whole scene box finds where density exceeds the iso-level;
2. a fine grid with isotropic voxels covers only that bounding box (padded by two coarse cells;
   ``att3d.meshing.grid``);
3. marching cubes at ``level = density_threshold`` on the fine grid (scikit-image, or the PyTorch version
   of ``att3d.meshing.marching_cubes`` on CUDA: ``MeshConfig.marching_cubes``), padded with empty space so
   that surfaces cut by the scene box still close; faces point outward (towards lower density);
4. connected components much smaller than the largest are dropped (floaters, ``att3d.meshing.components``);
5. colours: vertex albedo or a baked UV texture (``att3d.meshing.texture``), read ``color_depth`` below
   the surface.

Export is ``att3d.meshing.export``. The coarse-to-fine path (``att3d.meshing.coarse_to_fine``) places its
samples identically and queries only those near the surface.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from att3d.config import ConfigError, MeshConfig
from att3d.meshing.components import drop_small_components
from att3d.meshing.errors import no_surface_error
from att3d.meshing.grid import fine_grid, occupied_box
from att3d.meshing.marching_cubes import grid_surface
from att3d.meshing.query import QueryFn, query_grid
from att3d.meshing.texture import bake_texture, color_vertices


def extract_mesh(
    fn: QueryFn, config: MeshConfig, bound: float = 1.0, device: torch.device | str = "cpu"
) -> trimesh.Trimesh:
    """Mesh the iso-surface ``density = config.density_threshold`` of a field in ``[-bound, bound]^3``.

    Returns a watertight-where-possible mesh whose faces point outward, coloured by vertex (RGBA uint8)
    or textured (UV + baked PNG) per ``config.texture``. Raises :class:`NoSurfaceError` when no grid
    sample exceeds the threshold. Objects thinner than a coarse cell can be missed by the coarse pass.
    """
    if not bound > 0:  # the mesh.* values are checked by MeshConfig itself
        raise ConfigError(f"bound must be > 0, got {bound}")
    threshold = config.density_threshold
    box_lo, box_hi = np.full(3, -bound), np.full(3, bound)

    coarse = query_grid(fn, box_lo, box_hi, config.coarse_resolution, config.chunk_points, device)
    occupied = coarse > threshold
    if not occupied.any():
        raise no_surface_error(
            coarse, threshold, f"coarse {config.coarse_resolution}^3 grid over the scene box"
        )
    lo, hi = occupied_box(occupied, box_lo, box_hi)

    shape, lo, voxel = fine_grid(lo, hi, config.resolution)
    fine = query_grid(fn, lo, lo + (np.array(shape) - 1) * voxel, shape, config.chunk_points, device)
    if not (fine > threshold).any():
        raise no_surface_error(
            fine, threshold, f"fine {'x'.join(map(str, shape))} grid inside the occupied box"
        )

    # One layer of empty space (density 0 < threshold) around the grid closes surfaces cut by its sides.
    padded = np.pad(fine, 1, mode="constant", constant_values=0.0)
    # Density grows towards the inside, so faces wind counter-clockwise seen from outside.
    vertices, faces = grid_surface(padded, threshold, config.marching_cubes, device)
    vertices = vertices * voxel + (lo - voxel)
    mesh = trimesh.Trimesh(vertices=vertices.astype(np.float64), faces=faces, process=False)
    mesh = drop_small_components(mesh, config.min_component_fraction)

    if config.texture == "uv":
        return bake_texture(mesh, fn, config, device)
    return color_vertices(mesh, fn, config.chunk_points, device, config.color_depth)
