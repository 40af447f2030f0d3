"""DeepFloyd IF with tiny random components: the prior contract plus what only IF does."""

from __future__ import annotations

import pytest
import torch
from prior_contract import PriorContract
from tiny_hub_components import (
    if_scheduler,
    random_text,
    raw_unet,
    text_conditions,
    tiny_if_unet,
    tiny_sd_unet,
)

from att3d.config import SDSConfig
from att3d.priors.base import PriorCondition
from att3d.priors.deepfloyd import DeepFloydPrior


class TestDeepFloydPrior(PriorContract):
    space = "pixel"
    image_size = 16
    diffusion_shape = (3, 16, 16)
    sds_config = SDSConfig(guidance_scale=20.0, t_min=0.02, t_max_start=0.98)
    sds_render_shape = (2, 3, 32, 32)
    sds_timestep_range = (20, 980)

    @pytest.fixture(scope="class")
    @classmethod
    def prior(cls) -> DeepFloydPrior:
        return DeepFloydPrior(tiny_if_unet(), if_scheduler())

    def conditions(self, prior, batch, seed):
        return text_conditions(batch, seed)

    def test_keeps_only_eps_channels(self, prior: DeepFloydPrior) -> None:
        x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
        t = torch.tensor([50, 500])
        cond, uncond = PriorCondition(random_text(2, 10)), PriorCondition(random_text(1, 11))
        with torch.no_grad():
            eps = prior.noise_pred(x_t, t, cond, uncond, guidance_scale=4.0)
        raw_cond = raw_unet(prior.unet, x_t, t, cond.text)
        raw_uncond = raw_unet(prior.unet, x_t, t, uncond.text.expand(2, -1, -1))
        assert raw_cond.shape == (2, 6, 16, 16) and eps.shape == (2, 3, 16, 16)
        expected = raw_uncond[:, :3] + 4.0 * (raw_cond[:, :3] - raw_uncond[:, :3])
        torch.testing.assert_close(eps, expected, atol=1e-4, rtol=1e-4)

    def test_encode_images_maps_to_unit_range(self, prior: DeepFloydPrior) -> None:
        images = torch.zeros(2, 3, 32, 32)
        images[0] = 1.0
        images[1] = 0.5
        x = prior.encode_images(images)
        assert x.shape == (2, 3, 16, 16)
        torch.testing.assert_close(x[0], torch.ones(3, 16, 16))
        torch.testing.assert_close(x[1], torch.zeros(3, 16, 16))

    def test_prompt_cache_insert_without_text_encoder(self) -> None:
        prior = DeepFloydPrior(tiny_if_unet(), if_scheduler())
        with pytest.raises(RuntimeError, match="no text encoder is loaded"):
            prior.unconditional_text(1)
        with pytest.raises(ValueError, match=r"embeddings must be \[2, L, D\]"):
            prior.prompts.insert(["", "x"], random_text(1, 0))
        prior.prompts.insert([""], random_text(1, 14))
        torch.testing.assert_close(prior.unconditional_text(2)[1], random_text(1, 14)[0])


def test_rejects_latent_unet() -> None:
    with pytest.raises(ValueError, match="in_channels=4, out_channels=4"):
        DeepFloydPrior(tiny_sd_unet(), if_scheduler())
