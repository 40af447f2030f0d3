"""ShapesWorld scoring: a field against ground truth (IoU, colour, R-precision), views, settings, means."""

from __future__ import annotations

import pytest

from att3d.shapes.evaluate import EvalSettings, eval_cameras, mean_scores, reference_query, score_query
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
            "color_distance": iou / 2,
            "color_correct": correct,
            "r_precision": rp,
        }

    means = mean_scores(
        [row("train", 0.2, True, 1.0), row("train", 0.4, False, 0.5), row("heldout", 0.9, True, 0.0)]
    )
    assert means["splits"]["train"] == pytest.approx(
        {"cases": 2, "iou": 0.3, "color_distance": 0.15, "color_accuracy": 0.5, "r_precision": 0.75}
    )
    assert means["splits"]["heldout"]["cases"] == 1
    assert means["overall"] == pytest.approx(
        {"cases": 3, "iou": 0.5, "color_distance": 0.25, "color_accuracy": 2 / 3, "r_precision": 0.5}
    )
