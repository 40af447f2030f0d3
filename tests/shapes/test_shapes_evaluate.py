"""ShapesWorld scoring: a field against ground truth (IoU, colour, R-precision), views, settings, means."""

from __future__ import annotations

import pytest
import torch

from att3d.shapes.evaluate import (
    METRICS,
    EvalSettings,
    eval_cameras,
    mean_scores,
    reference_query,
    score_query,
)
from att3d.shapes.surface_metrics import MAX_CHAMFER_FACTOR, MAX_COLOR_DISTANCE
from att3d.shapes.world import ShapeObject

FAST = EvalSettings(resolution=32, views=4, n_points=256)


@pytest.mark.parametrize("obj", [ShapeObject("cube", "red"), ShapeObject("torus", "gray")])
def test_ground_truth_scores_one(obj) -> None:
    scores = score_query(reference_query(obj), obj, FAST)
    assert scores["iou"] > 0.99
    assert scores["color_distance"] < 1e-5
    assert scores["nearest_color"] == obj.color and scores["color_correct"] is True
    assert scores["r_precision"] == 1.0
    assert scores["view_labels"] == [f"{obj.color} {obj.shape}"] * FAST.views
    # On the model's own surface: the same surface, the right colour, uniform.
    assert scores["chamfer"] < 0.015  # the floor of point sampling at 32³
    assert scores["surface_color_distance"] < 1e-5 and scores["albedo_std"] < 1e-5
    assert scores["albedo_bias"] < 1e-5
    assert scores["surface_color"] == obj.color and scores["surface_color_right"] is True
    assert scores["surface_missing"] == 0.0 and scores["surface_misplaced"] == 0.0


def test_empty_scene_scores_zero() -> None:
    # Nothing there, with the right colour as albedo everywhere: no score may credit it.
    obj = ShapeObject("pyramid", "gray")

    def empty(points):
        return torch.zeros(points.shape[0]), obj.rgb.expand(points.shape[0], 3)

    scores = score_query(empty, obj, FAST)
    assert scores["iou"] == 0.0
    assert scores["r_precision"] == 0.0
    assert all(label.endswith(" none") for label in scores["view_labels"])  # background on every view
    assert scores["surface_color_right"] is False and scores["surface_color"] == ""
    assert scores["surface_color_distance"] == MAX_COLOR_DISTANCE
    assert scores["chamfer"] == MAX_CHAMFER_FACTOR
    assert (
        scores["color_correct"] is True
    )  # the older true-surface score is fooled: why it is not the headline


def test_wrong_shape_right_colour_scores_worse_on_colour() -> None:
    # A red sphere where a red cube was asked for: the true-surface score sees only red (distance 0).
    cube = ShapeObject("cube", "red")
    right = score_query(reference_query(cube), cube, FAST)
    wrong = score_query(reference_query(ShapeObject("sphere", "red")), cube, FAST)
    assert wrong["color_distance"] < 1e-5  # today's method: perfect
    assert wrong["surface_color_distance"] > 0.3 > right["surface_color_distance"] + 0.25
    assert wrong["chamfer"] > 3 * right["chamfer"]
    assert wrong["r_precision"] == 0.0


def test_wrong_object_scores_low() -> None:
    # A blue sphere where a red cube was asked for: the sphere-cube IoU (~0.7 at 64³), wrong colour,
    # and no view is classified as a red cube.
    sphere = ShapeObject("sphere", "blue")
    scores = score_query(reference_query(sphere), ShapeObject("cube", "red"), FAST)
    assert 0.6 < scores["iou"] < 0.8
    assert scores["nearest_color"] == "blue" and scores["color_correct"] is False
    assert scores["color_distance"] == pytest.approx(((0.85 - 0.1) ** 2 + 0.1**2 + 0.8**2) ** 0.5, abs=1e-4)
    assert scores["r_precision"] == 0.0


def test_eval_cameras_orbit_plus_extra_elevations() -> None:
    cameras = eval_cameras(8)
    assert cameras.elevation.tolist() == [20.0] * 6 + [0.0, 45.0]
    assert cameras.azimuth[:6].tolist() == pytest.approx([0, 60, 120, 180, 240, 300])
    assert cameras.azimuth[6:].tolist() == pytest.approx([30, 210])
    assert cameras.distance.tolist() == pytest.approx([2.8] * 8)
    assert eval_cameras(2).elevation.tolist() == [20.0, 20.0]
    with pytest.raises(ValueError, match="views must be a positive integer"):
        eval_cameras(0)


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match=r"views must be an integer in \[1, 64\], got 0"):
        EvalSettings(views=0)
    with pytest.raises(ValueError, match="resolution must be an integer"):
        EvalSettings(resolution=4)


def test_mean_scores() -> None:
    def row(split: str, iou: float, correct: bool, rp: float) -> dict:
        return {
            "split": split,
            "iou": iou,
            "chamfer": iou / 10,
            "surface_color_distance": iou / 4,
            "surface_color_right": not correct,
            "albedo_std": iou / 5,
            "albedo_bias": iou / 8,
            "color_distance": iou / 2,
            "color_correct": correct,
            "r_precision": rp,
        }

    means = mean_scores(
        [row("train", 0.2, True, 1.0), row("train", 0.4, False, 0.5), row("heldout", 0.9, True, 0.0)]
    )
    assert means["splits"]["train"] == pytest.approx(
        {
            "cases": 2,
            "iou": 0.3,
            "chamfer": 0.03,
            "surface_color_distance": 0.075,
            "surface_color_accuracy": 0.5,
            "albedo_std": 0.06,
            "albedo_bias": 0.0375,
            "color_distance": 0.15,
            "color_accuracy": 0.5,
            "r_precision": 0.75,
        }
    )
    assert means["splits"]["heldout"]["cases"] == 1
    assert means["overall"] == pytest.approx(
        {
            "cases": 3,
            "iou": 0.5,
            "chamfer": 0.05,
            "surface_color_distance": 0.125,
            "surface_color_accuracy": 1 / 3,
            "albedo_std": 0.1,
            "albedo_bias": 0.0625,
            "color_distance": 0.25,
            "color_accuracy": 2 / 3,
            "r_precision": 0.5,
        }
    )
    assert set(means["overall"]) == {"cases", *METRICS}
    # Rows of an older report (no surface scores): those means are left out, the rest stay.
    old = [
        {
            k: v
            for k, v in row("train", 0.2, True, 1.0).items()
            if not k.startswith(("surface", "chamfer", "albedo"))
        }
    ]
    assert set(mean_scores(old)["overall"]) == {
        "cases",
        "iou",
        "color_distance",
        "color_accuracy",
        "r_precision",
    }
