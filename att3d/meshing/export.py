"""Export: meshes to GLB, PLY or OBJ bytes and files, and a walk's frames to one zip.

GLB output is validated with the Khronos glTF validator in the tests. :func:`mesh_to_bytes` is
deterministic (the OBJ zip carries fixed timestamps), so the same mesh always gives the same bytes.

Up axis: the world is +z up; each format is written in its own convention so that an object stands upright
where people open it. glTF/GLB is +y up by specification and OBJ by common practice (Blender's and most
viewers' OBJ import), so both get the world turned by -90° about +x: ``(x, y, z) -> (x, z, -y)``, a proper
rotation (winding and normals stay outward). PLY has no convention; it keeps the world's +z up, as
point-cloud and CAD tools (and Blender, which is +z up) read it.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh

from att3d.atomic import write_bytes_atomic

MESH_FORMATS = ("glb", "ply", "obj")
"""Formats :func:`mesh_to_bytes` produces (``obj`` is a zip of the OBJ, its MTL and texture)."""

# File extension → format for write_mesh. ".obj" writes loose files beside each other, ".zip" the archive.
_EXTENSION_FORMATS = {".glb": "glb", ".ply": "ply", ".obj": "obj", ".zip": "obj"}

# glTF bufferView targets (ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER).
_GLTF_ARRAY_BUFFER = 34962
_GLTF_ELEMENT_ARRAY_BUFFER = 34963

Y_UP_FROM_Z_UP = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
"""World (+z up) to glTF/OBJ (+y up): -90° about +x."""

_WHITE = (255, 255, 255, 255)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


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


def y_up(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """A copy of ``mesh`` (world, +z up) turned into the +y-up frame of glTF and OBJ.

    Built directly rather than by ``copy()`` + ``apply_transform``: the rotation is an axis swap, and
    handing the turned vertex normals to the new mesh spares trimesh recomputing them from the faces
    (~0.1 s at 128³, issue #16). The faces are shared, not copied (the exporters only read them).
    """
    return trimesh.Trimesh(
        vertices=_turned(mesh.vertices),
        faces=mesh.faces,
        vertex_normals=_turned(mesh.vertex_normals),
        visual=_visual_copy(mesh.visual),
        process=False,
    )


def _turned(xyz: np.ndarray) -> np.ndarray:
    """``xyz @ Y_UP_FROM_Z_UP[:3, :3].T`` as the axis swap it is, ``(x, z, -y)``: the same values (products
    with 0 and ±1 are exact; zeros come out +0, never -0) at a tenth of a 3x3 matrix product's time (~7 ms
    per array at 128³)."""
    return np.column_stack((xyz[:, 0] + 0.0, xyz[:, 2] + 0.0, 0.0 - xyz[:, 1]))


def _visual_copy(visual):
    """A copy of ``visual``; vertex colours are copied alone, because ``ColorVisuals.copy`` first derives
    per-face colours from them (~14 ms for a 64³ mesh) that no exporter reads from a vertex-coloured mesh."""
    if isinstance(visual, trimesh.visual.ColorVisuals) and visual.kind == "vertex":
        return trimesh.visual.ColorVisuals(vertex_colors=visual.vertex_colors.copy())
    return visual.copy()


def _glb_bytes(mesh: trimesh.Trimesh) -> bytes:
    return trimesh.exchange.gltf.export_glb(
        y_up(mesh), include_normals=True, unitize_normals=True, tree_postprocessor=_set_buffer_view_targets
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
    """OBJ text (+y up) plus, when textured, ``{material_stem}.mtl`` and ``{material_stem}.png``."""
    mesh = y_up(mesh)
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


def frames_zip(
    meshes: Sequence[trimesh.Trimesh],
    fmt: str,
    prompts: Sequence[str],
    walk: Sequence[Sequence[float]],
) -> bytes:
    """A zip of ``frame_000.<fmt>`` ... (one per mesh) plus ``frames.json`` with each frame's weights.

    ``walk[i]`` holds frame ``i``'s weights over ``prompts``. An OBJ frame is itself several files, so it
    goes into a folder ``frame_000/`` instead.
    """
    buffer = io.BytesIO()
    index = []
    # Level 1: mesh floats barely compress, so a higher level costs time for nothing.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for i, (weights, mesh) in enumerate(zip(walk, meshes, strict=True)):
            data = mesh_to_bytes(mesh, fmt)
            stem = f"frame_{i:03d}"
            if fmt == "obj":
                with zipfile.ZipFile(io.BytesIO(data)) as inner:
                    for name in inner.namelist():
                        archive.writestr(f"{stem}/{name}", inner.read(name))
                index.append({"path": f"{stem}/", "weights": list(weights)})
            else:
                archive.writestr(f"{stem}.{fmt}", data)
                index.append({"path": f"{stem}.{fmt}", "weights": list(weights)})
        manifest = {"prompts": list(prompts), "format": fmt, "frames": index}
        archive.writestr("frames.json", json.dumps(manifest, indent=2) + "\n")
    return buffer.getvalue()
