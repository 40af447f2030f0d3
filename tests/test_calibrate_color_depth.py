"""scripts/calibrate_color_depth.py: the colour depth is chosen by the colour on the model's own surface."""

from __future__ import annotations

import types

import pytest
import torch
from script_loader import loaded_script

from att3d.config import MeshConfig
from att3d.shapes.evaluate import reference_query
from att3d.shapes.world import parse_prompt

LEVEL = 5.0
SHELL = 0.02
"""Depth of the fake model's pale outer layer: its albedo is white above this depth, right below it."""


@pytest.fixture
def calibration():
    yield from loaded_script("calibrate_color_depth")


def pale_shell_generator() -> types.SimpleNamespace:
    """A stand-in generator whose fields are the exact objects, with a white outer layer ``SHELL`` deep."""

    def prompt_field(prompt: str):
        obj = parse_prompt(prompt)
        exact = reference_query(obj, threshold=LEVEL)

        def query(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            density, albedo = exact(points)
            pale = (obj.sdf(points) > -SHELL)[..., None]
            return density, torch.where(pale, torch.ones_like(albedo), albedo)

        return query

    config = types.SimpleNamespace(
        mesh=MeshConfig(density_threshold=LEVEL, color_depth=0.0), field=types.SimpleNamespace(bound=1.0)
    )
    return types.SimpleNamespace(
        config=config, device="cpu", embed=lambda prompts: list(prompts), prompt_field=prompt_field
    )


def test_reading_below_a_pale_layer_scores_the_true_colour(calibration) -> None:
    at_surface, below = calibration.mean_scores_by_depth(pale_shell_generator(), [0.0, 0.03], resolution=32)
    # At the iso-surface every point reads white: the distance from each colour to white, and no speckle.
    assert at_surface["surface_color_distance"] > 0.5
    assert at_surface["albedo_std"] == pytest.approx(0.0, abs=1e-6)
    # Below the layer the object's colour, but near edges and tips, whose other faces' layer is close.
    assert below["surface_color_distance"] < at_surface["surface_color_distance"] / 8
    assert below["albedo_bias"] < at_surface["albedo_bias"] / 8


def test_depths_outside_the_range_are_refused(calibration, capsys) -> None:
    with pytest.raises(SystemExit):
        calibration.main(["--depths", "0.03", "-0.01"])
    assert "depths must be in [0, 0.2]" in capsys.readouterr().err
