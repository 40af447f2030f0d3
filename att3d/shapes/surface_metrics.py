"""Scores on the model's OWN surface: where it put a surface, how far that is from the truth, its colour.

The older colour score (``metrics.color_error``) reads the albedo at the true surface, even where the
model put nothing, so a wrong shape in the right colour passes. Here the model's surface is found first.

**The model's surface** is the level set ``density = threshold`` (the mesh iso-level). On the IoU grid's
cell centres, every grid edge whose two ends fall on different sides of the threshold holds a crossing
(the edges marching cubes puts its vertices on); the crossing is located by bisection along the edge
(``BISECTION_STEPS`` halvings: 1/256 of a cell), since a linear guess is off by up to a cell for a
steep density. Its albedo is read where the mesh reads it (``MeshConfig.color_depth``): ``color_depth``
below the crossing, along the inward normal (the density gradient by central differences of
:data:`NORMAL_STEP`). Edges are taken uniformly up to ``max_points`` (seeded), so a noisy field costs no
more than a clean one.

**Matching to the truth.** The true surface is sampled (``metrics.surface_points``). A model point is
*misplaced* when the exact SDF puts it more than ``tolerance`` from the true surface; a true point is
*missing* when no model point lies within ``tolerance``. The object has one colour, so the true colour
of every matched point is the object's colour.

- ``chamfer``: symmetric mean Chamfer distance in world units,
  ``(mean_model |sdf(p)| + mean_true min_p |q - p|) / 2``; the first term is exact, the second has a
  floor from the grid's spacing (≈ 0.005 for the exact object at 64³).
- ``surface_color_distance``: the same two-way mean for colour: RGB distance of the model's albedo to
  the true colour at each model point (:data:`MAX_COLOR_DISTANCE` if misplaced) and at the nearest
  model point of each true point (:data:`MAX_COLOR_DISTANCE` if missing). A surface in the wrong place,
  or none, costs as much as the worst colour.
- ``surface_color_right``: the world colour nearest the per-channel median albedo over the model's
  surface is the object's, and at most half the true surface is missing.
- ``albedo_std``: colour uniformity, ``sqrt(mean |a - mean a|²)`` of the albedo over the model's surface.
- ``albedo_bias``: ``|mean a - true colour|``, the part of the colour error that is not noise: with
  ``albedo_std`` it splits ``surface_color_distance`` into a shift of the whole surface and speckle.

A field with no surface scores :data:`MAX_CHAMFER`, :data:`MAX_COLOR_DISTANCE`, colour wrong, everything
missing, ``albedo_std`` 0 (nothing to vary) and ``albedo_bias`` :data:`MAX_COLOR_DISTANCE`.
"""

from __future__ import annotations

import math
from typing import TypedDict

import torch
from torch import Tensor

from att3d.meshing.query import QueryFn
from att3d.render import density_normals
from att3d.shapes.metrics import (
    DENSITY_THRESHOLD,
    grid_points,
    nearest_color,
    occupancy_iou,
    query_field,
    surface_points,
)
from att3d.shapes.world import ShapeObject

SURFACE_TOLERANCE = 0.05
"""World units within which a model point counts as on the true surface (≈ 8 % of an object's radius;
raised to one grid cell on grids coarser than 40³, whose crossings lie further apart)."""
BISECTION_STEPS = 8
"""Halvings of a crossing edge: the crossing is placed to 1/256 of a cell."""
MAX_COLOR_DISTANCE = math.sqrt(3.0)
"""Colour distance of a misplaced or missing surface: the largest RGB distance there is."""
MAX_CHAMFER_FACTOR = 2.0 * math.sqrt(3.0)
"""A field without a surface scores this times ``bound`` as Chamfer: the diagonal of the scene box."""
NORMAL_STEP = 0.01
"""Central-difference step of the density gradient that points inwards at the model's surface."""
MAX_POINTS = 8192
"""Default cap on model-surface points (crossing edges sampled uniformly beyond it)."""


