"""Colours of an extracted surface: albedo at the vertices, or a UV unwrap with a baked albedo texture.

``texture="vertex"``: the albedo queried at each vertex (RGBA uint8). ``texture="uv"``: an xatlas unwrap
whose albedo is baked into a PNG by rasterizing the triangles in UV space, on the CPU (the reference) or
with nvdiffrast on CUDA (:func:`bake_uv_texture`, same texel conventions). Either way the albedo is read
``MeshConfig.color_depth`` below the surface, along the inward (interpolated vertex) normal.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage
from torch import Tensor

from att3d.config import MeshConfig
from att3d.meshing.cuda_extensions import nvdiffrast_status, raster_context, require
from att3d.meshing.query import QueryFn, call_field, query_albedo

AlbedoFn = Callable[[Tensor], Tensor]
"""World points ``[N, 3]`` → albedo ``[N, 3]`` in [0, 1]."""


def color_vertices(
    mesh: trimesh.Trimesh, fn: QueryFn, chunk_points: int, device: torch.device | str, depth: float = 0.0
) -> trimesh.Trimesh:
    """``mesh`` with the albedo of ``fn`` ``depth`` below each vertex (along its inward normal) as RGBA
    uint8 vertex colours. ``mesh`` faces wind counter-clockwise seen from outside."""
    points = mesh.vertices - depth * mesh.vertex_normals if depth > 0 else mesh.vertices
    albedo = query_albedo(fn, points, chunk_points, device)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=rgba8(albedo))
    return mesh


def rgba8(albedo: np.ndarray) -> np.ndarray:
    """Albedo ``[N, 3]`` in [0, 1] → opaque RGBA uint8 ``[N, 4]``."""
    rgb = np.round(albedo * 255.0).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)


def bake_texture(
    mesh: trimesh.Trimesh, fn: QueryFn, config: MeshConfig, device: torch.device | str
) -> trimesh.Trimesh:
    """Unwrap with xatlas and bake the albedo field into a ``texture_size``² PNG."""
    # xatlas time grows quickly with face count (about 1 s at 9k faces, 12 s at 38k on the 2-core dev box),
    # so decimate first (quadric error metric via trimesh + fast_simplification).
    if config.decimate_faces > 0 and len(mesh.faces) > config.decimate_faces:
        mesh = mesh.simplify_quadric_decimation(face_count=config.decimate_faces)
    # xatlas skips triangles below an absolute area epsilon and leaves them at uv (0, 0); marching cubes
    # makes many thin slivers, so unwrap in units of the mean edge length, where none is that small.
    scaled = mesh.vertices / mesh.edges_unique_length.mean()
    import xatlas  # only the UV path needs it (GPU images without it still mesh with vertex colours)

    vmapping, faces, uv = xatlas.parametrize(scaled.astype(np.float32), mesh.faces.astype(np.uint32))
    vertices, normals = mesh.vertices[vmapping], mesh.vertex_normals[vmapping]
    image = bake_albedo(vertices, faces.astype(np.int64), uv, fn, config, device, normals)
    material = trimesh.visual.material.PBRMaterial(
        name="material", baseColorTexture=Image.fromarray(image), metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False)


def bake_albedo(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    fn: QueryFn,
    config: MeshConfig,
    device: torch.device | str,
    normals: np.ndarray | None = None,
) -> np.ndarray:
    """Rasterize triangles in UV space and query the albedo at each covered texel's 3D point, moved
    ``config.color_depth`` inwards along the interpolated vertex ``normals`` (outward, ``[V, 3]``) if given.

    Image rows run top to bottom while ``v`` runs bottom to top (OpenGL/trimesh convention), hence the
    flip. Texels outside every chart take the colour of the nearest covered texel, which hides seams at
    every mip level (filtering never mixes in a background colour).
    """
    size = config.texture_size
    # On CUDA, nvdiffrast rasterizes in UV space on the GPU, with the same conventions.
    if torch.device(device).type == "cuda" and nvdiffrast_status() is None:
        return bake_uv_texture(
            vertices, faces, uv, lambda p: call_field(fn, p)[1], size, device, normals, config.color_depth
        )
    pixels = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=-1)
    texel, face, bary = _rasterize(pixels[faces], size)
    points = np.einsum("nk,nkd->nd", bary, vertices[faces[face]])
    if normals is not None and config.color_depth > 0:
        inward = np.einsum("nk,nkd->nd", bary, normals[faces[face]])
        inward /= np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-12)
        points = points - config.color_depth * inward
    image = np.zeros((size * size, 3), dtype=np.float32)
    covered = np.zeros(size * size, dtype=bool)
    image[texel] = query_albedo(fn, points, config.chunk_points, device)
    covered[texel] = True
    image = image.reshape(size, size, 3)
    covered = covered.reshape(size, size)
    if covered.any():
        nearest = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
        image = image[nearest[0], nearest[1]]
    return np.round(image * 255.0).astype(np.uint8)


def _rasterize(triangles: np.ndarray, size: int, max_candidates: int = 1 << 21) -> tuple[np.ndarray, ...]:
    """Texels whose centres lie in each triangle (pixel coordinates ``[F, 3, 2]``), vectorized.

    Every texel of each triangle's bounding box is a candidate; triangles are processed in groups of at
    most ``max_candidates`` candidates to bound memory. Returns flat texel indices, triangle indices and
    barycentric coordinates ``[M, 3]``.
    """
    col_lo = np.clip(np.ceil(triangles[..., 0].min(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    col_hi = np.clip(np.floor(triangles[..., 0].max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    row_lo = np.clip(np.ceil(triangles[..., 1].min(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    row_hi = np.clip(np.floor(triangles[..., 1].max(axis=1) - 0.5), 0, size - 1).astype(np.int64)
    width = np.maximum(col_hi - col_lo + 1, 0)
    candidates = width * np.maximum(row_hi - row_lo + 1, 0)
    ends = np.cumsum(candidates)

    texels, faces, barys = [], [], []
    start = 0
    while start < len(triangles):
        # Take at least one triangle so a single huge one still makes progress.
        limit = (ends[start - 1] if start else 0) + max_candidates
        stop = max(int(np.searchsorted(ends, limit, side="right")), start + 1)
        group = np.arange(start, stop)
        counts = candidates[group]
        face = np.repeat(group, counts)
        offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        col = col_lo[face] + offset % width[face]
        row = row_lo[face] + offset // width[face]
        bary = _barycentric(triangles[face], np.stack([col + 0.5, row + 0.5], axis=-1))
        inside = (bary >= -1e-6).all(axis=1)
        texels.append(row[inside] * size + col[inside])
        faces.append(face[inside])
        barys.append(bary[inside])
        start = stop
    return np.concatenate(texels), np.concatenate(faces), np.concatenate(barys)


def _barycentric(triangles: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Barycentric coordinates ``[N, 3]`` of 2D points in 2D triangles; degenerate triangles give -1."""
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    ab, ac, ap = b - a, c - a, points - a
    det = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]
    ok = np.abs(det) > 1e-12
    det = np.where(ok, det, 1.0)
    u = (ap[:, 0] * ac[:, 1] - ap[:, 1] * ac[:, 0]) / det
    v = (ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]) / det
    bary = np.stack([1.0 - u - v, u, v], axis=-1)
    return np.where(ok[:, None], bary, -1.0)


