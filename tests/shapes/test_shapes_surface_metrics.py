"""Scores on the model's own surface: crossings, Chamfer, surface colour, uniformity, empty fields."""

from __future__ import annotations

import math

import pytest
import torch

from att3d.meshing.query import QueryFn
from att3d.shapes.evaluate import reference_query
from att3d.shapes.metrics import color_error, grid_points, surface_points
from att3d.shapes.surface_metrics import (
    MAX_CHAMFER_FACTOR,
    MAX_COLOR_DISTANCE,
    crossing_edges,
    field_scores,
    model_surface,
    score_surface,
)
from att3d.shapes.world import COLORS, SPHERE_RADIUS, ShapeObject

RED_CUBE = ShapeObject("cube", "red")
RED_SPHERE = ShapeObject("sphere", "red")


def ball(radius: float, rgb) -> QueryFn:
    """A solid ball of ``radius`` with a steep density ramp at its surface and a uniform albedo."""
    colour = torch.tensor(rgb, dtype=torch.float32)

    def query(points):
        density = 1000.0 * torch.sigmoid((radius - points.norm(dim=-1)) / 0.004 - 5.0)
        return density, colour.expand(points.shape[0], 3)

    return query


def test_crossing_edges_of_one_occupied_cell() -> None:
    occupied = torch.zeros(3, 3, 3, dtype=torch.bool)
    occupied[1, 1, 1] = True
    points = grid_points(3).reshape(3, 3, 3, 3)
    outside, inside = crossing_edges(occupied, points)
    assert outside.shape == inside.shape == (6, 3)  # its six neighbours
    assert torch.allclose(inside, points[1, 1, 1].expand(6, 3))
    assert sorted((outside - inside).abs().sum(-1).tolist()) == pytest.approx([2 / 3] * 6)


def test_model_surface_lies_on_the_level_set() -> None:
    query = ball(0.5, (1.0, 0.0, 0.0))
    density, _ = query(grid_points(32))
    surface, albedo = model_surface(query, density, 32, threshold=6.93)
    # sigmoid((0.5 - r) / 0.004 - 5) = 6.93 / 1000 at this radius (≈ 0.49986).
    level = 0.5 - 0.004 * (5.0 + math.log(6.93 / (1000.0 - 6.93)))
    assert surface.shape[0] > 1000
    assert (surface.norm(dim=-1) - level).abs().max() < 2.0 / 32 / 256 + 1e-4  # bisection: 1/256 cell
    assert torch.equal(albedo, torch.tensor([[1.0, 0.0, 0.0]]).expand_as(albedo))


def test_chamfer_of_a_grown_sphere_is_the_offset() -> None:
    # A ball 0.03 larger than the true sphere: every point 0.03 off both ways, plus the sampling floor.
    grown = reference_query(ShapeObject("sphere", "red"))
    offset = 0.03

    def query(points):
        return grown(points * SPHERE_RADIUS / (SPHERE_RADIUS + offset))

    scores = field_scores(query, RED_SPHERE, resolution=64, n_points=1024)
    exact = field_scores(grown, RED_SPHERE, resolution=64, n_points=1024)
    assert exact["chamfer"] < 0.008  # the floor of point sampling at 64³
    assert scores["chamfer"] == pytest.approx(offset, abs=0.006)
    assert scores["surface_misplaced"] == 0.0 and scores["surface_missing"] == 0.0  # within tolerance


def test_reference_scores_perfect_and_empty_scores_worst() -> None:
    exact = field_scores(reference_query(RED_CUBE), RED_CUBE, resolution=32, n_points=512)
    assert exact["iou"] > 0.99 and exact["chamfer"] < 0.015
    assert exact["surface_color_distance"] < 1e-6 and exact["albedo_std"] < 1e-6
    assert exact["albedo_bias"] < 1e-6
    assert exact["surface_color_right"] is True and exact["surface_color"] == "red"
    assert exact["surface_missing"] == 0.0 and exact["surface_misplaced"] == 0.0

    def empty(points):  # nothing there, though the albedo is the right colour everywhere
        return torch.zeros(points.shape[0]), RED_CUBE.rgb.expand(points.shape[0], 3)

    scores = field_scores(empty, RED_CUBE, resolution=32, n_points=512)
    assert scores == {
        "iou": 0.0,
        "chamfer": MAX_CHAMFER_FACTOR,
        "surface_color_distance": MAX_COLOR_DISTANCE,
        "surface_color_right": False,
        "surface_color": "",
        "albedo_std": 0.0,
        "albedo_bias": MAX_COLOR_DISTANCE,
        "surface_missing": 1.0,
        "surface_misplaced": 0.0,
    }
    assert color_error(empty, RED_CUBE, 512)["correct"] is True  # the true-surface score is fooled


