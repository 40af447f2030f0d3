"""Analytic fields whose surface and colours are known exactly, shared by the meshing tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import trimesh

from att3d.config import MeshConfig

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


def away_from_seam(vertices: np.ndarray) -> np.ndarray:
    """Vertices far enough from the colour change at x = 0 that their expected colour is certain."""
    return np.abs(vertices[:, 0]) > 1e-3