class SurfaceScores(TypedDict):
    """Result of :func:`surface_scores` (see the module docstring)."""

    chamfer: float
    """Symmetric mean Chamfer distance to the exact surface (world units; 0 is perfect)."""
    surface_color_distance: float
    """Two-way mean RGB distance to the true colour on the model's surface, misplaced/missing = √3."""
    surface_color_right: bool
    """Nearest world colour of the median surface albedo is right and ≤ half the true surface missing."""
    surface_color: str
    """World colour nearest the median albedo over the model's surface (``""`` without a surface)."""
    albedo_std: float
    """RGB standard deviation of the albedo over the model's surface (0 is uniform)."""
    albedo_bias: float
    """RGB distance of the mean albedo over the model's surface to the true colour."""
    surface_missing: float
    """Fraction of the true surface with no model surface within the tolerance."""
    surface_misplaced: float
    """Fraction of the model's surface farther than the tolerance from the true surface."""


def crossing_edges(occupied: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
    """Ends ``(outside [E, 3], inside [E, 3])`` of the grid edges whose occupancy differs at the two ends.

    ``occupied`` is a bool ``[R, R, R]`` grid and ``points`` its positions ``[R, R, R, 3]``.
    """
    outside, inside = [], []
    for axis in range(3):
        n = occupied.shape[axis]
        a, b = occupied.narrow(axis, 0, n - 1), occupied.narrow(axis, 1, n - 1)
        pa, pb = points.narrow(axis, 0, n - 1), points.narrow(axis, 1, n - 1)
        flip = a != b
        a_in = a[flip][:, None]
        outside.append(torch.where(a_in, pb[flip], pa[flip]))
        inside.append(torch.where(a_in, pa[flip], pb[flip]))
    return torch.cat(outside), torch.cat(inside)


def model_surface(
    query_fn: QueryFn,
    density: Tensor,
    resolution: int,
    threshold: float,
    bound: float = 1.0,
    max_points: int = MAX_POINTS,
    seed: int = 0,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
    color_depth: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Points ``[M, 3]`` on the field's ``density = threshold`` surface and the albedo ``[M, 3]`` read
    ``color_depth`` below each, along the inward normal.

    ``density`` ``[R³]`` is the field already queried at ``grid_points(resolution, bound)``. See the
    module docstring for the method. ``M`` is 0 when nothing on the grid crosses the threshold.
    """
    if density.shape != (resolution**3,):
        raise ValueError(f"density must be [{resolution**3}] (the grid), got {tuple(density.shape)}")
    points = grid_points(resolution, bound).reshape(resolution, resolution, resolution, 3)
    occupied = (density > threshold).reshape(resolution, resolution, resolution)
    outside, inside = crossing_edges(occupied, points)
    if outside.shape[0] > max_points:
        keep = torch.randperm(outside.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        outside, inside = outside[keep], inside[keep]
    if outside.shape[0] == 0:
        return torch.zeros(0, 3), torch.zeros(0, 3)
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (outside + inside)
        now_inside = (query_field(query_fn, middle.to(device), chunk)[0] > threshold)[:, None]
        inside = torch.where(now_inside, middle, inside)
        outside = torch.where(now_inside, outside, middle)
    surface = 0.5 * (outside + inside)
    read_at = surface
    if color_depth > 0:  # the renderer's normals: central differences of the density

        def field_fn(points: Tensor) -> tuple[Tensor, Tensor]:  # [1, M, 3] -> [1, M], [1, M, 3]
            density, albedo = query_field(query_fn, points.reshape(-1, 3).to(device), chunk)
            return density.cpu().reshape(points.shape[:-1]), albedo.cpu().reshape(points.shape)

        outward, _ = density_normals(field_fn, surface[None], NORMAL_STEP)
        read_at = surface - color_depth * outward[0]
    _, albedo = query_field(query_fn, read_at.to(device), chunk)
    return surface, albedo.nan_to_num(0.0).clamp(0.0, 1.0)


def _nearest(queries: Tensor, points: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Distance ``[N]`` from each query to its nearest point, and that point's index ``[N]``."""
    distances, indices = [], []
    for start in range(0, queries.shape[0], chunk):
        d, i = torch.cdist(queries[start : start + chunk], points).min(dim=1)
        distances.append(d)
        indices.append(i)
    return torch.cat(distances), torch.cat(indices)


def score_surface(
    surface: Tensor,
    albedo: Tensor,
    obj: ShapeObject,
    truth: Tensor,
    tolerance: float = SURFACE_TOLERANCE,
    bound: float = 1.0,
) -> SurfaceScores:
    """Scores of model-surface points ``surface`` ``[M, 3]`` with ``albedo`` ``[M, 3]`` against ``obj``.

    ``truth`` ``[N, 3]`` are points on the true surface (``metrics.surface_points``).
    """
    if surface.shape[0] == 0:
        return SurfaceScores(
            chamfer=MAX_CHAMFER_FACTOR * bound,
            surface_color_distance=MAX_COLOR_DISTANCE,
            surface_color_right=False,
            surface_color="",
            albedo_std=0.0,
            albedo_bias=MAX_COLOR_DISTANCE,
            surface_missing=1.0,
            surface_misplaced=0.0,
        )
    rgb = obj.rgb.to(albedo.dtype)
    to_truth = obj.sdf(surface).abs()
    to_model, nearest = _nearest(truth, surface)
    misplaced, missing = to_truth > tolerance, to_model > tolerance
    colour = (albedo - rgb).norm(dim=-1)
    model_side = torch.where(misplaced, MAX_COLOR_DISTANCE, colour).mean()
    truth_side = torch.where(missing, MAX_COLOR_DISTANCE, colour[nearest]).mean()
    name = nearest_color(albedo.median(dim=0).values)
    missing_fraction = missing.float().mean().item()
    return SurfaceScores(
        chamfer=0.5 * (to_truth.mean() + to_model.mean()).item(),
        surface_color_distance=0.5 * (model_side + truth_side).item(),
        surface_color_right=name == obj.color and missing_fraction <= 0.5,
        surface_color=name,
        albedo_std=(albedo - albedo.mean(dim=0)).square().sum(dim=-1).mean().sqrt().item(),
        albedo_bias=(albedo.mean(dim=0) - rgb).norm().item(),
        surface_missing=missing_fraction,
        surface_misplaced=misplaced.float().mean().item(),
    )


class FieldScores(SurfaceScores):
    """Result of :func:`field_scores`: :class:`SurfaceScores` plus the volumetric IoU."""

    iou: float
    """Volumetric IoU of ``density > threshold`` against the exact occupancy."""


def field_scores(
    query_fn: QueryFn,
    obj: ShapeObject,
    resolution: int = 64,
    threshold: float = DENSITY_THRESHOLD,
    bound: float = 1.0,
    n_points: int = 2048,
    max_points: int = MAX_POINTS,
    tolerance: float = SURFACE_TOLERANCE,
    seed: int = 0,
    chunk: int = 65536,
    device: torch.device | str = "cpu",
    color_depth: float = 0.0,
) -> FieldScores:
    """IoU and the surface scores of one field, from one query of the ``resolution³`` grid.

    ``n_points`` samples the true surface; the tolerance is raised to one grid cell on coarse grids;
    ``color_depth`` is how deep below its surface the model's colour is read (the mesh's).
    """
    points = grid_points(resolution, bound)
    density, _ = query_field(query_fn, points.to(device), chunk)
    iou = occupancy_iou(density > threshold, obj.occupancy(points))
    surface, albedo = model_surface(
        query_fn, density, resolution, threshold, bound, max_points, seed, chunk, device, color_depth
    )
    truth = surface_points(obj, n_points, seed)
    tolerance = max(tolerance, 2.0 * bound / resolution)
    return FieldScores(iou=float(iou), **score_surface(surface, albedo, obj, truth, tolerance, bound))


__all__ = [
    "BISECTION_STEPS",
    "MAX_CHAMFER_FACTOR",
    "MAX_COLOR_DISTANCE",
    "NORMAL_STEP",
    "SURFACE_TOLERANCE",
    "FieldScores",
    "SurfaceScores",
    "crossing_edges",
    "field_scores",
    "model_surface",
    "score_surface",
]