def bake_uv_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    albedo: AlbedoFn,
    size: int,
    device: torch.device | str = "cuda",
    normals: np.ndarray | None = None,
    depth: float = 0.0,
) -> np.ndarray:
    """Bake ``albedo`` into a ``size × size`` RGB uint8 texture by rasterizing the mesh in UV space, read
    ``depth`` inwards along the interpolated vertex ``normals`` (outward, ``[V, 3]``) when given.

    Same conventions as the CPU baker (:func:`bake_albedo`): texel ``(row, col)`` has its centre at
    ``u = (col + 0.5) / size``, ``v = 1 - (row + 0.5) / size`` (image rows top to bottom, ``v`` bottom to
    top); a covered texel gets the albedo at the 3D point its centre maps to; uncovered texels copy the
    nearest covered texel, so no background colour bleeds into filtered lookups.
    """
    require(nvdiffrast_status())
    import nvdiffrast.torch as dr

    device = torch.device(device)
    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
    # Clip y = 1 - 2v puts image row 0 (v = 1) at nvdiffrast's first output row (clip y = -1).
    clip = torch.stack(
        [uv_t[:, 0] * 2 - 1, 1 - uv_t[:, 1] * 2, torch.zeros_like(uv_t[:, 0]), torch.ones_like(uv_t[:, 0])],
        dim=-1,
    )
    tri = torch.as_tensor(faces, dtype=torch.int32, device=device).contiguous()
    rast, _ = dr.rasterize(raster_context(device), clip[None].contiguous(), tri, resolution=[size, size])
    world = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    points, _ = dr.interpolate(world[None].contiguous(), rast, tri)
    if normals is not None and depth > 0:
        outward = torch.as_tensor(normals, dtype=torch.float32, device=device)
        texel_normals, _ = dr.interpolate(outward[None].contiguous(), rast, tri)
        points = points - depth * torch.nn.functional.normalize(texel_normals, dim=-1)
    covered = rast[0, ..., 3] > 0
    image = torch.zeros(size, size, 3, device=device)
    with torch.no_grad():
        image[covered] = albedo(points[0][covered]).float().clamp(0.0, 1.0)
    image_np, covered_np = image.cpu().numpy(), covered.cpu().numpy()
    if covered_np.any():
        nearest = ndimage.distance_transform_edt(~covered_np, return_distances=False, return_indices=True)
        image_np = image_np[nearest[0], nearest[1]]
    return np.round(image_np * 255.0).astype(np.uint8)
