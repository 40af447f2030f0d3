"""``MeshConfig`` checks shared by the dense and the coarse-to-fine extraction paths."""

from __future__ import annotations

from att3d.config import ConfigError, MeshConfig
from att3d.meshing.marching_cubes import METHODS

GRID_QUERIES = ("coarse_to_fine", "dense")
"""Values of ``MeshConfig.grid_query``."""


def check_mesh_config(config: MeshConfig, bound: float) -> None:
    """Raise ``ConfigError`` naming every out-of-range ``mesh.*`` value (and a non-positive ``bound``)."""
    problems = []
    if config.resolution < 2:
        problems.append(f"mesh.resolution must be >= 2, got {config.resolution}")
    if config.coarse_resolution < 2:
        problems.append(f"mesh.coarse_resolution must be >= 2, got {config.coarse_resolution}")
    if not config.density_threshold > 0:
        # Densities are >= 0 and the grid is padded with 0: a non-positive level has no outside.
        problems.append(f"mesh.density_threshold must be > 0, got {config.density_threshold}")
    if config.chunk_points < 1:
        problems.append(f"mesh.chunk_points must be >= 1, got {config.chunk_points}")
    if not 0.0 <= config.min_component_fraction <= 1.0:
        problems.append(f"mesh.min_component_fraction must be in [0, 1], got {config.min_component_fraction}")
    if config.texture not in ("vertex", "uv"):
        problems.append(f"mesh.texture must be 'vertex' or 'uv', got {config.texture!r}")
    if config.texture_size < 8:
        problems.append(f"mesh.texture_size must be >= 8, got {config.texture_size}")
    if config.marching_cubes not in METHODS:
        problems.append(f"mesh.marching_cubes must be one of {METHODS}, got {config.marching_cubes!r}")
    if config.grid_query not in GRID_QUERIES:
        problems.append(f"mesh.grid_query must be one of {GRID_QUERIES}, got {config.grid_query!r}")
    if not bound > 0:
        problems.append(f"bound must be > 0, got {bound}")
    if problems:
        raise ConfigError("; ".join(problems))
