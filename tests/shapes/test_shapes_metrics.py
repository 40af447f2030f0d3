"""ShapesWorld metrics on cases with known answers."""

import math

import numpy as np
import pytest
import torch
import trimesh
from skimage.measure import marching_cubes

from att3d.config import EncodingConfig, FieldConfig, ModelConfig
from att3d.field import AmortizedField
from att3d.shapes import world
from att3d.shapes.metrics import (
    DENSITY_THRESHOLD,
    color_error,
    evaluate,
    grid_points,
    ground_truth_query,
    mesh_iou,
    mesh_occupancy,
    nearest_color,
    occupancy_iou,
    surface_points,
    volumetric_iou,
)
from att3d.shapes.world import COLORS, SHAPE_NAMES, ShapeObject


def test_grid_points_and_occupancy_iou():
    points = grid_points(4, bound=1.0)
    assert points.shape == (64, 3)
    torch.testing.assert_close(points[0], torch.tensor([-0.75, -0.75, -0.75]))
    torch.testing.assert_close(points[1], torch.tensor([-0.75, -0.75, -0.25]))  # z varies fastest
    a = torch.tensor([True, True, False, False])
    b = torch.tensor([True, False, True, False])
    assert occupancy_iou(a, b) == pytest.approx(1 / 3)
    assert occupancy_iou(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)) == 1.0
    with pytest.raises(ValueError, match=r"occupancy shapes differ: \(4,\) vs \(3,\)"):
        occupancy_iou(a, b[:3])
    with pytest.raises(ValueError, match="resolution must be an integer >= 2, got 1"):
        grid_points(1)


def test_true_object_scores_perfectly():
    for name in SHAPE_NAMES:
        obj = ShapeObject(name, "cyan")
        assert volumetric_iou(ground_truth_query(obj), obj, resolution=32) == 1.0
    score = color_error(ground_truth_query(obj), obj, n_points=512)
    assert score["correct"] and score["nearest_color_name"] == "cyan"
    assert score["mean_rgb_distance"] < 1e-6
    assert score["mean_albedo"] == pytest.approx(COLORS["cyan"].rgb, abs=1e-6)


def test_wrong_shapes_score_low():
    """Recorded reference: IoU(true sphere, true cube) = 0.713 at 64³, the highest of any pair."""
    sphere, cube = ShapeObject("sphere", "red"), ShapeObject("cube", "red")
    assert volumetric_iou(ground_truth_query(sphere), cube) == pytest.approx(0.713, abs=0.002)
    assert volumetric_iou(ground_truth_query(cube), sphere) == pytest.approx(0.713, abs=0.002)
    for name in SHAPE_NAMES:
        if name not in ("sphere", "cube"):
            other = ShapeObject(name, "red")
            assert volumetric_iou(ground_truth_query(other), cube, resolution=32) < 0.72, name


def test_threshold_on_a_smooth_field():
    """``density = 100·sigmoid(-(sdf - 0.02)/0.005)`` crosses the threshold where
    ``sdf = 0.02 + 0.005·ln(100/6.93 - 1)``: a sphere grown to radius 0.4830, IoU (0.45/0.483)³."""
    sphere = ShapeObject("sphere", "red")

    def field(points):
        return 100 * torch.sigmoid(-(sphere.sdf(points) - 0.02) / 0.005), sphere.rgb.expand(len(points), 3)

    grown = world.SPHERE_RADIUS + 0.02 + 0.005 * math.log(100 / DENSITY_THRESHOLD - 1)
    expected = (world.SPHERE_RADIUS / grown) ** 3
    assert volumetric_iou(field, sphere, resolution=48) == pytest.approx(expected, abs=0.01)
    # Densities below the threshold are empty space, whatever the shape.
    assert volumetric_iou(ground_truth_query(sphere, inside_density=5.0), sphere) == 0.0
    assert volumetric_iou(ground_truth_query(sphere, inside_density=5.0), sphere, threshold=4.0) == 1.0


def test_query_fn_output_is_checked():
    sphere = ShapeObject("sphere", "red")
    with pytest.raises(ValueError, match=r"query_fn must return density \[N\] and albedo \[N, 3\]"):
        volumetric_iou(lambda p: (torch.zeros(len(p), 1), torch.zeros(len(p), 3)), sphere, resolution=8)


def test_mesh_occupancy_is_exact_for_analytic_meshes():
    """A box mesh of the cube's size occupies exactly the cube's cells; the sphere–cube IoU agrees."""
    cube, sphere = ShapeObject("cube", "red"), ShapeObject("sphere", "red")
    box = trimesh.creation.box(extents=(0.7, 0.7, 0.7))
    points = grid_points(64)
    assert np.array_equal(mesh_occupancy(box, 64), cube.occupancy(points).numpy())
    assert mesh_iou(box, sphere) == pytest.approx(0.713, abs=0.002)
    # Off-centre, rotated box: compare with the inside test in the box's own frame.
    transform = trimesh.transformations.rotation_matrix(0.5, [1.0, 2.0, 3.0])
    transform[:3, 3] = [0.1, -0.2, 0.05]
    moved = trimesh.creation.box(extents=(0.6, 0.3, 0.5), transform=transform)
    local = (np.linalg.inv(transform) @ np.c_[points.numpy(), np.ones(len(points))].T).T[:, :3]
    expected = (np.abs(local) <= np.array([0.3, 0.15, 0.25])).all(axis=1)
    assert (mesh_occupancy(moved, 64) != expected).sum() <= 2  # cells within float error of a face


