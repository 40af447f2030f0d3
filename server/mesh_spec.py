"""What a mesh request is (:class:`MeshSpec`) and how it becomes a response body (GLB/OBJ/PLY bytes or a
frames zip): per request through ``Generator.mesh``, or many requests through one ``mesh_embeddings`` pass.

The model worker (``server.engine``) decides when and on which model these run; this module only builds bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from att3d.config import MeshConfig
from att3d.generate import Generator
from att3d.meshing.coarse_to_fine import CoarseToFineOptions
from att3d.meshing.errors import NoSurfaceError
from att3d.meshing.export import frames_zip, mesh_to_bytes
from att3d.meshing.mesher import mesh_embeddings
from att3d.text import uncached
from server.errors import ServiceError
from server.memory import is_out_of_memory
from server.schemas import MEDIA_TYPES, ZIP_MEDIA_TYPE

logger = logging.getLogger(__name__)

WARMUP_PROMPT = "a cube"
"""Prompt meshed once per model at start-up (loads the text encoder, fills allocator caches)."""


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

    def key(self, model_hash: str) -> str:
        """sha256 of (model hash, canonical request): the cache key and ETag basis, wherever computed (the
        engine, or the Ray ingress in ``server.ray_serve.remote_engine``)."""
        payload = json.dumps([model_hash, dataclasses.astuple(self)], separators=(",", ":"))
        return hashlib.sha256(payload.encode()).hexdigest()


def mesh_config(generator: Generator, spec: MeshSpec) -> MeshConfig:
    """The model's mesh config at the request's resolution and texture."""
    return dataclasses.replace(generator.config.mesh, resolution=spec.resolution, texture=spec.texture)


def per_request_body(
    generator: Generator, spec: MeshSpec, before_mesh: Callable[[int], None] | None = None
) -> tuple[bytes, str]:
    """``mesher="per_request"``: the response body from ``Generator.mesh`` per mesh, exactly as the CLI
    does. ``before_mesh(meshes_left)`` runs before each mesh and may raise to stop the request there."""
    config = mesh_config(generator, spec)
    meshes = []
    with torch.no_grad():
        for i, weights in enumerate(spec.walk):
            if before_mesh is not None:
                before_mesh(len(spec.walk) - i)
            meshes.append(generator.mesh(generator.blend(list(spec.prompts), list(weights)), config))
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


def warm_up(generator: Generator) -> None:
    """Mesh :data:`WARMUP_PROMPT` once at a low resolution (loads the text encoder, fills caches)."""
    config = dataclasses.replace(generator.config.mesh, resolution=16, texture="vertex")
    started = time.perf_counter()
    # The warm-up prompt's embedding may come from the on-disk cache, which would leave the text
    # encoder unloaded until the first new prompt: load the model behind the cache now.
    # A forward pass of the bare model (bypassing the cache) also allocates its activation buffers now
    # rather than on the first new prompt.
    text_model = uncached(generator.encoder)
    if callable(getattr(text_model, "load", None)):
        text_model.load()
    text_model.encode([WARMUP_PROMPT])
    with contextlib.suppress(NoSurfaceError), torch.no_grad():
        mesh_to_bytes(generator.generate(WARMUP_PROMPT, config), "glb")
    logger.info("warmed up model %s in %.2f s", generator.name, time.perf_counter() - started)


def classify_error(err: Exception) -> ServiceError:
    """Map a worker exception to the API error it becomes."""
    if isinstance(err, ServiceError):
        return err
    if is_out_of_memory(err):
        return ServiceError(
            503, "out_of_memory", "the model ran out of memory on this request; try a lower resolution"
        )
    if isinstance(err, NoSurfaceError):
        return ServiceError(422, "no_surface", f"the model produced no surface: {err}", "prompt")
    if isinstance(err, ValueError):
        # Inputs are validated before they are queued; a ValueError here is still about the input.
        return ServiceError(422, "invalid_request", str(err).splitlines()[0] if str(err) else "invalid")
    logger.error("generation failed", exc_info=err)
    return ServiceError(500, "internal_error", f"generation failed ({type(err).__name__})")
