"""Dense mesh extraction (``att3d.meshing.dense``) against analytic fields whose surface and colours are
known exactly: geometry, floaters, errors, vertex colours and the baked UV texture."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from meshing_fields import (
    CONFIG,
    SLOPE,
    THRESHOLD,
    VOXEL,
    assert_faces_point_to_lower_density,
    away_from_seam,
    box_field,
    empty_field,
    expected_rgba,
    sphere_field,
    two_tone,
    union,
)

from att3d.config import ConfigError
from att3d.meshing.dense import extract_mesh
from att3d.meshing.errors import NoSurfaceError
from att3d.meshing.export import write_mesh
from att3d.meshing.grid import fine_grid


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    return extract_mesh(sphere_field(), CONFIG)


@pytest.fixture(scope="module")
def uv_mesh() -> trimesh.Trimesh:
    config = replace(CONFIG, resolution=32, texture="uv", texture_size=256)
    return extract_mesh(sphere_field(), config)


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
    inward = mesh.vertices - config.color_depth * mesh.vertex_normals  # read below the surface
    np.testing.assert_allclose(vertices, inward, atol=1e-6)
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
    shape, lo, voxel = fine_grid(np.array([-0.5, -0.2, 0.0]), np.array([0.5, 0.2, 0.1]), 11)
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
        ({"texture": "png"}, "mesh.texture: must be one of vertex, uv, got 'png'"),
        ({"resolution": 1}, "mesh.resolution: must be in [2, 1024], got 1"),
        ({"density_threshold": 0.0}, "mesh.density_threshold: must be > 0"),
        ({"min_component_fraction": 1.5}, "mesh.min_component_fraction: must be in [0, 1]"),
    ],
)
def test_bad_config_is_rejected_by_name(change, message):
    with pytest.raises(ConfigError) as error:
        extract_mesh(sphere_field(), replace(CONFIG, **change))
    assert message in str(error.value)


def test_non_positive_bound_is_rejected():
    with pytest.raises(ConfigError, match=r"^bound must be > 0, got 0"):
        extract_mesh(sphere_field(), CONFIG, bound=0.0)


def test_vertex_colours_are_the_albedo_at_the_vertices(sphere_mesh):
    colours = sphere_mesh.visual.vertex_colors
    keep = away_from_seam(sphere_mesh.vertices)
    assert colours.dtype == np.uint8 and colours.shape == (len(sphere_mesh.vertices), 4)
    np.testing.assert_array_equal(colours[keep], expected_rgba(sphere_mesh.vertices[keep]))
    assert keep.mean() > 0.95


def shelled_sphere(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A sphere of radius 0.5 whose outer 0.01 is white and whose inside is steel blue: a soft surface
    whose faint outer layer has another colour than the layer renders show."""
    density, _ = sphere_field()(points)
    albedo = torch.tensor([0.2, 0.4, 0.6]).expand(len(points), 3).clone()
    albedo[points.norm(dim=-1) > 0.49] = 1.0
    return density, albedo


@pytest.mark.parametrize("texture", ["vertex", "uv"])
def test_colours_are_read_color_depth_below_the_surface(texture):
    config = replace(CONFIG, resolution=32, texture=texture, texture_size=128)
    assert config.color_depth == pytest.approx(0.03)  # the default: past the white shell

    def colours(mesh: trimesh.Trimesh) -> np.ndarray:
        if texture == "vertex":
            return mesh.visual.vertex_colors[:, :3]
        image = np.asarray(mesh.visual.material.baseColorTexture)
        return sample_texture(image, mesh.visual.uv[mesh.faces].mean(axis=1))

    inside = colours(extract_mesh(shelled_sphere, config))
    assert (inside == [51, 102, 153]).all(axis=1).mean() > 0.98
    at_surface = colours(extract_mesh(shelled_sphere, replace(config, color_depth=0.0)))
    assert (at_surface == [255, 255, 255]).all(axis=1).mean() > 0.98


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
