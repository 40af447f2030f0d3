"""Empty-space skipping: the occupancy grid's cells, decay and state; renders that skip empty space."""

from __future__ import annotations

import torch

from att3d.cameras import make_cameras
from att3d.config import OccupancyConfig, RenderConfig
from att3d.render import render
from att3d.training.occupancy import OccupancyGrid

RADIUS = 0.4


def ball_density(points: torch.Tensor) -> torch.Tensor:
    """Density 50 inside a ball of radius 0.4, 0 outside, for any leading shape."""
    return torch.where(points.norm(dim=-1) < RADIUS, 50.0, 0.0)


def ball_field(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return ball_density(points), torch.full((*points.shape[:-1], 3), 0.5)


def test_a_fresh_grid_skips_nothing_and_an_updated_one_marks_the_object_and_a_dilated_rim():
    config = OccupancyConfig(enabled=True, resolution=16, threshold=1.0)
    grid = OccupancyGrid(config, bound=1.0, device=torch.device("cpu"))
    corners = torch.tensor([[0.95, 0.95, 0.95], [-0.95, 0.9, -0.9]])
    assert grid.contains(corners).all() and grid.occupied_fraction == 1.0

    grid.update(lambda p: ball_density(p), prompts=2, generator=torch.Generator().manual_seed(0))
    assert grid.contains(torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]])).all()
    assert not grid.contains(corners).any()
    assert not grid.contains(torch.tensor([[0.0, 0.0, 1.5]])).any()  # outside the box
    # Cells are 0.125 wide: the cell just outside the ball's last full cell is kept (dilation), cells
    # three out are not.
    assert grid.contains(torch.tensor([[RADIUS + 0.05, 0.0, 0.0]])).all()
    assert not grid.contains(torch.tensor([[RADIUS + 0.4, 0.0, 0.0]])).any()
    ball_volume = 4 / 3 * torch.pi * RADIUS**3 / 8
    assert ball_volume < grid.occupied_fraction < 4 * ball_volume


def test_remembered_density_decays_and_the_state_round_trips():
    config = OccupancyConfig(enabled=True, resolution=8, threshold=1.0, decay=0.5)
    grid = OccupancyGrid(config, bound=1.0, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    grid.update(lambda p: ball_density(p), prompts=1, generator=gen)
    centre = torch.tensor([[0.05, 0.05, 0.05]])
    assert grid.contains(centre).all()
    for _ in range(5):  # the ball is gone: 50 * 0.5^5 = 1.6 > 1, then 0.8 < 1
        grid.update(lambda p: torch.zeros(p.shape[:-1]), prompts=1, generator=gen)
    assert grid.contains(centre).all()
    grid.update(lambda p: torch.zeros(p.shape[:-1]), prompts=1, generator=gen)
    assert not grid.contains(centre).any() and grid.occupied_fraction == 0.0

    copy = OccupancyGrid(config, bound=1.0, device=torch.device("cpu"))
    copy.load_state(grid.state())
    assert torch.equal(copy.values, grid.values) and copy.occupied_fraction == 0.0


def test_skipping_empty_cells_leaves_the_render_unchanged():
    config = OccupancyConfig(enabled=True, resolution=16, threshold=0.1)
    grid = OccupancyGrid(config, bound=1.0, device=torch.device("cpu"))
    grid.update(lambda p: ball_density(p), prompts=1, generator=torch.Generator().manual_seed(0))
    cams = make_cameras([10.0, 40.0], [0.0, 120.0], 2.8)
    render_config = RenderConfig(image_size=12, samples_per_ray=64)
    queried = []

    def counting(points):
        queried.append(points.shape[1])
        return ball_field(points)

    full = render(counting, cams, render_config, num_prompts=2, shading="diffuse", perturb=False)
    full_queries, queried[:] = queried[0], []
    skipped = render(
        counting,
        cams,
        render_config,
        num_prompts=2,
        shading="diffuse",
        perturb=False,
        sample_filter=grid.contains,
    )
    assert queried[0] < full_queries / 3  # most samples lie in empty space
    torch.testing.assert_close(skipped.rgb, full.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(skipped.opacity, full.opacity, atol=1e-6, rtol=0)
