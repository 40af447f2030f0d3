"""Mesh extraction: dense field query → marching cubes → vertex colours or a baked texture → export.

The pipeline (DESIGN §4):

1. a coarse grid over the whole scene box finds where density exceeds the iso-level;
2. a fine grid with isotropic voxels covers only that bounding box (padded by two coarse cells);
3. marching cubes at ``level = density_threshold`` on the fine grid (scikit-image, or the PyTorch version
   of ``att3d.marching_cubes`` on CUDA: ``MeshConfig.marching_cubes``), padded with empty space so that
   surfaces cut by the scene box still close; faces point outward (towards lower density);
4. connected components much smaller than the largest are dropped (floaters);
5. colours: albedo queried at the vertices (``texture="vertex"``), or an xatlas unwrap whose albedo is
   baked into a PNG by rasterizing the triangles in UV space (``texture="uv"``);
6. export to GLB (validated with the Khronos glTF validator in the tests), PLY, or OBJ + MTL + PNG.

A field is seen only through a :data:`QueryFn`, so this module works for the amortized generator, a
per-prompt NeRF or an analytic ShapesWorld object alike.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage
from torch import Tensor

from att3d.atomic import write_bytes_atomic
from att3d.config import ConfigError, MeshConfig
from att3d.marching_cubes import METHODS, grid_surface

QueryFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""Points ``[N, 3]`` (world units, float32) → (density ``[N]`` ≥ 0, albedo ``[N, 3]`` in [0, 1])."""

MESH_FORMATS = ("glb", "ply", "obj")
"""Formats :func:`mesh_to_bytes` produces (``obj`` is a zip of the OBJ, its MTL and texture)."""

GRID_QUERIES = ("coarse_to_fine", "dense")
"""Values of ``MeshConfig.grid_query``."""

# File extension → format for write_mesh. ".obj" writes loose files beside each other, ".zip" the archive.
_EXTENSION_FORMATS = {".glb": "glb", ".ply": "ply", ".obj": "obj", ".zip": "obj"}

# Padding of the coarse occupied box, in coarse cells: the coarse grid can miss up to a cell of surface.
_COARSE_PAD_CELLS = 2

# glTF bufferView targets (ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER).
_GLTF_ARRAY_BUFFER = 34962
_GLTF_ELEMENT_ARRAY_BUFFER = 34963

_WHITE = (255, 255, 255, 255)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class NoSurfaceError(ValueError):
    """The field has no point with density above the iso-level, so there is nothing to mesh."""


