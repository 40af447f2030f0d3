"""Volume renderer on analytic densities: opacity, depth, shading, batching."""

from __future__ import annotations

import math

import pytest
import torch

from att3d.cameras import make_cameras
from att3d.config import RenderConfig
from att3d.render import composite, render

RADIUS = 0.5


def solid_sphere(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A near-binary red sphere of radius 0.5 with a smooth edge (normals well-defined)."""
    r = points.norm(dim=-1)
    density = 400.0 * torch.sigmoid((RADIUS - r) / 0.005)
    albedo = torch.zeros(*points.shape[:-1], 3)
    albedo[..., 0] = 1.0
    return density, albedo


CONFIG = RenderConfig(image_size=17, samples_per_ray=256)


def test_opacity_and_depth_of_a_sphere() -> None:
    cams = make_cameras([0.0], [0.0], 3.0, fovy=40.0)
    out = render(solid_sphere, cams, CONFIG, shading="albedo", perturb=False)
    assert out.rgb.shape == (1, 3, 17, 17) and out.opacity.shape == (1, 1, 17, 17)
    centre = 8
    assert out.opacity[0, 0, centre, centre] == pytest.approx(1.0, abs=1e-3)
    assert out.opacity[0, 0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    # The centre ray hits the sphere at distance 3 - 0.5; sample spacing is 2/256.
    assert out.depth[0, 0, centre, centre] == pytest.approx(3.0 - RADIUS, abs=0.02)
    torch.testing.assert_close(
        out.rgb[0, :, centre, centre], torch.tensor([1.0, 0.0, 0.0]), atol=2e-3, rtol=0
    )
    torch.testing.assert_close(out.rgb[0, :, 0, 0], torch.ones(3))  # white background


def test_silhouette_area_matches_projected_disc() -> None:
    cams = make_cameras([0.0], [0.0], 3.0, fovy=40.0)
    config = RenderConfig(image_size=64, samples_per_ray=128)

    def hard_sphere(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density = torch.where(points.norm(dim=-1) < RADIUS, 1e4, 0.0)
        return density, torch.ones(*points.shape[:-1], 3)

    out = render(hard_sphere, cams, config, shading="albedo", perturb=False)
    focal = 0.5 * 64 / math.tan(math.radians(20.0))
    # Angular radius of a sphere of radius r at distance d is asin(r/d).
    radius_px = focal * math.tan(math.asin(RADIUS / 3.0))
    assert out.opacity.sum().item() == pytest.approx(math.pi * radius_px**2, rel=0.05)


def test_diffuse_shading_follows_lambert() -> None:
    cams = make_cameras([0.0], [0.0], 3.0)
    cams.light_dir = torch.tensor([[1.0, 0.0, 0.0]])  # straight from the camera: n.l = 1 at the centre
    out = render(solid_sphere, cams, CONFIG, shading="diffuse", perturb=False)
    assert out.rgb[0, 0, 8, 8] == pytest.approx(1.0, abs=0.02)
    cams.light_dir = torch.tensor([[-1.0, 0.0, 0.0]])  # from behind: ambient only
    out = render(solid_sphere, cams, CONFIG, shading="diffuse", perturb=False)
    assert out.rgb[0, 0, 8, 8] == pytest.approx(CONFIG.ambient, abs=0.02)
    textureless = render(solid_sphere, cams, CONFIG, shading="textureless", perturb=False)
    assert textureless.rgb[0, 1, 8, 8] == pytest.approx(CONFIG.ambient, abs=0.02)  # white albedo


def test_prompt_major_batching_and_gradients() -> None:
    """Two prompts x two views: each prompt's field sees only its own rays; gradients flow to density."""
    scale = torch.tensor([1.0, 0.0], requires_grad=True)

    def two_fields(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density, albedo = solid_sphere(points)
        return density * scale[:, None], albedo

    cams = make_cameras([0.0, 30.0, 0.0, 30.0], [0.0, 90.0, 0.0, 90.0], 3.0)
    out = render(two_fields, cams, RenderConfig(image_size=9, samples_per_ray=32), num_prompts=2)
    assert out.opacity[:2].amax() > 0.99 and out.opacity[2:].amax() == 0.0
    out.rgb.mean().backward()
    assert scale.grad is not None and scale.grad.abs().sum() > 0


def test_no_grad_rendering_in_chunks_matches() -> None:
    cams = make_cameras([10.0], [45.0], 3.0)
    with torch.no_grad():
        whole = render(solid_sphere, cams, RenderConfig(image_size=12, samples_per_ray=32), perturb=False)
        chunked = render(
            solid_sphere, cams, RenderConfig(image_size=12, samples_per_ray=32, chunk_rays=7), perturb=False
        )
    torch.testing.assert_close(whole.rgb, chunked.rgb)


def test_composite_weights_sum_to_opacity() -> None:
    density = torch.tensor([[0.0, 1.0, 5.0, 100.0]])
    t = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    weights, rgb, _ = composite(density, torch.ones(1, 4, 3), t, torch.full((1, 4), 0.1))
    assert weights.sum() <= 1.0 and weights[0, 0] == 0.0
    torch.testing.assert_close(rgb[0], weights.sum().expand(3))


def test_bad_arguments() -> None:
    cams = make_cameras([0.0, 0.0, 0.0], [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="shading"):
        render(solid_sphere, cams, CONFIG, shading="phong")
    with pytest.raises(ValueError, match="cannot be split evenly"):
        render(solid_sphere, cams, CONFIG, num_prompts=2)


def test_forward_and_central_normals_agree_on_a_sphere_and_match_its_radial_normal() -> None:
    from att3d.render import density_normals

    directions = torch.nn.functional.normalize(
        torch.randn(1, 50, 3, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    points = directions * RADIUS
    central, central_albedo = density_normals(solid_sphere, points, 0.001)
    own, _ = solid_sphere(points)
    forward, forward_albedo = density_normals(solid_sphere, points, 0.001, own_density=own)
    assert central_albedo.shape == (1, 50, 6, 3) and forward_albedo.shape == (1, 50, 3, 3)
    # Outward normals: along the radius, to within the finite-difference error.
    assert (central * directions).sum(-1).min() > 0.999
    assert (forward * directions).sum(-1).min() > 0.99


def test_albedo_variation_is_zero_for_a_uniform_albedo_and_grows_with_speckle() -> None:
    cams = make_cameras([20.0], [30.0], 3.0)
    config = RenderConfig(image_size=12, samples_per_ray=96, normals="forward")
    uniform = render(solid_sphere, cams, config, shading="diffuse", perturb=False)
    assert uniform.albedo_variation is not None and uniform.albedo_variation.item() == pytest.approx(
        0.0, abs=1e-7
    )

    def speckled(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        density, albedo = solid_sphere(points)
        stripes = 0.5 + 0.5 * torch.sin(points[..., :1] * 400.0)  # period ~0.016: varies over normal_eps
        return density, albedo * stripes

    noisy = render(speckled, cams, config, shading="diffuse", perturb=False)
    assert noisy.albedo_variation.item() > 0.05
    assert render(solid_sphere, cams, config, shading="albedo", perturb=False).albedo_variation is None
