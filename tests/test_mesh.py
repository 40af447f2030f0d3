"""Mesh extraction and export against analytic fields whose surface and colours are known exactly."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import att3d.mesh as mesh_module
from att3d.config import ConfigError, MeshConfig
from att3d.mesh import (
    NoSurfaceError,
    extract_mesh,
    mesh_format,
    mesh_to_bytes,
    query_albedo,
    query_grid,
    write_mesh,
)

from gltf_validator import ERROR, assert_valid_glb, messages, validate_glb

THRESHOLD = MeshConfig().density_threshold
SLOPE = 100.0  # density per world unit across the surface: a linear ramp that marching cubes recovers
RED = (1.0, 0.0, 0.0)
STEEL = (0.2, 0.4, 0.6)  # exact in uint8: 51, 102, 153
CONFIG = MeshConfig(resolution=48, coarse_resolution=32, chunk_points=8192)
# Upper bound of the fine voxel size in the unit scene box (the fine grid spans at most the whole box).
VOXEL = 2.0 / (CONFIG.resolution - 1)

Field = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def two_tone(points: torch.Tensor) -> torch.Tensor:
    """Red albedo where x > 0, steel blue elsewhere."""
    albedo = torch.tensor(STEEL).expand(len(points), 3).clone()
    albedo[points[:, 0] > 0] = torch.tensor(RED)
    return albedo


def sphere_field(radius: float = 0.5, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Field:
    def fn(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distance = (points - torch.tensor(centre)).norm(dim=-1)
        return torch.relu(THRESHOLD + SLOPE * (radius - distance)), two_tone(points)

    return fn


def box_field(half: tuple[float, float, float]) -> Field:
    def fn(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outside = (points.abs() - torch.tensor(half)).amax(dim=-1)
        return torch.relu(THRESHOLD - SLOPE * outside), two_tone(points)

    return fn


def union(*fields: Field) -> Field:
    def fn(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density = torch.stack([f(points)[0] for f in fields]).amax(dim=0)
        return density, two_tone(points)

    return fn


def empty_field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(len(points)), torch.zeros(len(points), 3)


def expected_rgba(vertices: np.ndarray) -> np.ndarray:
    return np.where(vertices[:, :1] > 0, [255, 0, 0, 255], [51, 102, 153, 255])


def assert_faces_point_to_lower_density(mesh: trimesh.Trimesh, fn: Field, step: float = 0.01) -> None:
    centres = torch.tensor(mesh.triangles_center, dtype=torch.float32)
    normals = torch.tensor(mesh.face_normals, dtype=torch.float32)
    outside, _ = fn(centres + step * normals)
    inside, _ = fn(centres - step * normals)
    assert (outside < inside).all(), f"{int((outside >= inside).sum())} faces point inwards"


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return extract_mesh(sphere_field(), CONFIG)


@pytest.fixture(scope="module")
def uv_mesh() -> trimesh.Trimesh:
    config = replace(CONFIG, resolution=32, texture="uv", texture_size=256)
    return extract_mesh(sphere_field(), config)


# --------------------------------------------------------------------------------------------------
# Grid query
# --------------------------------------------------------------------------------------------------


def test_query_grid_matches_direct_evaluation_in_ij_order():
    lo, hi, shape = (-1.0, -0.5, 0.0), (1.0, 0.5, 0.8), (3, 4, 5)
    grid = query_grid(sphere_field(), lo, hi, shape, chunk_points=7)
    axes = [np.linspace(a, b, n) for a, b, n in zip(lo, hi, shape, strict=True)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    expected = np.maximum(THRESHOLD + SLOPE * (0.5 - np.linalg.norm(points, axis=-1)), 0.0)
    assert grid.shape == shape and grid.dtype == np.float32
    np.testing.assert_allclose(grid.reshape(-1), expected, rtol=1e-5, atol=1e-4)


def test_query_rejects_fields_with_wrong_output_shapes():
    def column_density(points):
        return torch.ones(len(points), 1), torch.zeros(len(points), 3)

    def rgba_albedo(points):
        return torch.ones(len(points)), torch.zeros(len(points), 4)

    with pytest.raises(ValueError, match=r"density of shape \(8, 1\), expected \(8,\)"):
        query_grid(column_density, (0, 0, 0), (1, 1, 1), 2, chunk_points=100)
    with pytest.raises(ValueError, match=r"albedo of shape \(5, 4\), expected \(5, 3\)"):
        query_albedo(rgba_albedo, np.zeros((5, 3)), chunk_points=100)


def test_non_finite_densities_are_made_finite():
    def nan_field(points):
        density = torch.full((len(points),), float("nan"))
        density[0] = float("inf")
        return density, torch.zeros(len(points), 3)

    grid = query_grid(nan_field, (0, 0, 0), (1, 1, 1), 2, chunk_points=100)
    assert np.isfinite(grid).all()
    assert grid.reshape(-1)[0] > 1e30 and (grid.reshape(-1)[1:] == 0).all()


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def test_sphere_vertices_lie_on_the_surface_and_faces_point_outward(sphere_mesh):
    radius = np.linalg.norm(sphere_mesh.vertices, axis=1)
    assert np.abs(radius - 0.5).max() < VOXEL
    assert sphere_mesh.is_watertight
    assert sphere_mesh.volume == pytest.approx(4 / 3 * np.pi * 0.5**3, rel=0.02)  # > 0: outward winding
    assert_faces_point_to_lower_density(sphere_mesh, sphere_field())


def test_box_vertices_lie_on_the_box():
    half = (0.4, 0.3, 0.2)
    mesh = extract_mesh(box_field(half), CONFIG)
    outside = (np.abs(mesh.vertices) - half).max(axis=1)
    assert np.abs(outside).max() < VOXEL
    np.testing.assert_allclose(mesh.bounds, [[-0.4, -0.3, -0.2], [0.4, 0.3, 0.2]], atol=VOXEL)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(8 * 0.4 * 0.3 * 0.2, rel=0.03)
    assert_faces_point_to_lower_density(mesh, box_field(half))


def test_surface_cut_by_the_scene_box_is_closed():
    # A bar longer than the scene box: the padded grid must cap it at x = ±1.
    mesh = extract_mesh(box_field((1.5, 0.25, 0.25)), CONFIG)
    assert mesh.is_watertight
    assert mesh.bounds[0, 0] == pytest.approx(-1.0, abs=VOXEL)
    assert mesh.bounds[1, 0] == pytest.approx(1.0, abs=VOXEL)
    assert mesh.volume == pytest.approx(2.0 * 0.5 * 0.5, rel=0.05)


def test_fine_pass_samples_only_the_padded_occupied_box_with_isotropic_voxels():
    calls = []
    half = (0.4, 0.2, 0.1)
    field = box_field(half)

    def recording(points):
        calls.append(points.numpy().copy())
        return field(points)

    config = replace(CONFIG, resolution=32, coarse_resolution=24, chunk_points=10**6)
    mesh = extract_mesh(recording, config)
    coarse, fine, vertices = calls  # one chunk per pass, then the vertex albedo query
    assert len(coarse) == 24**3 and coarse.min() == -1.0 and coarse.max() == 1.0
    np.testing.assert_allclose(vertices, mesh.vertices, atol=1e-6)
    coarse_step = 2.0 / 23
    steps = []
    for axis, h in enumerate(half):
        values = np.unique(fine[:, axis])
        assert values.min() >= -h - 3 * coarse_step and values.max() <= h + 3 * coarse_step
        assert values.min() < -h and values.max() > h
        steps.append(np.diff(values))
    assert len(np.unique(fine[:, 0])) == 32  # the longest side gets `resolution` samples
    np.testing.assert_allclose(np.concatenate(steps), steps[0][0], rtol=1e-4)


def test_fine_grid_is_isotropic_inside_the_occupied_box():
    shape, lo, voxel = mesh_module.fine_grid(np.array([-0.5, -0.2, 0.0]), np.array([0.5, 0.2, 0.1]), 11)
    assert shape == (11, 5, 2)
    assert voxel == pytest.approx(0.1)
    np.testing.assert_allclose(lo, [-0.5, -0.2, 0.0], atol=1e-12)
    assert np.all(lo + (np.array(shape) - 1) * voxel <= [0.5 + 1e-12, 0.2 + 1e-12, 0.1 + 1e-12])


def test_chunk_size_does_not_change_the_mesh():
    config = replace(CONFIG, resolution=32, coarse_resolution=24)
    small = extract_mesh(sphere_field(), replace(config, chunk_points=1000))
    large = extract_mesh(sphere_field(), replace(config, chunk_points=10**6))
    np.testing.assert_array_equal(small.vertices, large.vertices)
    np.testing.assert_array_equal(small.faces, large.faces)
    np.testing.assert_array_equal(small.visual.vertex_colors, large.visual.vertex_colors)


def test_small_floating_component_is_dropped():
    field = union(sphere_field(), sphere_field(radius=0.08, centre=(0.7, 0.7, 0.7)))
    kept = extract_mesh(field, replace(CONFIG, min_component_fraction=0.01))
    dropped = extract_mesh(field, replace(CONFIG, min_component_fraction=0.05))
    assert len(kept.split(only_watertight=False)) == 2
    assert len(dropped.split(only_watertight=False)) == 1
    assert np.abs(np.linalg.norm(dropped.vertices, axis=1) - 0.5).max() < VOXEL
    assert dropped.is_watertight and len(dropped.vertices) < len(kept.vertices)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_empty_field_raises_no_surface_and_writes_nothing(tmp_path):
    out = tmp_path / "empty.glb"
    with pytest.raises(NoSurfaceError, match=r"^no surface found: max density 0 .*threshold 6\.93"):
        write_mesh(extract_mesh(empty_field, CONFIG), out)
    assert list(tmp_path.iterdir()) == []


def test_no_surface_message_reports_the_max_density_seen():
    def faint(points):
        return torch.full((len(points),), 5.0), torch.zeros(len(points), 3)

    with pytest.raises(NoSurfaceError, match=r"max density 5 .* does not exceed the threshold 6\.93"):
        extract_mesh(faint, CONFIG)
    assert issubclass(NoSurfaceError, ValueError)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"texture": "png"}, "mesh.texture must be 'vertex' or 'uv', got 'png'"),
        ({"resolution": 1}, "mesh.resolution must be >= 2, got 1"),
        ({"density_threshold": 0.0}, "mesh.density_threshold must be > 0"),
        ({"min_component_fraction": 1.5}, "mesh.min_component_fraction must be in [0, 1]"),
    ],
)
def test_bad_config_is_rejected_by_name(change, message):
    with pytest.raises(ConfigError) as error:
        extract_mesh(sphere_field(), replace(CONFIG, **change))
    assert message in str(error.value)


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


# --------------------------------------------------------------------------------------------------
# Colours and export
# --------------------------------------------------------------------------------------------------


def away_from_seam(vertices: np.ndarray) -> np.ndarray:
    """Vertices far enough from the colour change at x = 0 that their expected colour is certain."""
    return np.abs(vertices[:, 0]) > 1e-3


def test_vertex_colours_are_the_albedo_at_the_vertices(sphere_mesh):
    colours = sphere_mesh.visual.vertex_colors
    keep = away_from_seam(sphere_mesh.vertices)
    assert colours.dtype == np.uint8 and colours.shape == (len(sphere_mesh.vertices), 4)
    np.testing.assert_array_equal(colours[keep], expected_rgba(sphere_mesh.vertices[keep]))
    assert keep.mean() > 0.95


@pytest.mark.parametrize("suffix", [".glb", ".ply", ".obj", ".zip"])
def test_geometry_and_colours_survive_a_round_trip(tmp_path, sphere_mesh, suffix):
    path = tmp_path / f"sphere{suffix}"
    write_mesh(sphere_mesh, path)
    loaded = trimesh.load(path, process=False, force="mesh")
    np.testing.assert_allclose(loaded.vertices, sphere_mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, sphere_mesh.faces)
    np.testing.assert_array_equal(loaded.visual.vertex_colors, sphere_mesh.visual.vertex_colors)


def test_obj_stores_vertex_colours_on_v_lines(tmp_path, sphere_mesh):
    written = write_mesh(sphere_mesh, tmp_path / "sphere.obj")
    assert written == [tmp_path / "sphere.obj"]
    first = next(line for line in (tmp_path / "sphere.obj").read_text().splitlines() if line.startswith("v "))
    values = [float(v) for v in first.split()[1:]]
    assert len(values) == 6  # v x y z r g b
    assert values[3:] == pytest.approx(expected_rgba(np.array([values[:3]]))[0, :3] / 255.0)


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


# --------------------------------------------------------------------------------------------------
# UV texture
# --------------------------------------------------------------------------------------------------


def sample_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest texel at ``uv`` (v up, image rows top to bottom)."""
    size = image.shape[0]
    col = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    row = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return image[row, col]


