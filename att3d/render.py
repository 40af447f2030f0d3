"""Volume rendering of density/albedo fields, batched over prompts x views.

A field function takes points ``[P, M, 3]`` for ``P`` prompts and returns density ``[P, M]`` and albedo
``[P, M, 3]``. Cameras come prompt-major: ``len(cameras) == P * V`` and camera ``p * V + v`` is view ``v`` of
prompt ``p``. Rays are sampled with stratified jitter between their entry and exit of the scene box, and
composited with the usual emission-absorption quadrature:

    alpha_i = 1 - exp(-sigma_i delta_i),  T_i = prod_{j<i} (1 - alpha_j),  w_i = T_i alpha_i
    rgb = sum_i w_i c_i + (1 - sum_i w_i) * background

Shading (the same model the ShapesWorld ground-truth renderer uses):
- ``albedo``:      c = albedo
- ``diffuse``:     c = albedo * (ambient + (1 - ambient) * max(n . l, 0))
- ``textureless``: the diffuse term with a white albedo (geometry only)
Normals are ``-grad(sigma) / |grad(sigma)|`` by finite differences (central: six probes per sample;
forward: three, reusing the sample's own density), evaluated only at samples that contribute to the image
(weight above a small threshold) because every probe is a field query. The probes' albedo comes for free
and measures how much the albedo changes over ``normal_eps`` (``RenderOutput.albedo_variation``), which
training can penalize against speckled textures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from att3d.cameras import Cameras, camera_rays, ray_box_intersection
from att3d.config import RenderConfig

FieldFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``points [P, M, 3] -> (density [P, M], albedo [P, M, 3])``."""

SHADING_MODES = ("albedo", "diffuse", "textureless")
_NORMAL_WEIGHT_MIN = 1e-4


@dataclass
class RenderOutput:
    """Rendered images, channel-first as the diffusion priors expect."""

    rgb: Tensor
    """Colour ``[B, 3, H, W]`` in [0, 1]."""
    opacity: Tensor
    """Accumulated opacity ``[B, 1, H, W]``."""
    depth: Tensor
    """Expected ray distance ``sum_i w_i t_i`` ``[B, 1, H, W]`` (0 where nothing is hit)."""
    albedo_variation: Tensor | None = None
    """Mean L1 albedo change between contributing samples and their normal probes, weighted by the
    samples' compositing weights (a scalar; ``None`` when no normals were computed)."""


def stratified_samples(
    near: Tensor, far: Tensor, count: int, perturb: bool, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample distances ``[..., count]`` in ``[near, far]`` and their interval lengths."""
    steps = torch.linspace(0.0, 1.0, count + 1, device=near.device)[:-1]
    offsets = torch.full((*near.shape, count), 0.5 / count, device=near.device)
    if perturb:
        offsets = torch.rand((*near.shape, count), generator=generator).to(near.device) / count
    u = steps + offsets
    span = (far - near)[..., None]
    t = near[..., None] + span * u
    delta = span.expand_as(t) / count
    return t, delta


def composite(density: Tensor, color: Tensor, t: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Emission-absorption compositing along the last sample axis: weights, rgb, depth."""
    alpha = 1.0 - torch.exp(-density * delta)
    transmittance = torch.cumprod(
        torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10], dim=-1), dim=-1
    )
    weights = alpha * transmittance
    rgb = (weights[..., None] * color).sum(dim=-2)
    depth = (weights * t).sum(dim=-1)
    return weights, rgb, depth


