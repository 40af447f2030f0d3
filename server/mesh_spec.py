"""What a mesh request is (:class:`MeshSpec`) and how it becomes a response body (GLB/OBJ/PLY bytes or a
frames zip): per request through ``Generator.mesh``, or many requests through one ``mesh_embeddings`` pass.

The model worker (``server.engine``) decides when and on which model these run; this module only builds bytes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from att3d.config import MeshConfig
from att3d.generate import Generator
from att3d.meshing.coarse_to_fine import CoarseToFineOptions
from att3d.meshing.export import frames_zip, mesh_to_bytes
from att3d.meshing.mesher import mesh_embeddings
from server.schemas import MEDIA_TYPES, ZIP_MEDIA_TYPE


@dataclass(frozen=True)
class MeshSpec:
    """Everything that determines a response: together with the model hash, the cache key."""

    model: str
    """Name of the loaded model."""
    prompts: tuple[str, ...]
    """Validated prompts (surrounding whitespace stripped)."""
    walk: tuple[tuple[float, ...], ...]
    """One weight vector over ``prompts`` per mesh (``((1.0,),)`` for a plain generation)."""
    frames: bool
    """``True``: a zip with one mesh per ``walk`` entry; ``False``: the single mesh itself."""
    resolution: int
    """Marching-cubes resolution."""
    texture: str
    """``vertex`` or ``uv``."""
    format: str
    """``glb``, ``obj`` or ``ply``."""

    def __post_init__(self) -> None:
        if not self.frames and len(self.walk) != 1:
            raise ValueError("a single-mesh request has exactly one weight vector")
        if any(len(w) != len(self.prompts) for w in self.walk):
            raise ValueError("every weight vector needs one weight per prompt")


def mesh_config(generator: Generator, spec: MeshSpec) -> MeshConfig:
    """The model's mesh config at the request's resolution and texture."""
    return dataclasses.replace(generator.config.mesh, resolution=spec.resolution, texture=spec.texture)


def per_request_body(generator: Generator, spec: MeshSpec) -> tuple[bytes, str]:
    """``mesher="per_request"``: the response body from ``Generator.mesh`` per mesh, exactly as the CLI
    does."""
    config = mesh_config(generator, spec)
    with torch.no_grad():
        meshes = [generator.mesh(generator.blend(list(spec.prompts), list(w)), config) for w in spec.walk]
    return response_body(spec, meshes)


def response_body(spec: MeshSpec, meshes: list[Any]) -> tuple[bytes, str]:
    """Response body and media type for the meshes of ``spec`` (one per ``walk`` entry): the mesh itself,
    or for a frames request the zip of ``att3d.meshing.export.frames_zip``. An entry that is an exception
    (a frame with no surface) is raised."""
    for mesh in meshes:
        if isinstance(mesh, Exception):
            raise mesh
    if not spec.frames:
        return mesh_to_bytes(meshes[0], spec.format), MEDIA_TYPES[spec.format]
    return frames_zip(meshes, spec.format, spec.prompts, spec.walk), ZIP_MEDIA_TYPE


def batch_meshes(generator: Generator, specs: list[MeshSpec]) -> list[list[Any]]:
    """Every mesh of ``specs`` (same model, resolution and texture) from one ``mesh_embeddings`` pass: per
    spec, its meshes (or the ``NoSurfaceError`` of a frame without surface)."""
    config = mesh_config(generator, specs[0])
    embeddings, owner = [], []
    with torch.no_grad():
        for i, spec in enumerate(specs):
            for weights in spec.walk:
                embeddings.append(generator.blend(list(spec.prompts), list(weights)))
                owner.append(i)
        # The coarse-to-fine defaults (larger query chunks than mesh.chunk_points): GPU throughput.
        meshes = mesh_embeddings(
            generator.field,
            torch.stack(embeddings),
            config,
            generator.device,
            options=CoarseToFineOptions(),
            return_exceptions=True,
        )
    per_spec: list[list[Any]] = [[] for _ in specs]
    for i, mesh in zip(owner, meshes, strict=True):
        per_spec[i].append(mesh)
    return per_spec


def batched_body_alone(generator: Generator, spec: MeshSpec) -> tuple[bytes, str]:
    """One request through the batched mesher on its own (the fallback after a failed group)."""
    return response_body(spec, batch_meshes(generator, [spec])[0])