def test_uv_texture_reproduces_the_albedo(uv_mesh):
    assert isinstance(uv_mesh.visual, trimesh.visual.TextureVisuals)
    image = np.asarray(uv_mesh.visual.material.baseColorTexture)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    uv = uv_mesh.visual.uv
    assert uv.shape == (len(uv_mesh.vertices), 2) and uv.min() >= 0 and uv.max() <= 1
    # Every face is charted: no face collapsed to a point in UV space.
    assert (np.ptp(uv[uv_mesh.faces], axis=1).max(axis=1) > 0).all()
    # Texels at UV face centres hold the albedo at the matching 3D points.
    centres_3d = uv_mesh.triangles_center
    keep = away_from_seam(centres_3d)
    colours = sample_texture(image, uv[uv_mesh.faces].mean(axis=1))[keep]
    matches = (colours == expected_rgba(centres_3d[keep])[:, :3]).all(axis=1)
    assert matches.mean() > 0.98
    assert np.abs(np.linalg.norm(uv_mesh.vertices, axis=1) - 0.5).max() < 2.0 / 31


def test_uv_unwrap_charts_every_face_at_any_scale():
    # A 1 cm object: xatlas drops triangles below an absolute area unless the mesh is rescaled first.
    def tiny_sphere(points):
        density = torch.relu(THRESHOLD + 100 * SLOPE * (0.005 - points.norm(dim=-1)))
        return density, two_tone(points)

    config = replace(CONFIG, resolution=24, coarse_resolution=24, texture="uv", texture_size=64)
    mesh = extract_mesh(tiny_sphere, config, bound=0.01)
    assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - 0.005).max() < 0.02 / 23
    assert (np.ptp(mesh.visual.uv[mesh.faces], axis=1).max(axis=1) > 0).all()


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