def density_normals(
    field_fn: FieldFn, points: Tensor, eps: float, own_density: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Unit normals ``[P, M, 3]`` (pointing out of the object) and the probes' albedo ``[P, M, K, 3]``.

    Central differences (``K = 6`` probes at ``±eps`` per axis) unless ``own_density`` (``[P, M]``, the
    density at ``points``) is given: then forward differences with ``K = 3`` probes at ``+eps``.
    """
    p, m, _ = points.shape
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * eps
    if own_density is None:
        offsets = torch.cat([offsets, -offsets])
    k = offsets.shape[0]
    density, albedo = field_fn((points[:, :, None, :] + offsets).reshape(p, m * k, 3))
    density = density.reshape(p, m, k)
    if own_density is None:
        gradient = (density[..., :3] - density[..., 3:]) / (2 * eps)
    else:
        gradient = (density - own_density[..., None]) / eps
    return -F.normalize(gradient, dim=-1), albedo.reshape(p, m, k, 3)


def shade(albedo: Tensor, normals: Tensor | None, light_dir: Tensor, mode: str, ambient: float) -> Tensor:
    """Per-sample colour for a shading mode; ``light_dir`` broadcasts against ``albedo``."""
    if mode == "albedo":
        return albedo
    if normals is None:
        raise ValueError(f"shading {mode!r} needs normals")
    lambert = (normals * light_dir).sum(dim=-1, keepdim=True).clamp_min(0.0)
    base = torch.ones_like(albedo) if mode == "textureless" else albedo
    return base * (ambient + (1.0 - ambient) * lambert)


def render(
    field_fn: FieldFn,
    cameras: Cameras,
    config: RenderConfig,
    num_prompts: int = 1,
    shading: str = "diffuse",
    background: Tensor | None = None,
    image_size: int | None = None,
    perturb: bool = True,
    generator: torch.Generator | None = None,
    bound: float = 1.0,
    sample_filter: Callable[[Tensor], Tensor] | None = None,
) -> RenderOutput:
    """Render ``len(cameras)`` images of ``num_prompts`` fields (cameras prompt-major).

    ``background``: ``[3]`` or ``[B, 3]`` colour(s) in [0, 1]; defaults to ``config.background``.
    ``bound``: half-size of the scene box the rays are sampled in (the field's ``bound``).
    ``sample_filter``: ``points [P, M, 3] -> bool [P, M]``, the samples worth a field query (e.g. an
    occupancy grid's occupied cells); the others count as empty (density 0).
    Without autograd (e.g. under ``torch.no_grad``) rays are processed in chunks of ``config.chunk_rays``.
    """
    if shading not in SHADING_MODES:
        raise ValueError(f"shading must be one of {', '.join(SHADING_MODES)}, got {shading!r}")
    if len(cameras) % num_prompts:
        raise ValueError(f"{len(cameras)} cameras cannot be split evenly over {num_prompts} prompts")
    size = image_size or config.image_size
    device = cameras.c2w.device
    batch = len(cameras)
    views = batch // num_prompts

    origins, dirs = camera_rays(cameras, size)  # [B, H, W, 3]
    near, far, _ = ray_box_intersection(origins, dirs, bound=bound)
    t, delta = stratified_samples(near, far, config.samples_per_ray, perturb, generator)
    light = cameras.light_dir.to(device)[:, None, None, None, :].expand(batch, size, size, 1, 3)

    def to_prompt_major(x: Tensor) -> Tensor:  # [B, H, W, ...] -> [P, V*H*W, ...]
        return x.reshape(num_prompts, views * size * size, *x.shape[3:])

    rays = (to_prompt_major(origins), to_prompt_major(dirs), to_prompt_major(t), to_prompt_major(delta))
    light = to_prompt_major(light)
    chunk = rays[0].shape[1] if torch.is_grad_enabled() else max(1, config.chunk_rays // num_prompts)
    pieces = [
        _render_rays(
            field_fn,
            *(r[:, i : i + chunk] for r in rays),
            light[:, i : i + chunk],
            shading,
            config,
            sample_filter,
        )
        for i in range(0, rays[0].shape[1], chunk)
    ]
    rgb, opacity, depth = (torch.cat([piece[i] for piece in pieces], dim=1) for i in range(3))
    variations = [piece[3] for piece in pieces if piece[3] is not None]
    albedo_variation = torch.stack(variations).mean() if variations else None

    bg = torch.tensor(config.background, device=device) if background is None else background.to(device)
    bg = bg.reshape(-1, 3).expand(batch, 3)
    rgb = rgb.reshape(batch, size, size, 3)
    opacity = opacity.reshape(batch, size, size, 1)
    rgb = rgb + (1.0 - opacity) * bg[:, None, None, :]
    depth = depth.reshape(batch, size, size, 1)
    return RenderOutput(
        rgb=rgb.permute(0, 3, 1, 2),
        opacity=opacity.permute(0, 3, 1, 2),
        depth=depth.permute(0, 3, 1, 2),
        albedo_variation=albedo_variation,
    )


def _query_kept(
    field_fn: FieldFn, points: Tensor, sample_filter: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Query the field only where ``sample_filter`` keeps a sample; elsewhere density and albedo are 0.

    Each prompt's kept samples are gathered into one padded ``[P, M, 3]`` batch (``M``: the most any
    prompt keeps; the padding holds real samples, so their values are exact too)."""
    p, n, _ = points.shape
    keep = sample_filter(points)
    m = max(1, int(keep.sum(dim=1).max()))  # at least one query keeps the step differentiable
    if m == n:
        return field_fn(points)
    order = torch.argsort(keep.to(torch.int8), dim=1, descending=True, stable=True)[:, :m]
    density, albedo = field_fn(torch.gather(points, 1, order[..., None].expand(-1, -1, 3)))
    full_density = torch.zeros(p, n, device=points.device, dtype=density.dtype).scatter(1, order, density)
    full_albedo = torch.zeros(p, n, 3, device=points.device, dtype=albedo.dtype).scatter(
        1, order[..., None].expand(-1, -1, 3), albedo
    )
    return full_density, full_albedo


def _render_rays(
    field_fn: FieldFn,
    origins: Tensor,
    dirs: Tensor,
    t: Tensor,
    delta: Tensor,
    light: Tensor,
    shading: str,
    config: RenderConfig,
    sample_filter: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Render rays ``[P, R, ...]``; returns premultiplied rgb ``[P, R, 3]``, opacity and depth ``[P, R]``
    and the albedo variation at the normal probes (``None`` without normals)."""
    p, r, s = t.shape
    points = origins[:, :, None, :] + dirs[:, :, None, :] * t[..., None]  # [P, R, S, 3]
    if sample_filter is None:
        density, albedo = field_fn(points.reshape(p, r * s, 3))
    else:
        density, albedo = _query_kept(field_fn, points.reshape(p, r * s, 3), sample_filter)
    density = density.reshape(p, r, s)
    albedo = albedo.reshape(p, r, s, 3)
    if shading == "albedo":
        weights, rgb, depth = composite(density, albedo, t, delta)
        return rgb, weights.sum(dim=-1), depth, None

    # Weights do not depend on colour, so find the contributing samples first and pay for normals there only.
    with torch.no_grad():
        alpha = 1.0 - torch.exp(-density * delta)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1]], -1), -1)
        active = (alpha * trans) > _NORMAL_WEIGHT_MIN  # [P, R, S]
    normals = torch.zeros_like(albedo)
    variation = None
    counts = active.flatten(1).sum(dim=1)
    if counts.max() > 0:
        # Gather each prompt's active samples into a padded [P, M, 3] batch for one field call.
        m = int(counts.max())
        order = torch.argsort(active.flatten(1).to(torch.int8), dim=1, descending=True, stable=True)[:, :m]
        flat_points = points.reshape(p, r * s, 3)
        selected = torch.gather(flat_points, 1, order[..., None].expand(-1, -1, 3))
        own = torch.gather(density.reshape(p, r * s), 1, order) if config.normals == "forward" else None
        selected_normals, probe_albedo = density_normals(field_fn, selected, config.normal_eps, own)
        valid = torch.arange(m, device=t.device)[None, :] < counts[:, None]
        selected_normals = selected_normals * valid[..., None]
        # Weighted by the (detached) compositing weights: speckle that shows in the image counts.
        sample_albedo = torch.gather(albedo.reshape(p, r * s, 3), 1, order[..., None].expand(-1, -1, 3))
        sample_weight = torch.gather((alpha * trans).reshape(p, r * s), 1, order) * valid
        change = (probe_albedo - sample_albedo[:, :, None, :]).abs().mean(dim=(2, 3))
        variation = (change * sample_weight).sum() / sample_weight.sum().clamp_min(1e-8)
        normals = torch.zeros(p, r * s, 3, device=t.device, dtype=albedo.dtype).scatter(
            1, order[..., None].expand(-1, -1, 3), selected_normals
        )
        normals = normals.reshape(p, r, s, 3)
    color = shade(albedo, normals, light, shading, config.ambient)
    weights, rgb, depth = composite(density, color, t, delta)
    return rgb, weights.sum(dim=-1), depth, variation
