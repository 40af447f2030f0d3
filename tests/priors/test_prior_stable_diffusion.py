"""Stable Diffusion with tiny random components: the prior contract plus what only a latent prior does."""

from __future__ import annotations

import pytest
import torch
from prior_contract import PriorContract
from tiny_hub_components import (
    TEXT_DIM,
    random_text,
    raw_unet,
    sd_scheduler,
    text_conditions,
    tiny_sd_unet,
    tiny_vae,
)

from att3d.config import SDSConfig
from att3d.priors.base import PriorCondition
from att3d.priors.hub import unet_eps
from att3d.priors.stable_diffusion import StableDiffusionPrior


class TestStableDiffusionPrior(PriorContract):
    space = "latent"
    image_size = 16  # latent sample_size 8 × VAE downsampling 2
    diffusion_shape = (4, 8, 8)
    sds_config = SDSConfig(guidance_scale=5.0, t_min=0.3, t_max_start=0.4)
    sds_render_shape = (3, 3, 16, 16)
    sds_timestep_range = (300, 400)

    @pytest.fixture(scope="class")
    @classmethod
    def prior(cls) -> StableDiffusionPrior:
        return StableDiffusionPrior(tiny_sd_unet(), tiny_vae(), sd_scheduler())

    def conditions(self, prior, batch, seed):
        return text_conditions(batch, seed)

    def test_schedule_and_frozen_vae(self, prior: StableDiffusionPrior) -> None:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        torch.testing.assert_close(prior.alphas_cumprod, torch.cumprod(1 - betas, 0).float())
        assert not any(p.requires_grad for p in prior.unet.parameters())
        assert not any(p.requires_grad for p in prior.vae.parameters())
        assert not prior.unet.training and not prior.vae.training

    def test_encode_images_carries_gradient_through_vae(self, prior: StableDiffusionPrior) -> None:
        images = torch.rand(2, 3, 24, 24, requires_grad=True)
        latents = prior.encode_images(images, generator=torch.Generator().manual_seed(0))
        assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
        # Reference: resize to 16 px, map to [-1, 1], sample the posterior with the same seed, scale.
        resized = torch.nn.functional.interpolate(
            images.detach(), size=(16, 16), mode="bilinear", antialias=True
        )
        with torch.no_grad():
            posterior = prior.vae.encode(resized * 2 - 1).latent_dist
            expected = posterior.sample(generator=torch.Generator().manual_seed(0)) * 0.18215
        torch.testing.assert_close(latents.detach(), expected, atol=1e-5, rtol=1e-5)
        latents.square().sum().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0 and images.grad.isfinite().all()
        assert all(p.grad is None for p in prior.vae.parameters())

    def test_noise_pred_is_one_unet_call_on_uncond_and_cond(self, prior: StableDiffusionPrior) -> None:
        x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
        t = torch.tensor([100, 700])
        cond, uncond = PriorCondition(random_text(2, 2)), PriorCondition(random_text(1, 3))
        calls: list[int] = []
        hook = prior.unet.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
        with torch.no_grad():
            eps = prior.noise_pred(x_t, t, cond, uncond, guidance_scale=7.5)
        hook.remove()
        assert calls == [4]  # one UNet call on [uncond; cond]
        e_cond = raw_unet(prior.unet, x_t, t, cond.text)
        e_uncond = raw_unet(prior.unet, x_t, t, uncond.text.expand(2, -1, -1))
        torch.testing.assert_close(eps, e_uncond + 7.5 * (e_cond - e_uncond), atol=1e-4, rtol=1e-4)
        with torch.no_grad():
            plain = prior.noise_pred(x_t, t, cond, uncond, guidance_scale=1.0)
        torch.testing.assert_close(plain, e_cond, atol=1e-5, rtol=1e-5)

    def test_noise_pred_rejects_mismatched_text(self, prior: StableDiffusionPrior) -> None:
        x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
        with pytest.raises(
            ValueError, match=r"cond.text must be \[2, L, D\] or \[1, L, D\], got \(3, 6, 16\)"
        ):
            prior.noise_pred(
                x_t, t, PriorCondition(random_text(3, 0)), PriorCondition(random_text(1, 0)), 1.0
            )
        short = PriorCondition(torch.randn(1, 4, TEXT_DIM))
        with pytest.raises(ValueError, match="cond and uncond token embeddings differ in shape"):
            prior.noise_pred(x_t, t, PriorCondition(random_text(2, 0)), short, 1.0)
        with pytest.raises(ValueError, match="prediction_type must be one of"):
            unet_eps(prior.unet, x_t, t, short, short, 1.0, "flow", prior.alphas_cumprod)


def test_v_prediction_converts_to_eps() -> None:
    prior = StableDiffusionPrior(tiny_sd_unet(), tiny_vae(), sd_scheduler("v_prediction"))
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([10, 900])
    cond, uncond = PriorCondition(random_text(2, 5)), PriorCondition(random_text(2, 6))
    with torch.no_grad():
        eps = prior.noise_pred(x_t, t, cond, uncond, guidance_scale=3.0)
    v_cond, v_uncond = raw_unet(prior.unet, x_t, t, cond.text), raw_unet(prior.unet, x_t, t, uncond.text)
    v = v_uncond + 3.0 * (v_cond - v_uncond)
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    for i, step in enumerate(t.tolist()):
        alpha_bar = float(torch.prod(1 - betas[: step + 1]))
        # x_t = √ᾱ x0 + √(1-ᾱ) ε and v = √ᾱ ε - √(1-ᾱ) x0  =>  ε = √ᾱ v + √(1-ᾱ) x_t
        expected = alpha_bar**0.5 * v[i] + (1 - alpha_bar) ** 0.5 * x_t[i]
        torch.testing.assert_close(eps[i], expected, atol=1e-4, rtol=1e-4)
