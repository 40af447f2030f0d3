"""The one place that picks how a field is meshed: coarse-to-fine (the default) or dense.

Every caller goes through :func:`mesh_embeddings`: ``Generator.mesh`` (the CLI, the service's
``per_request`` mesher) with one embedding, the service's ``batched`` mesher with a whole micro-batch.
"""

from __future__ import annotations

import torch
import trimesh
from torch import Tensor

from att3d.config import MeshConfig
from att3d.field import AmortizedField
from att3d.meshing.coarse_to_fine import CoarseToFineMesher, CoarseToFineOptions
from att3d.meshing.dense import extract_mesh
from att3d.meshing.errors import NoSurfaceError


def uses_coarse_to_fine(config: MeshConfig) -> bool:
    """Whether ``config`` is meshed coarse-to-fine (``MeshConfig.grid_query``).

    UV textures are unwrapped and baked on the host anyway, and scikit-image marching cubes runs on the
    host: both take the dense path.
    """
    return (
        config.grid_query == "coarse_to_fine"
        and config.texture == "vertex"
        and config.marching_cubes != "skimage"
    )


def mesh_embeddings(
    field: AmortizedField,
    embeddings: Tensor,
    config: MeshConfig,
    device: torch.device | str | None = None,
    options: CoarseToFineOptions | None = None,
    return_exceptions: bool = False,
) -> list[trimesh.Trimesh | NoSurfaceError]:
    """One mesh per row of ``embeddings [P, D]`` of ``field``, by the path ``config`` asks for.

    ``options`` tune the coarse-to-fine path (default: its defaults with ``config.chunk_points``). A
    prompt whose field has no surface raises :class:`NoSurfaceError` naming the batch item, or with
    ``return_exceptions`` takes the error's place in the returned list.
    """
    if uses_coarse_to_fine(config):
        options = options or CoarseToFineOptions(chunk_points=config.chunk_points)
        return CoarseToFineMesher(field, config, options, device).meshes(embeddings, return_exceptions)
    device = torch.device(device) if device is not None else next(field.parameters()).device
    meshes: list[trimesh.Trimesh | NoSurfaceError] = []
    for i, embedding in enumerate(embeddings):
        try:
            prompt_field = field.materialize(embedding.to(device))
            meshes.append(extract_mesh(prompt_field, config, field.config.bound, device))
        except NoSurfaceError as error:
            if not return_exceptions:
                raise NoSurfaceError(f"batch item {i}: {error}") from None
            meshes.append(error)
    return meshes