def test_mesh_iou_of_meshed_shapes():
    """Meshes of the true shapes score close to 1; a torus needs four crossings per column."""
    torus = trimesh.creation.torus(world.TORUS_MAJOR, world.TORUS_MINOR, major_sections=96, minor_sections=48)
    assert mesh_iou(torus, ShapeObject("torus", "red")) > 0.97
    pyramid = ShapeObject("pyramid", "red")
    axis = np.linspace(-0.7, 0.7, 56)  # no sample exactly on a face: marching cubes stays watertight
    grid = torch.tensor(np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1), dtype=torch.float32)
    verts, faces, _, _ = marching_cubes(pyramid.sdf(grid).numpy(), 0.0, spacing=(1.4 / 55,) * 3)
    mesh = trimesh.Trimesh(verts - 0.7, faces)
    assert mesh_iou(mesh, pyramid) > 0.95
    assert mesh_iou(mesh, ShapeObject("cone", "red")) < 0.7
    mesh.update_faces(np.arange(len(mesh.faces)) > 0)
    with pytest.raises(ValueError, match="mesh is not watertight"):
        mesh_iou(mesh, pyramid)


def test_surface_points_lie_on_the_surface_evenly():
    cube = ShapeObject("cube", "red")
    points = surface_points(cube, 3000, seed=1)
    assert points.shape == (3000, 3)
    assert cube.sdf(points).abs().max() < 1e-4
    # Even over the area: each of the six faces gets about a sixth.
    top = (points[:, 2] - world.CUBE_HALF_SIZE).abs() < 1e-4
    assert top.float().mean().item() == pytest.approx(1 / 6, abs=0.03)
    # Cylinder: caps are r / (r + 2h) of the area.
    cylinder = ShapeObject("cylinder", "red")
    points = surface_points(cylinder, 3000, seed=2)
    caps = (points[:, 2].abs() - world.CYLINDER_HALF_HEIGHT).abs() < 1e-4
    r, h = world.CYLINDER_RADIUS, world.CYLINDER_HALF_HEIGHT
    assert caps.float().mean().item() == pytest.approx(r / (r + 2 * h), abs=0.03)
    torch.testing.assert_close(surface_points(cube, 100, seed=1), surface_points(cube, 100, seed=1))


def test_wrong_color_is_not_correct():
    red_cube, orange_cube = ShapeObject("cube", "red"), ShapeObject("cube", "orange")
    score = color_error(ground_truth_query(orange_cube), red_cube, n_points=256)
    assert not score["correct"] and score["nearest_color_name"] == "orange"
    distance = np.linalg.norm(np.subtract(COLORS["orange"].rgb, COLORS["red"].rgb))
    assert score["mean_rgb_distance"] == pytest.approx(distance, abs=1e-5)

    # Noisy but unbiased albedo is still the right colour; the distance reports the noise.
    def noisy(points):
        generator = torch.Generator().manual_seed(0)
        noise = 0.05 * torch.randn(len(points), 3, generator=generator)
        return torch.zeros(len(points)), red_cube.rgb + noise

    score = color_error(noisy, red_cube, n_points=512)
    assert score["correct"] and 0.05 < score["mean_rgb_distance"] < 0.1


def test_nearest_color():
    for name, color in COLORS.items():
        assert nearest_color(color.rgb) == name
    assert nearest_color([0.95, 0.05, 0.1]) == "red"
    assert nearest_color(torch.tensor([0.4, 0.42, 0.45])) == "gray"
    with pytest.raises(ValueError, match=r"rgb must be 3 finite values, got \[0.5, 0.5\]"):
        nearest_color([0.5, 0.5])
    with pytest.raises(ValueError, match="rgb must be 3 finite values"):
        nearest_color([0.5, float("nan"), 0.5])


class _LookupField:
    """Stands in for an amortized field: embedding ``[i]`` materializes object ``i`` exactly."""

    def __init__(self, objects):
        self.objects = objects

    def materialize(self, embedding):
        return ground_truth_query(self.objects[int(embedding[0])])


def test_evaluate_over_prompts():
    objects = [ShapeObject("cube", "red"), ShapeObject("torus", "blue"), ShapeObject("cone", "green")]
    prompts = ["a red box", "a dog on a skateboard", "a blue donut"]
    # Prompt 0 gets the right object; prompt 2 gets a green cone instead of a blue torus.
    embeddings = torch.tensor([[0.0], [1.0], [2.0]])
    scores = evaluate(_LookupField(objects), prompts, embeddings, ModelConfig(), resolution=32, n_points=128)
    assert scores["scored"] == 2.0
    cone_vs_torus = volumetric_iou(ground_truth_query(objects[2]), objects[1], resolution=32)
    assert scores["iou"] == pytest.approx((1.0 + cone_vs_torus) / 2)
    assert scores["color_accuracy"] == 0.5
    assert evaluate(_LookupField(objects), ["a dog"], embeddings[:1], ModelConfig()) == {}
    with pytest.raises(ValueError, match="got 2 prompts but 3 embeddings"):
        evaluate(_LookupField(objects), prompts[:2], embeddings, ModelConfig())


def test_evaluate_runs_on_an_amortized_field():
    config = FieldConfig(encoding=EncodingConfig(levels=2, log2_table_size=10), text_dim=8, num_bases=2)
    field = AmortizedField(config)
    scores = evaluate(field, ["a red cube"], torch.randn(1, 8), ModelConfig(field=config), 16, 64)
    assert set(scores) == {"iou", "color_accuracy", "color_distance", "scored"}
    assert 0.0 <= scores["iou"] <= 1.0 and scores["scored"] == 1.0
