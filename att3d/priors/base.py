"""The interface every frozen diffusion prior implements for score distillation.

A prior owns its denoiser, noise schedule and text encoder. It is never trainable: it stays out of the
generator's state dict, optimizer and DistributedDataParallel wrapper. Score distillation (``att3d.sds``)
only needs the four things below, so the bundled ShapesWorld prior, DeepFloyd IF and Stable Diffusion are
interchangeable.

Classifier-free guidance has ONE form across the project (Ho & Salimans 2022):

    eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)

so ``guidance_scale = 1`` is the plain conditional prediction and ``0`` the unconditional one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from att3d.cameras import Cameras


@dataclass
class PriorCondition:
    """Everything a prior is conditioned on for a batch of ``B`` images.

    ``text`` is whatever the prior's text encoder produced (a pooled vector ``[B, D]`` for the ShapesWorld
    prior, a token sequence ``[B, L, D]`` for IF and Stable Diffusion). ``cameras`` is used by
    view-conditioned priors; text-only priors use it to choose view-dependent prompt suffixes before
    encoding, so they ignore it here.
    """

    text: Tensor
    cameras: Cameras | None = None


class DiffusionPrior(ABC):
    """A frozen text-to-image diffusion model used as a score function."""

    image_size: int
    """Native resolution (pixels for pixel priors, the decoded image size for latent priors)."""
    space: str
    """``pixel`` (denoises images in [-1, 1]) or ``latent`` (denoises VAE latents)."""
    num_train_timesteps: int
    """Length of the discrete noise schedule."""
    view_conditioned: bool = False
    """True when the prior reads ``PriorCondition.cameras``; text-only priors get view-dependent prompt
    suffixes from the trainer instead."""
    alphas_cumprod: Tensor
    """``ᾱ_t`` for every discrete timestep ``[num_train_timesteps]`` (on the prior's device)."""

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> Tensor:
        """Text conditioning for ``prompts`` (computed once and cached by callers)."""

    @abstractmethod
    def unconditional_text(self, batch: int) -> Tensor:
        """The conditioning used for the unconditional branch of guidance (empty or negative prompt)."""

    @abstractmethod
    def encode_images(self, images: Tensor) -> Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] -> the prior's diffusion space (differentiable).

        Pixel priors resize to ``image_size`` and map to [-1, 1]; latent priors run the VAE encoder.
        """

    def known_prompts(self) -> list[str] | None:
        """The prompts the prior was trained on when it knows only those (a closed vocabulary, as the
        bundled ShapesWorld prior), else ``None`` (an open-vocabulary prior such as Stable Diffusion)."""
        return None

    @abstractmethod
    def noise_pred(
        self, x_t: Tensor, t: Tensor, cond: PriorCondition, uncond: PriorCondition, guidance_scale: float
    ) -> Tensor:
        """Guided noise prediction ``eps`` for noisy inputs ``x_t`` at integer timesteps ``t`` ``[B]``.

        Priors trained to predict the clean sample or v convert to ``eps`` here, so SDS sees one form.
        Called under ``torch.no_grad``.
        """

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise``."""
        a = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def freeze(*modules: torch.nn.Module | None) -> None:
    """Priors are never trained: no parameter gradients, eval mode (no dropout)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False).eval()


def guided(eps_uncond: Tensor, eps_cond: Tensor, guidance_scale: float) -> Tensor:
    """The project's single form of classifier-free guidance (see module docstring)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def eps_from_sample(x_t: Tensor, x0: Tensor, alpha_bar: Tensor) -> Tensor:
    """Convert a clean-sample prediction into the equivalent noise prediction."""
    a = alpha_bar.view(-1, *([1] * (x_t.dim() - 1)))
    return (x_t - a.sqrt() * x0) / (1.0 - a).sqrt().clamp_min(1e-8)


def eps_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor) -> Tensor:
    """Convert a v-prediction (Salimans & Ho 2022) into the equivalent noise prediction."""
    a = alpha_bar.view(-1, *([1] * (x_t.dim() - 1)))
    return a.sqrt() * v + (1.0 - a).sqrt() * x_t