def test_wrong_shape_right_colour_costs_colour() -> None:
    # A red sphere asked to be a red cube: perfect on the true-surface score, not on the model's surface.
    sphere = reference_query(RED_SPHERE)
    assert color_error(sphere, RED_CUBE, 512)["mean_rgb_distance"] < 1e-6
    scores = field_scores(sphere, RED_CUBE, resolution=64, n_points=1024)
    assert 0.3 < scores["surface_misplaced"] < 0.4 and 0.4 < scores["surface_missing"] < 0.5
    # Only the misplaced and missing parts cost: (misplaced + missing) / 2 · √3.
    expected = 0.5 * (scores["surface_misplaced"] + scores["surface_missing"]) * MAX_COLOR_DISTANCE
    assert scores["surface_color_distance"] == pytest.approx(expected, abs=1e-5)
    assert scores["chamfer"] > 0.04
    # A red torus is mostly missing: the colour is not right although every albedo is red.
    torus = field_scores(reference_query(ShapeObject("torus", "red")), RED_CUBE, resolution=64, n_points=1024)
    assert torus["surface_color"] == "red" and torus["surface_color_right"] is False


def test_score_surface_colour_and_uniformity() -> None:
    truth = surface_points(RED_SPHERE, 512)
    # Model points exactly on the true surface: half red, half blue.
    surface = surface_points(RED_SPHERE, 8000, seed=1)
    red, blue = torch.tensor(COLORS["red"].rgb), torch.tensor(COLORS["blue"].rgb)
    albedo = torch.where((torch.arange(8000) % 2 == 0)[:, None], red, blue)
    scores = score_surface(surface, albedo, RED_SPHERE, truth)
    gap = (red - blue).norm().item()
    assert scores["surface_missing"] == 0.0 and scores["surface_misplaced"] == 0.0
    assert scores["surface_color_distance"] == pytest.approx(gap / 2, abs=0.05)  # half the points off
    assert scores["albedo_std"] == pytest.approx(gap / 2, rel=1e-3)  # two equal halves: std = gap / 2
    assert scores["albedo_bias"] == pytest.approx(gap / 2, rel=1e-3)  # the mean is halfway to blue
    # The whole surface one shade off: all bias, no speckle, and the distance is the shift.
    shift = torch.tensor([0.1, 0.05, 0.0])
    shifted = score_surface(surface, (red + shift).repeat(8000, 1), RED_SPHERE, truth)
    assert shifted["albedo_bias"] == pytest.approx(shift.norm().item(), rel=1e-4)
    assert shifted["albedo_std"] < 1e-6
    assert shifted["surface_color_distance"] == pytest.approx(shift.norm().item(), rel=1e-4)
    with_floater = score_surface(
        torch.cat([surface, torch.tensor([[0.0, 0.0, 0.95]]).expand(8000, 3)]),
        torch.cat([red.expand(8000, 3), red.expand(8000, 3)]),
        RED_SPHERE,
        truth,
    )
    assert with_floater["surface_misplaced"] == 0.5
    assert with_floater["surface_color_distance"] == pytest.approx(MAX_COLOR_DISTANCE / 4, abs=1e-5)


def test_model_surface_checks_the_grid() -> None:
    with pytest.raises(ValueError, match=r"density must be \[512\]"):
        model_surface(ball(0.5, (1, 0, 0)), torch.zeros(10), 8, 6.93)


def test_colour_is_read_color_depth_below_the_surface() -> None:
    # The exact red sphere, but its outer 0.01 is white: the faint layer a soft field's iso-level sits in.
    exact = reference_query(RED_SPHERE)

    def shelled(points):
        density, albedo = exact(points)
        white = (RED_SPHERE.sdf(points) > -0.01)[:, None]
        return density, torch.where(white, torch.ones_like(albedo), albedo)

    below = field_scores(shelled, RED_SPHERE, resolution=48, n_points=512, color_depth=0.03)
    assert below["surface_color_distance"] < 1e-5 and below["albedo_bias"] < 1e-5
    assert below["surface_color"] == "red" and below["iou"] > 0.97  # the surface itself is unchanged
    at_surface = field_scores(shelled, RED_SPHERE, resolution=48, n_points=512)
    white_from_red = (torch.ones(3) - RED_SPHERE.rgb).norm().item()
    assert at_surface["surface_color_distance"] == pytest.approx(white_from_red, rel=1e-4)
    assert at_surface["chamfer"] == pytest.approx(below["chamfer"])
