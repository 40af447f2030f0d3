"""Export (``att3d.meshing.export``): GLB/PLY/OBJ bytes and files, round trips, the Khronos validator."""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import replace

import numpy as np
import pytest
import trimesh
from meshing_fields import CONFIG, away_from_seam, expected_rgba, sphere_field
from PIL import Image

from att3d.meshing.dense import extract_mesh
from att3d.meshing.export import Y_UP_FROM_Z_UP, frames_zip, mesh_format, mesh_to_bytes, write_mesh

from gltf_validator import ERROR, assert_valid_glb, messages, validate_glb


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return extract_mesh(sphere_field(), CONFIG)


@pytest.fixture(scope="module")
def uv_mesh() -> trimesh.Trimesh:
    config = replace(CONFIG, resolution=32, texture="uv", texture_size=256)
    return extract_mesh(sphere_field(), config)


def test_unknown_extension_is_rejected_before_any_work(tmp_path):
    # `None` is not a mesh: only an up-front extension check can produce this error.
    with pytest.raises(
        ValueError, match=r"unsupported mesh file extension '\.stl'.*\.glb, \.ply, \.obj, \.zip"
    ):
        write_mesh(None, tmp_path / "model.stl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"extension '\(none\)'"):
        mesh_format(tmp_path / "model")
    with pytest.raises(ValueError, match=r"unknown mesh format 'stl'; supported: glb, ply, obj"):
        mesh_to_bytes(trimesh.creation.box(), "stl")
    assert list(tmp_path.iterdir()) == []
    assert mesh_format("A.GLB") == "glb" and mesh_format("a.zip") == "obj"


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, sphere_mesh, monkeypatch):
    out = tmp_path / "model.glb"
    out.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_mesh(sphere_mesh, out)
    assert out.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.glb"]


@pytest.mark.parametrize("suffix", [".glb", ".ply", ".obj", ".zip"])
def test_geometry_and_colours_survive_a_round_trip(tmp_path, sphere_mesh, suffix):
    path = tmp_path / f"sphere{suffix}"
    write_mesh(sphere_mesh, path)
    loaded = trimesh.load(path, process=False, force="mesh")
    # GLB and OBJ are +y up (glTF's rule, OBJ's custom), PLY keeps the world's +z up.
    expected = sphere_mesh.vertices if suffix == ".ply" else sphere_mesh.vertices @ Y_UP_FROM_Z_UP[:3, :3].T
    np.testing.assert_allclose(loaded.vertices, expected, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, sphere_mesh.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors, sphere_mesh.visual.vertex_colors)


def test_obj_stores_vertex_colours_on_v_lines(tmp_path, sphere_mesh):
    written = write_mesh(sphere_mesh, tmp_path / "sphere.obj")
    assert written == [tmp_path / "sphere.obj"]
    first = next(line for line in (tmp_path / "sphere.obj").read_text().splitlines() if line.startswith("v "))
    values = [float(v) for v in first.split()[1:]]
    assert len(values) == 6  # v x y z r g b
    x, y, z = values[:3]  # +y up: the world point is (x, -z, y)
    assert values[3:] == pytest.approx(expected_rgba(np.array([[x, -z, y]]))[0, :3] / 255.0)


@pytest.mark.parametrize(("fmt", "up"), [("glb", 1), ("obj", 1), ("ply", 2)])
def test_a_cone_stands_upright_in_each_formats_convention(fmt, up):
    # The world is +z up; a cone's apex points up. glTF (and OBJ by custom) is +y up; PLY keeps +z.
    cone = trimesh.creation.cone(radius=0.3, height=0.8)  # base at z = 0, apex at z = 0.8
    cone.visual.vertex_colors = (200, 40, 40, 255)
    data = mesh_to_bytes(cone, fmt)
    if fmt == "obj":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            data = archive.read("mesh.obj")
    loaded = trimesh.load(io.BytesIO(data), file_type=fmt, process=False, force="mesh")
    apex = loaded.vertices[np.argmax(loaded.vertices[:, up])]
    assert loaded.vertices[:, up].max() == pytest.approx(0.8, abs=1e-6)
    assert loaded.vertices[:, up].min() == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(np.delete(apex, up), 0.0, atol=1e-6)  # the apex is on the up axis
    assert loaded.volume == pytest.approx(cone.volume, rel=1e-5)  # a rotation: still outward, same size
    if fmt == "glb":
        assert_valid_glb(data)