# --------------------------------------------------------------------------------------------------
# Field queries
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
    shape = _grid_shape(resolution)
    _check_chunk(chunk_points)
    lo_t = torch.as_tensor(lo, dtype=torch.float32, device=device)
    hi_t = torch.as_tensor(hi, dtype=torch.float32, device=device)
    step = (hi_t - lo_t) / (torch.as_tensor(shape, dtype=torch.float32, device=device) - 1)
    _, ny, nz = shape
    total = math.prod(shape)
    density = np.empty(total, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, total, chunk_points):
            flat = torch.arange(start, min(start + chunk_points, total), device=device)
            index = torch.stack((flat // (ny * nz), (flat // nz) % ny, flat % nz), dim=-1)
            points = lo_t + index.to(torch.float32) * step
            sigma, _ = _call(fn, points)
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
            _, rgb = _call(fn, chunk)
            albedo[start : start + len(chunk)] = rgb.cpu().numpy()
    return np.clip(np.nan_to_num(albedo, nan=0.0), 0.0, 1.0)


def _call(fn: QueryFn, points: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``fn`` and check its output shapes, so a wrong field fails here with a readable message."""
    density, albedo = fn(points)
    n = points.shape[0]
    if tuple(density.shape) != (n,):
        raise ValueError(f"query function returned density of shape {tuple(density.shape)}, expected ({n},)")
    if tuple(albedo.shape) != (n, 3):
        raise ValueError(f"query function returned albedo of shape {tuple(albedo.shape)}, expected ({n}, 3)")
    return density.float(), albedo.float()


def _grid_shape(resolution: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(resolution, (int, np.integer)):
        shape = (int(resolution),) * 3
    else:
        shape = tuple(int(r) for r in resolution)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"grid resolution must be >= 2 samples on each of 3 axes, got {resolution}")
    return shape  # type: ignore[return-value]


def _finite(density: np.ndarray) -> np.ndarray:
    # Marching cubes interpolates between samples, so NaN/inf would put vertices at NaN.
    return np.nan_to_num(density, copy=False, nan=0.0, posinf=np.finfo(np.float32).max, neginf=0.0)


def _check_chunk(chunk_points: int) -> None:
    if chunk_points < 1:
        raise ValueError(f"chunk_points must be >= 1, got {chunk_points}")


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def extract_mesh(
    fn: QueryFn, config: MeshConfig, bound: float = 1.0, device: torch.device | str = "cpu"
) -> trimesh.Trimesh:
    """Mesh the iso-surface ``density = config.density_threshold`` of a field in ``[-bound, bound]^3``.

    Returns a watertight-where-possible mesh whose faces point outward, coloured by vertex (RGBA uint8)
    or textured (UV + baked PNG) per ``config.texture``. Raises :class:`NoSurfaceError` when no grid
    sample exceeds the threshold. Objects thinner than a coarse cell can be missed by the coarse pass.
    """
    check_mesh_config(config, bound)
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
    mesh = _drop_small_components(mesh, config.min_component_fraction)

    if config.texture == "uv":
        return _bake_texture(mesh, fn, config, device)
    albedo = query_albedo(fn, mesh.vertices, config.chunk_points, device)
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_rgba8(albedo))
    return mesh


def check_mesh_config(config: MeshConfig, bound: float) -> None:
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


def no_surface_error(density: np.ndarray, threshold: float, where: str) -> NoSurfaceError:
    return NoSurfaceError(
        f"no surface found: max density {float(density.max()):.4g} on the {where} does not exceed "
        f"the threshold {threshold:.4g} (mesh.density_threshold)"
    )


def occupied_box(occupied: np.ndarray, box_lo: np.ndarray, box_hi: np.ndarray) -> tuple[np.ndarray, ...]:
    """World-space bounding box of occupied coarse samples, padded and clipped to the scene box."""
    step = (box_hi - box_lo) / (np.array(occupied.shape) - 1)
    index = np.argwhere(occupied)
    lo = box_lo + (index.min(axis=0) - _COARSE_PAD_CELLS) * step
    hi = box_lo + (index.max(axis=0) + _COARSE_PAD_CELLS) * step
    return np.maximum(lo, box_lo), np.minimum(hi, box_hi)


def fine_grid(
    lo: np.ndarray, hi: np.ndarray, resolution: int
) -> tuple[tuple[int, int, int], np.ndarray, float]:
    """Grid with ``resolution`` samples along the longest side and the same voxel size on the others.

    Shorter sides get ``floor(extent / voxel) + 1`` samples, centred in the box, so the grid never leaves
    the (already padded) box; it loses less than half a voxel at each end.
    """
    extent = hi - lo
    voxel = float(extent.max()) / (resolution - 1)
    counts = np.maximum(np.floor(extent / voxel + 1e-6).astype(int) + 1, 2)
    lo = (lo + hi) / 2 - (counts - 1) * voxel / 2
    return (int(counts[0]), int(counts[1]), int(counts[2])), lo, voxel


def _drop_small_components(mesh: trimesh.Trimesh, min_fraction: float) -> trimesh.Trimesh:
    """Remove connected components with fewer faces than ``min_fraction`` of the largest one."""
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(mesh.faces))
    sizes = np.bincount(labels)
    keep = sizes >= min_fraction * sizes.max()
    if keep.all():
        return mesh
    mesh.update_faces(keep[labels])
    mesh.remove_unreferenced_vertices()
    return mesh


def _rgba8(albedo: np.ndarray) -> np.ndarray:
    rgb = np.round(albedo * 255.0).astype(np.uint8)
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, dtype=np.uint8)], axis=1)


# --------------------------------------------------------------------------------------------------
# UV texture baking
# --------------------------------------------------------------------------------------------------


def _bake_texture(
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
    vertices = mesh.vertices[vmapping]
    image = _bake_albedo(vertices, faces.astype(np.int64), uv, fn, config, device)
    material = trimesh.visual.material.PBRMaterial(
        name="material", baseColorTexture=Image.fromarray(image), metallicFactor=0.0, roughnessFactor=1.0
    )
    visual = trimesh.visual.TextureVisuals(uv=uv, material=material)
    return trimesh.Trimesh(vertices=vertices, faces=faces, visual=visual, process=False)


def _bake_albedo(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    fn: QueryFn,
    config: MeshConfig,
    device: torch.device | str,
) -> np.ndarray:
    """Rasterize triangles in UV space and query the albedo at each covered texel's 3D point.

    Image rows run top to bottom while ``v`` runs bottom to top (OpenGL/trimesh convention), hence the
    flip. Texels outside every chart take the colour of the nearest covered texel, which hides seams at
    every mip level (filtering never mixes in a background colour).
    """
    size = config.texture_size
    if torch.device(device).type == "cuda":
        from att3d.backends import bake_uv_texture, nvdiffrast_status

        if nvdiffrast_status() is None:  # nvdiffrast rasterizes in UV space on the GPU, same conventions
            return bake_uv_texture(vertices, faces, uv, lambda p: _call(fn, p)[1], size, device)
    pixels = np.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], axis=-1)
    texel, face, bary = _rasterize(pixels[faces], size)
    points = np.einsum("nk,nkd->nd", bary, vertices[faces[face]])
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


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def mesh_to_bytes(mesh: trimesh.Trimesh, fmt: str) -> bytes:
    """Serialize to ``glb``, ``ply`` (binary; a texture is resampled to vertex colours) or ``obj``.

    ``obj`` is a zip archive holding ``mesh.obj`` (vertex colours as ``v x y z r g b``) and, for a
    textured mesh, ``material.mtl`` and ``material.png``.
    """
    if fmt == "glb":
        return _glb_bytes(mesh)
    if fmt == "ply":
        return _ply_bytes(mesh)
    if fmt == "obj":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in _obj_files(mesh, "mesh.obj", "material").items():
                # A fixed timestamp keeps the archive byte-identical for the same mesh (cacheable).
                archive.writestr(zipfile.ZipInfo(name, date_time=_ZIP_DATE), data)
        return buffer.getvalue()
    raise ValueError(f"unknown mesh format {fmt!r}; supported: {', '.join(MESH_FORMATS)}")


def mesh_format(path: str | os.PathLike[str]) -> str:
    """The format (``glb``, ``ply`` or ``obj``) :func:`write_mesh` uses for ``path``, from its extension.

    Raises ``ValueError`` naming the extension and the supported ones; cheap, so callers can check an
    output path before spending time on extraction.
    """
    suffix = Path(path).suffix
    fmt = _EXTENSION_FORMATS.get(suffix.lower())
    if fmt is None:
        raise ValueError(
            f"unsupported mesh file extension {suffix or '(none)'!r} in {str(path)!r}; "
            f"supported: {', '.join(_EXTENSION_FORMATS)}"
        )
    return fmt


def write_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike[str]) -> list[Path]:
    """Write ``mesh`` to ``path``; the extension picks the format. Returns the files written.

    ``.glb``, ``.ply``, ``.zip`` (the OBJ archive of :func:`mesh_to_bytes`), or ``.obj``, which writes
    ``name.obj`` beside ``name.mtl`` and ``name.png`` when textured. Every file is written atomically, so
    a failure never leaves an empty or partial file.
    """
    path = Path(path)
    fmt = mesh_format(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"output directory does not exist: {path.parent}")
    if path.suffix.lower() != ".obj":
        write_bytes_atomic(path, mesh_to_bytes(mesh, fmt))
        return [path]
    files = _obj_files(mesh, path.name, path.stem)
    # The OBJ goes last so it never references a material file that is not there yet.
    names = sorted(files, key=lambda name: name == path.name)
    for name in names:
        write_bytes_atomic(path.with_name(name), files[name])
    return [path.with_name(name) for name in names]


def _glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.gltf.export_glb(
        mesh, include_normals=True, unitize_normals=True, tree_postprocessor=_set_buffer_view_targets
    )


def _set_buffer_view_targets(tree: dict) -> None:
    """Mark vertex and index buffer views with their GPU target (the validator hints when missing)."""
    accessors, views = tree.get("accessors", []), tree.get("bufferViews", [])
    targets: dict[int, set[int]] = {}
    for gltf_mesh in tree.get("meshes", []):
        for primitive in gltf_mesh.get("primitives", []):
            uses = [(a, _GLTF_ARRAY_BUFFER) for a in primitive.get("attributes", {}).values()]
            if "indices" in primitive:
                uses.append((primitive["indices"], _GLTF_ELEMENT_ARRAY_BUFFER))
            for accessor, target in uses:
                view = accessors[accessor].get("bufferView")
                if view is not None:
                    targets.setdefault(view, set()).add(target)
    for view, kinds in targets.items():
        if len(kinds) == 1:  # a view shared by vertices and indices cannot have one target
            views[view]["target"] = kinds.pop()


def _ply_bytes(mesh: trimesh.Trimesh) -> bytes:
    if isinstance(mesh.visual, trimesh.visual.TextureVisuals):
        # PLY has no standard texture reference: sample the texture at the vertices instead.
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, visual=mesh.visual.to_color(), process=False)
    return trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=True)


def _obj_files(mesh: trimesh.Trimesh, obj_name: str, material_stem: str) -> dict[str, bytes]:
    """OBJ text plus, when textured, ``{material_stem}.mtl`` and ``{material_stem}.png``."""
    textured = isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    if textured:
        # trimesh names the MTL entry and the image after the material. Kd multiplies map_Kd in OBJ
        # viewers, so it is white; no specular term, the texture is plain albedo.
        image = getattr(mesh.visual.material, "baseColorTexture", None) or mesh.visual.material.image
        material = trimesh.visual.material.SimpleMaterial(
            image=image, diffuse=_WHITE, ambient=_WHITE, specular=(0, 0, 0, 255), name=material_stem
        )
        visual = trimesh.visual.TextureVisuals(uv=mesh.visual.uv, material=material)
        mesh = trimesh.Trimesh(mesh.vertices, mesh.faces, visual=visual, process=False)
    text, extra = trimesh.exchange.obj.export_obj(
        mesh,
        include_normals=True,
        include_color=True,
        include_texture=True,
        return_texture=True,
        mtl_name=f"{material_stem}.mtl",
        header=None,
    )
    files = {obj_name: text.encode()}
    if textured:
        expected = {f"{material_stem}.mtl", f"{material_stem}.png"}
        # trimesh swallows material errors and writes an untextured OBJ: refuse that silently wrong file.
        if set(extra) != expected:
            raise RuntimeError(f"OBJ export produced {sorted(extra)} instead of {sorted(expected)}")
        files.update(extra)
    return files
