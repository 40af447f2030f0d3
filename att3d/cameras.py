"""Cameras: sampling, look-at poses and ray generation.

Conventions (shared by the volume renderer, the ShapesWorld ground-truth renderer and the priors):
- World frame is right-handed with **+z up**; the scene lives in the box ``[-bound, bound]^3``.
- A camera at elevation ``e`` and azimuth ``a`` (degrees) and distance ``d`` sits at
  ``d * (cos e cos a, cos e sin a, sin e)`` and looks at the origin. Azimuth 0 looks from +x.
- Camera-to-world matrices use the OpenGL camera convention: the camera looks down its -z axis,
  +y is up in the image and +x is right.
- Images are square (``size × size``) with vertical field of view ``fovy`` (degrees). Pixel ``(i, j)``
  (row, column) has its centre at ``(j + 0.5, i + 0.5)``; its ray direction in the camera frame is
  ``((j + 0.5 - size/2) / f, -(i + 0.5 - size/2) / f, -1)`` with ``f = size / (2 tan(fovy/2))``.
- Each camera carries a unit light direction (pointing from the scene towards the light) for diffuse
  shading: the camera direction tilted upwards, optionally jittered (:func:`light_directions`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from att3d.config import CameraSamplingConfig


@dataclass
class Cameras:
    """A batch of ``B`` pinhole cameras; every tensor has leading dimension ``B``."""

    c2w: Tensor
    """Camera-to-world matrices ``[B, 4, 4]`` (OpenGL convention)."""
    fovy: Tensor
    """Vertical field of view in degrees ``[B]``."""
    elevation: Tensor
    """Elevation in degrees ``[B]``."""
    azimuth: Tensor
    """Azimuth in degrees ``[B]``."""
    distance: Tensor
    """Distance from the origin ``[B]``."""
    light_dir: Tensor
    """Unit direction towards the light, world frame ``[B, 3]``."""

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> Tensor:
        """Camera centres ``[B, 3]``."""
        return self.c2w[:, :3, 3]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(*(t.to(device) for t in self._tensors()))

    def __getitem__(self, index: slice | Tensor | int) -> Cameras:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Cameras(*(t[index] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.c2w, self.fovy, self.elevation, self.azimuth, self.distance, self.light_dir)

    @staticmethod
    def cat(cameras: list[Cameras]) -> Cameras:
        parts = [c._tensors() for c in cameras]
        return Cameras(*(torch.cat(group) for group in zip(*parts, strict=True)))


def spherical_to_position(elevation: Tensor, azimuth: Tensor, distance: Tensor) -> Tensor:
    """Camera centres ``[B, 3]`` from elevation/azimuth in degrees and distance."""
    e, a = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return distance[:, None] * torch.stack(
        [torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], dim=-1
    )


def look_at(position: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """Camera-to-world matrices ``[B, 4, 4]`` for cameras at ``position`` looking at ``target``.

    Near the poles (view direction parallel to ``up``) the +y world axis is used as up instead, so a
    camera straight overhead still gets a well-defined, continuous frame.
    """
    target = torch.zeros_like(position) if target is None else target.expand_as(position)
    up = position.new_tensor([0.0, 0.0, 1.0]) if up is None else up
    forward = torch.nn.functional.normalize(target - position, dim=-1)
    up = up.expand_as(forward)
    right = torch.linalg.cross(forward, up)
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    alt_up = position.new_tensor([0.0, 1.0, 0.0]).expand_as(forward)
    right = torch.where(degenerate, torch.linalg.cross(forward, alt_up), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    cam_up = torch.linalg.cross(right, forward)
    c2w = torch.eye(4, dtype=position.dtype, device=position.device).repeat(position.shape[0], 1, 1)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = cam_up
    c2w[:, :3, 2] = -forward
    c2w[:, :3, 3] = position
    return c2w


def light_directions(
    position: Tensor, jitter: float = 0.0, lift: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """Unit light directions ``[B, 3]``: the camera direction lifted by ``lift`` along +z, plus noise."""
    direction = torch.nn.functional.normalize(position, dim=-1)
    direction = direction + position.new_tensor([0.0, 0.0, lift])
    if jitter > 0:
        noise = torch.randn(position.shape, generator=generator, dtype=position.dtype)
        direction = direction + jitter * noise.to(position.device)
    return torch.nn.functional.normalize(direction, dim=-1)


def make_cameras(
    elevation: Tensor | list[float],
    azimuth: Tensor | list[float],
    distance: Tensor | list[float] | float = 2.8,
    fovy: Tensor | list[float] | float = 40.0,
    light_jitter: float = 0.0,
    light_lift: float = 0.5,
    generator: torch.Generator | None = None,
) -> Cameras:
    """Cameras at the given spherical coordinates, looking at the origin."""
    elevation = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1)
    azimuth = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)
    n = elevation.shape[0]
    distance = torch.as_tensor(distance, dtype=torch.float32).reshape(-1).expand(n).clone()
    fovy = torch.as_tensor(fovy, dtype=torch.float32).reshape(-1).expand(n).clone()
    position = spherical_to_position(elevation, azimuth, distance)
    light = light_directions(position, light_jitter, light_lift, generator)
    return Cameras(look_at(position), fovy, elevation, azimuth, distance, light)


def sample_cameras(n: int, config: CameraSamplingConfig, generator: torch.Generator | None = None) -> Cameras:
    """``n`` random cameras drawn uniformly from the ranges in ``config``."""

    def uniform(bounds: tuple[float, float]) -> Tensor:
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    return make_cameras(
        uniform(config.elevation),
        uniform(config.azimuth),
        uniform(config.distance),
        uniform(config.fovy),
        light_jitter=config.light_jitter,
        light_lift=config.light_lift,
        generator=generator,
    )


def orbit_cameras(
    n: int, elevation: float = 20.0, distance: float = 2.8, fovy: float = 40.0, start_azimuth: float = 0.0
) -> Cameras:
    """``n`` cameras evenly spaced in azimuth at a fixed elevation (turntables, evaluation)."""
    azimuth = start_azimuth + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    return make_cameras(torch.full((n,), elevation), azimuth, distance, fovy)


def focal_length(size: int, fovy: Tensor) -> Tensor:
    """Focal length in pixels for square images of ``size`` pixels and vertical fov in degrees."""
    return 0.5 * size / torch.tan(0.5 * torch.deg2rad(fovy))


def camera_rays(cameras: Cameras, size: int) -> tuple[Tensor, Tensor]:
    """World-space ray origins and unit directions, each ``[B, size, size, 3]`` (row-major pixels)."""
    device = cameras.c2w.device
    centre = torch.arange(size, dtype=torch.float32, device=device) + 0.5 - size / 2
    rows, cols = torch.meshgrid(centre, centre, indexing="ij")
    f = focal_length(size, cameras.fovy.to(device))[:, None, None]
    dirs_cam = torch.stack(
        [
            cols.expand(len(cameras), -1, -1) / f,
            -rows.expand(len(cameras), -1, -1) / f,
            -torch.ones_like(f).expand(-1, size, size),
        ],
        dim=-1,
    )
    rotation = cameras.c2w[:, None, None, :3, :3]
    dirs = torch.nn.functional.normalize((rotation @ dirs_cam[..., None])[..., 0], dim=-1)
    origins = cameras.position[:, None, None, :].expand_as(dirs)
    return origins, dirs


def ray_box_intersection(origins: Tensor, dirs: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Entry and exit distances of rays through the box ``[-bound, bound]^3`` and a hit mask.

    Rays that miss get ``near = far`` (an empty interval) so they contribute nothing when rendered.
    """
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    hit = far > near
    far = torch.where(hit, far, near)
    return near, far, hit


__all__ = [
    "CameraSamplingConfig",
    "Cameras",
    "camera_rays",
    "focal_length",
    "light_directions",
    "look_at",
    "make_cameras",
    "orbit_cameras",
    "ray_box_intersection",
    "sample_cameras",
    "spherical_to_position",
]
