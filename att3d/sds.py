"""Score distillation sampling (DreamFusion, Poole et al. 2022) against any :class:`DiffusionPrior`.

For a render ``x`` (in the prior's space), a timestep ``t`` and noise ``ε``:

    x_t  = sqrt(ᾱ_t) x + sqrt(1 - ᾱ_t) ε
    grad = w(t) (ε̂(x_t; y, t) - ε)          (the UNet runs under no_grad)

and the gradient reaches the generator through ``x`` (and through the VAE encoder for latent priors).
We write it in *target form*, ``loss = 0.5 ||x - stopgrad(x - grad)||² / B``, whose gradient w.r.t. ``x`` is
exactly ``grad / B`` and whose value (``0.5 ||grad||² / B``) is a meaningful number to log.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from att3d.config import SDSConfig
from att3d.priors.base import DiffusionPrior, PriorCondition


def t_max_at(config: SDSConfig, step: int) -> float:
    """The annealed upper timestep bound (fraction of the schedule) at ``step``."""
    if config.t_anneal_steps <= 0:
        return config.t_max_start
    frac = min(1.0, step / config.t_anneal_steps)
    return config.t_max_start + frac * (config.t_max_end - config.t_max_start)


def sample_timesteps(
    prior: DiffusionPrior, batch: int, config: SDSConfig, step: int, generator: torch.Generator | None = None
) -> Tensor:
    """Integer timesteps ``[batch]`` uniform in ``[t_min, t_max(step)] * num_train_timesteps``."""
    n = prior.num_train_timesteps
    lo = int(config.t_min * n)
    hi = max(lo + 1, int(t_max_at(config, step) * n))
    return torch.randint(lo, min(hi, n - 1) + 1, (batch,), generator=generator).to(prior.device)


def sds_weight(alpha_bar: Tensor, weighting: str) -> Tensor:
    """``w(t)`` for the configured weighting."""
    if weighting == "1-alpha_bar":
        return 1.0 - alpha_bar
    if weighting == "sqrt(1-alpha_bar)":
        return (1.0 - alpha_bar).sqrt()
    if weighting == "uniform":
        return torch.ones_like(alpha_bar)
    raise ValueError(f"sds.weighting must be 1-alpha_bar, sqrt(1-alpha_bar) or uniform, got {weighting!r}")


@dataclass
class SDSOutput:
    loss: Tensor
    """Target-form loss (differentiable w.r.t. the render)."""
    grad_norm: Tensor
    """Mean L2 norm of the per-image SDS gradient (detached), for logging."""
    timesteps: Tensor
    """The sampled timesteps ``[B]``."""


def sds_loss(
    prior: DiffusionPrior,
    images: Tensor,
    cond: PriorCondition,
    uncond: PriorCondition,
    config: SDSConfig,
    step: int = 0,
    generator: torch.Generator | None = None,
) -> SDSOutput:
    """SDS for renders ``images [B, 3, H, W]`` in [0, 1]; gradient flows into ``images``."""
    x = prior.encode_images(images)
    batch = x.shape[0]
    t = sample_timesteps(prior, batch, config, step, generator)
    alpha_bar = prior.alphas_cumprod[t].to(x.dtype)
    with torch.no_grad():
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x_t = prior.add_noise(x.detach(), noise, t)
        eps = prior.noise_pred(x_t, t, cond, uncond, config.guidance_scale)
        grad = sds_weight(alpha_bar, config.weighting).view(-1, *([1] * (x.dim() - 1))) * (eps - noise)
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if config.grad_clip > 0:
            grad = grad.clamp(-config.grad_clip, config.grad_clip)
        target = x.detach() - grad
    loss = 0.5 * ((x - target) ** 2).sum() / batch
    grad_norm = grad.flatten(1).norm(dim=1).mean()
    return SDSOutput(loss=loss, grad_norm=grad_norm, timesteps=t)
