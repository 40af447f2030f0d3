"""Score distillation against an analytic prior whose optimum is known.

The toy prior "predicts" a fixed clean image ``x0*`` whatever it is given. Then
``eps_hat = (x_t - sqrt(ab) x0*) / sqrt(1 - ab)`` and the SDS gradient is exactly
``w(t) sqrt(ab) / sqrt(1 - ab) (x - x0*)`` for any noise: SDS must pull every image straight at ``x0*``.
"""

from __future__ import annotations

import math

import pytest
import torch

from att3d.config import SDSConfig
from att3d.priors.base import DiffusionPrior, PriorCondition, eps_from_sample, guided
from att3d.sds import sample_timesteps, sds_loss, sds_weight, t_max_at


class FixedTargetPrior(DiffusionPrior):
    """Pixel prior whose clean-image prediction is ``cond_target`` (``uncond_target`` unconditionally)."""

    space = "pixel"

    def __init__(self, cond_target: torch.Tensor, uncond_target: torch.Tensor | None = None) -> None:
        self.image_size = cond_target.shape[-1]
        self.num_train_timesteps = 1000
        self.alphas_cumprod = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000), dim=0)
        self.cond_target = cond_target  # in [-1, 1], [3, H, W]
        self.uncond_target = cond_target if uncond_target is None else uncond_target

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return torch.ones(len(prompts), 1)

    def unconditional_text(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    def noise_pred(self, x_t, t, cond, uncond, guidance_scale):
        x0 = guided(self.uncond_target.expand_as(x_t), self.cond_target.expand_as(x_t), guidance_scale)
        return eps_from_sample(x_t, x0, self.alphas_cumprod[t])


def _conditions(batch: int) -> tuple[PriorCondition, PriorCondition]:
    return PriorCondition(torch.ones(batch, 1)), PriorCondition(torch.zeros(batch, 1))


def _target(size: int = 8) -> torch.Tensor:
    """A target image in [0, 1]: red left half, blue right half."""
    image = torch.zeros(3, size, size)
    image[0, :, : size // 2] = 1.0
    image[2, :, size // 2 :] = 1.0
    return image


def test_sds_gradient_is_exactly_towards_the_known_optimum():
    target = _target()
    prior = FixedTargetPrior(target * 2 - 1)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
    config = SDSConfig(guidance_scale=1.0)
    out = sds_loss(prior, images, *_conditions(3), config, generator=torch.Generator().manual_seed(1))
    out.loss.backward()

    ab = prior.alphas_cumprod[out.timesteps]
    coeff = (1 - ab) * ab.sqrt() / (1 - ab).sqrt()  # w(t) sqrt(ab) / sqrt(1 - ab)
    # x = 2 img - 1, so x - x0* = 2 (img - target) and dx/dimg = 2; the loss divides by B = 3.
    expected = (4.0 / 3.0) * coeff.view(-1, 1, 1, 1) * (images.detach() - target)
    torch.testing.assert_close(images.grad, expected, rtol=1e-3, atol=1e-5)
    # Target form: the loss value is 0.5 ||grad||^2 / B.
    grad_x = coeff.view(-1, 1, 1, 1) * 2 * (images.detach() - target)
    torch.testing.assert_close(out.loss, 0.5 * grad_x.pow(2).sum() / 3, rtol=1e-3, atol=1e-6)


def test_sds_steps_move_an_image_to_the_target():
    target = _target()
    prior = FixedTargetPrior(target * 2 - 1)
    image = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    optimizer = torch.optim.SGD([image], lr=0.25)  # contracts by (1 - c), c = sqrt(ab (1 - ab)) per step
    generator = torch.Generator().manual_seed(0)
    start = (image.detach() - target).norm().item()
    for step in range(60):
        optimizer.zero_grad()
        sds_loss(
            prior, image, *_conditions(1), SDSConfig(guidance_scale=1.0), step, generator
        ).loss.backward()
        optimizer.step()
    assert (image.detach() - target).norm().item() < 0.1 * start


def test_classifier_free_guidance_extrapolates_from_unconditional():
    cond = torch.full((3, 4, 4), 0.5)
    uncond = torch.full((3, 4, 4), -0.5)
    prior = FixedTargetPrior(cond, uncond)
    images = torch.full((2, 3, 4, 4), 0.5, requires_grad=True)  # x = 0 in prior space
    out = sds_loss(prior, images, *_conditions(2), SDSConfig(guidance_scale=3.0), generator=torch.Generator())
    out.loss.backward()
    # Guided x0* = -0.5 + 3 (0.5 + 0.5) = 2.5 > x = 0: the gradient must push the image up (negative grad).
    assert (images.grad < 0).all()
    ab = prior.alphas_cumprod[out.timesteps]
    coeff = ((1 - ab) * ab.sqrt() / (1 - ab).sqrt()).view(-1, 1, 1, 1)
    torch.testing.assert_close(
        images.grad, 2 * coeff * (0.0 - 2.5) / 2 * torch.ones_like(images), rtol=1e-3, atol=1e-6
    )


def test_timesteps_stay_in_the_annealed_range():
    prior = FixedTargetPrior(torch.zeros(3, 4, 4))
    config = SDSConfig(t_min=0.02, t_max_start=0.98, t_max_end=0.5, t_anneal_steps=100)
    assert t_max_at(config, 0) == 0.98
    assert t_max_at(config, 50) == pytest.approx(0.74)
    assert t_max_at(config, 100) == pytest.approx(0.5)
    assert t_max_at(config, 10_000) == pytest.approx(0.5)
    assert t_max_at(SDSConfig(t_anneal_steps=0), 10_000) == SDSConfig().t_max_start

    generator = torch.Generator().manual_seed(0)
    early = sample_timesteps(prior, 4000, config, step=0, generator=generator)
    late = sample_timesteps(prior, 4000, config, step=100, generator=generator)
    assert early.min() >= 20 and early.max() <= 980
    assert early.max() > 950 and early.min() < 40  # the whole range is used
    assert late.min() >= 20 and late.max() <= 500
    assert late.max() > 470


@pytest.mark.parametrize(
    ("weighting", "expected"),
    [("1-alpha_bar", [0.75, 0.36]), ("sqrt(1-alpha_bar)", [0.866025, 0.6]), ("uniform", [1.0, 1.0])],
)
def test_sds_weighting(weighting, expected):
    alpha_bar = torch.tensor([0.25, 0.64])
    torch.testing.assert_close(sds_weight(alpha_bar, weighting), torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_unknown_weighting_is_rejected():
    with pytest.raises(ValueError, match=r"sds\.weighting must be"):
        sds_weight(torch.tensor([0.5]), "snr")


def test_grad_clip_bounds_every_element():
    prior = FixedTargetPrior(torch.ones(3, 4, 4))
    images = torch.zeros(2, 3, 4, 4, requires_grad=True)  # x = -1, far from x0* = 1
    out = sds_loss(prior, images, *_conditions(2), SDSConfig(guidance_scale=1.0, grad_clip=0.01))
    out.loss.backward()
    # d loss / d img = 2 grad / B with |grad| <= clip (and the clip is active: unclipped it is far larger).
    assert images.grad.abs().max().item() == pytest.approx(2 * 0.01 / 2, rel=1e-5)


def test_non_finite_prior_output_gives_zero_gradient():
    class NaNPrior(FixedTargetPrior):
        def noise_pred(self, x_t, t, cond, uncond, guidance_scale):
            return torch.full_like(x_t, math.nan)

    images = torch.rand(2, 3, 4, 4, requires_grad=True)
    out = sds_loss(NaNPrior(torch.zeros(3, 4, 4)), images, *_conditions(2), SDSConfig())
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert torch.count_nonzero(images.grad) == 0