def test_glb_passes_the_khronos_validator(sphere_mesh):
    report = assert_valid_glb(mesh_to_bytes(sphere_mesh, "glb"), allow_warnings=False)
    assert report["info"]["totalTriangleCount"] == len(sphere_mesh.faces)
    assert report["info"]["maxAttributes"] == 3  # POSITION, NORMAL, COLOR_0


def test_validator_helper_fails_on_an_invalid_glb():
    def wrong_bounds(tree):
        tree["accessors"][tree["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["max"] = [0, 0, 0]

    data = trimesh.exchange.gltf.export_glb(trimesh.creation.box(), tree_postprocessor=wrong_bounds)
    assert any(m.startswith("ACCESSOR_MAX_MISMATCH") for m in messages(validate_glb(data), ERROR))
    with pytest.raises(pytest.fail.Exception, match="ACCESSOR_MAX_MISMATCH"):
        assert_valid_glb(data)


def test_uv_mesh_exports(tmp_path, uv_mesh):
    glb = mesh_to_bytes(uv_mesh, "glb")
    report = assert_valid_glb(glb, allow_warnings=False)
    assert report["info"]["hasTextures"] and report["info"]["maxUVs"] == 1
    loaded = trimesh.load(io.BytesIO(glb), file_type="glb", process=False, force="mesh")
    assert loaded.visual.material.baseColorTexture.size == (256, 256)

    with zipfile.ZipFile(io.BytesIO(mesh_to_bytes(uv_mesh, "obj"))) as archive:
        assert sorted(archive.namelist()) == ["material.mtl", "material.png", "mesh.obj"]
        assert "map_Kd material.png" in archive.read("material.mtl").decode()
        assert archive.read("mesh.obj").decode().startswith("mtllib material.mtl")
        assert Image.open(io.BytesIO(archive.read("material.png"))).size == (256, 256)

    written = write_mesh(uv_mesh, tmp_path / "ball.obj")
    assert sorted(p.name for p in written) == ["ball.mtl", "ball.obj", "ball.png"]
    assert written[-1] == tmp_path / "ball.obj"  # the OBJ is written last
    assert "map_Kd ball.png" in (tmp_path / "ball.mtl").read_text()
    loaded = trimesh.load(tmp_path / "ball.obj", process=False, force="mesh")
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)

    # PLY has no texture reference: the texture is resampled to vertex colours.
    ply = trimesh.load(io.BytesIO(mesh_to_bytes(uv_mesh, "ply")), file_type="ply", process=False)
    keep = away_from_seam(ply.vertices)
    matches = (ply.visual.vertex_colors[keep] == expected_rgba(ply.vertices[keep])).all(axis=1)
    assert matches.mean() > 0.95


def test_written_files_hold_exactly_the_serialized_bytes(tmp_path, sphere_mesh):
    for suffix in (".glb", ".ply", ".zip"):
        path = tmp_path / f"m{suffix}"
        assert write_mesh(sphere_mesh, path) == [path]
        # Serialization is deterministic (the zip carries fixed timestamps), so bytes compare exactly.
        assert path.read_bytes() == mesh_to_bytes(sphere_mesh, mesh_format(path))


@pytest.mark.parametrize("fmt", ["glb", "obj"])
def test_frames_zip_holds_one_entry_per_frame_and_the_weights(fmt):
    meshes = [trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=1)]
    walk = [(1.0, 0.0), (0.25, 0.75)]
    with zipfile.ZipFile(io.BytesIO(frames_zip(meshes, fmt, ["a cube", "a ball"], walk))) as archive:
        manifest = json.loads(archive.read("frames.json"))
        if fmt == "obj":  # an OBJ frame is several files: one folder per frame
            assert archive.read("frame_001/mesh.obj") == zipfile.ZipFile(
                io.BytesIO(mesh_to_bytes(meshes[1], "obj"))
            ).read("mesh.obj")
            paths = ["frame_000/", "frame_001/"]
        else:
            assert archive.read("frame_001.glb") == mesh_to_bytes(meshes[1], "glb")
            paths = ["frame_000.glb", "frame_001.glb"]
    assert manifest == {
        "prompts": ["a cube", "a ball"],
        "format": fmt,
        "frames": [{"path": p, "weights": list(w)} for p, w in zip(paths, walk, strict=True)],
    }
