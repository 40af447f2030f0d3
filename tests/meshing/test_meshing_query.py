"""Dense field queries (``att3d.meshing.query``) against direct evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from meshing_fields import SLOPE, THRESHOLD, sphere_field

from att3d.meshing.query import query_albedo, query_grid


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
