"""Camera conventions: positions, look-at frames, rays and box intersection."""

from __future__ import annotations

import math

import torch

from att3d.cameras import camera_rays, make_cameras, orbit_cameras, ray_box_intersection, sample_cameras
from att3d.config import CameraSamplingConfig


def test_position_from_spherical_coordinates() -> None:
    cams = make_cameras([0.0, 90.0, 30.0], [0.0, 0.0, 90.0], 2.0)
    expected = torch.tensor(
        [
            [2.0, 0.0, 0.0],
            [0.0, 0.0, 2.0],
            [0.0, 2 * math.cos(math.radians(30)), 2 * math.sin(math.radians(30))],
        ]
    )
    torch.testing.assert_close(cams.position, expected, atol=1e-5, rtol=0)


def test_look_at_is_orthonormal_and_points_at_origin() -> None:
    cams = sample_cameras(16, CameraSamplingConfig(elevation=(-80.0, 90.0)), torch.Generator().manual_seed(0))
    rot = cams.c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(16, 3, 3), atol=1e-5, rtol=0)
    forward = -rot[:, :, 2]
    torch.testing.assert_close(
        forward, -torch.nn.functional.normalize(cams.position, dim=-1), atol=1e-5, rtol=0
    )
    assert torch.allclose(torch.det(rot), torch.ones(16), atol=1e-5)  # right-handed


def test_centre_ray_hits_origin_and_image_up_is_world_up() -> None:
    cams = make_cameras([0.0], [0.0], 3.0)
    origins, dirs = camera_rays(cams, 5)  # odd size: the centre pixel's ray is the optical axis
    torch.testing.assert_close(dirs[0, 2, 2], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    assert dirs[0, 0, 2, 2] > 0  # top row looks up (+z)
    assert dirs[0, 2, 4, 1] > 0  # right column: camera on +x looking at the origin has +y on its right
    torch.testing.assert_close(origins[0, 0, 0], torch.tensor([3.0, 0.0, 0.0]))


def test_fov_sets_the_edge_ray_angle() -> None:
    size = 64
    cams = make_cameras([0.0], [0.0], 3.0, fovy=40.0)
    _, dirs = camera_rays(cams, size)
    # The top edge of the image (half a pixel above the first row's centre) is at fovy / 2.
    top = dirs[0, 0, size // 2]
    angle = math.degrees(math.atan2(top[2].item(), -top[0].item()))
    assert abs(angle - (20.0 - 0.5 * 40.0 / size)) < 0.05


def test_ray_box_intersection() -> None:
    origins = torch.tensor([[3.0, 0.0, 0.0], [3.0, 5.0, 0.0]])
    dirs = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    near, far, hit = ray_box_intersection(origins, dirs, 1.0)
    assert near[0] == 2.0
    assert far[0] == 4.0 and hit.tolist() == [True, False] and far[1] == near[1]


def test_light_points_up_from_the_camera_side_and_orbit_spacing() -> None:
    cams = orbit_cameras(4, elevation=0.0)
    assert torch.allclose(cams.azimuth, torch.tensor([0.0, 90.0, 180.0, 270.0]))
    assert (cams.light_dir[:, 2] > 0).all()
    assert ((cams.light_dir * cams.position).sum(-1) > 0).all()
    torch.testing.assert_close(cams.light_dir.norm(dim=-1), torch.ones(4))
