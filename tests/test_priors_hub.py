"""Hub priors (Stable Diffusion, DeepFloyd IF) with tiny random components, view prompts and the registry.

As in diffusers' own fast tests, every model is built from a constructor config with a fixed seed;
nothing is downloaded.
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from att3d.cameras import make_cameras
from att3d.config import SDSConfig
from att3d.priors.base import PriorCondition
from att3d.priors.deepfloyd import DeepFloydPrior
from att3d.priors.hub import unet_eps
from att3d.priors.registry import load_prior
from att3d.priors.stable_diffusion import StableDiffusionPrior
from att3d.priors.view_prompts import (
    BACK,
    FRONT,
    OVERHEAD,
    SIDE,
    VIEW_SUFFIXES,
    condition_for,
    encode_view_prompts,
    view_index,
)
from att3d.sds import sds_loss

TOKENS, TEXT_DIM = 6, 16


def tiny_sd_unet(in_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=4,
    )


def tiny_vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def tiny_if_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=3,
        out_channels=6,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32,  # the group-normed cross-attention input uses 32 groups
        encoder_hid_dim=TEXT_DIM,
        attention_head_dim=4,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
    )


def sd_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
    )


def if_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range"
    )


class CharTokenizer:
    """Stand-in tokenizer: one id per character, padded to ``model_max_length`` (no vocabulary files)."""

    model_max_length = TOKENS

    def __call__(self, prompts, padding, max_length, truncation, return_tensors, **_):
        ids = torch.zeros(len(prompts), max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            codes = [ord(c) % 64 + 1 for c in prompt][:max_length]
            ids[row, : len(codes)] = torch.tensor(codes)
        return types.SimpleNamespace(input_ids=ids, attention_mask=(ids > 0).long())


def tiny_clip() -> CLIPTextModel:
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=66,
        hidden_size=TEXT_DIM,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TOKENS,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return CLIPTextModel(config)


def random_text(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def raw_unet(unet: UNet2DConditionModel, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text).sample


@pytest.fixture(scope="module")
def sd_prior() -> StableDiffusionPrior:
    return StableDiffusionPrior(tiny_sd_unet(), tiny_vae(), sd_scheduler())


@pytest.fixture(scope="module")
def if_prior() -> DeepFloydPrior:
    return DeepFloydPrior(tiny_if_unet(), if_scheduler())


# ---------------------------------------------------------------------------------------------- SD


def test_sd_image_size_and_schedule(sd_prior: StableDiffusionPrior) -> None:
    assert sd_prior.space == "latent"
    assert sd_prior.image_size == 16  # latent sample_size 8 × VAE downsampling 2
    assert sd_prior.num_train_timesteps == 1000
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    torch.testing.assert_close(sd_prior.alphas_cumprod, torch.cumprod(1 - betas, 0).float())
    assert not any(p.requires_grad for p in sd_prior.unet.parameters())
    assert not any(p.requires_grad for p in sd_prior.vae.parameters())
    assert not sd_prior.unet.training and not sd_prior.vae.training


def test_sd_encode_images_carries_gradient_through_vae(sd_prior: StableDiffusionPrior) -> None:
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    latents = sd_prior.encode_images(images, generator=torch.Generator().manual_seed(0))
    assert latents.shape == (2, 4, 8, 8) and latents.dtype == torch.float32
    # Reference: resize to 16 px, map to [-1, 1], sample the posterior with the same seed, scale.
    resized = torch.nn.functional.interpolate(images.detach(), size=(16, 16), mode="bilinear", antialias=True)
    with torch.no_grad():
        posterior = sd_prior.vae.encode(resized * 2 - 1).latent_dist
        expected = posterior.sample(generator=torch.Generator().manual_seed(0)) * 0.18215
    torch.testing.assert_close(latents.detach(), expected, atol=1e-5, rtol=1e-5)
    latents.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0 and images.grad.isfinite().all()
    assert all(p.grad is None for p in sd_prior.vae.parameters())


def test_sd_encode_images_rejects_bad_shape(sd_prior: StableDiffusionPrior) -> None:
    with pytest.raises(ValueError, match=r"images must be \[B, 3, H, W\].*\(2, 4, 16, 16\)"):
        sd_prior.encode_images(torch.rand(2, 4, 16, 16))


def test_sd_noise_pred_batches_and_guides(sd_prior: StableDiffusionPrior) -> None:
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 700])
    cond, uncond = PriorCondition(random_text(2, 2)), PriorCondition(random_text(1, 3))
    calls: list[int] = []
    hook = sd_prior.unet.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    with torch.no_grad():
        eps = sd_prior.noise_pred(x_t, t, cond, uncond, guidance_scale=7.5)
    hook.remove()
    assert calls == [4]  # one UNet call on [uncond; cond]
    e_cond = raw_unet(sd_prior.unet, x_t, t, cond.text)
    e_uncond = raw_unet(sd_prior.unet, x_t, t, uncond.text.expand(2, -1, -1))
    torch.testing.assert_close(eps, e_uncond + 7.5 * (e_cond - e_uncond), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        plain = sd_prior.noise_pred(x_t, t, cond, uncond, guidance_scale=1.0)
    torch.testing.assert_close(plain, e_cond, atol=1e-5, rtol=1e-5)


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


def test_sds_through_stable_diffusion(sd_prior: StableDiffusionPrior) -> None:
    config = SDSConfig(guidance_scale=5.0, t_min=0.3, t_max_start=0.4)
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    cond, uncond = PriorCondition(random_text(3, 7)), PriorCondition(random_text(1, 8))
    out = sds_loss(sd_prior, images, cond, uncond, config, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert images.grad is not None and images.grad.shape == images.shape
    assert images.grad.isfinite().all() and images.grad.abs().sum() > 0
    assert out.timesteps.shape == (3,)
    assert ((out.timesteps >= 300) & (out.timesteps <= 400)).all()


def test_noise_pred_rejects_mismatched_text(sd_prior: StableDiffusionPrior) -> None:
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"cond.text must be \[2, L, D\] or \[1, L, D\], got \(3, 6, 16\)"):
        sd_prior.noise_pred(x_t, t, PriorCondition(random_text(3, 0)), PriorCondition(random_text(1, 0)), 1.0)
    short = PriorCondition(torch.randn(1, 4, TEXT_DIM))
    with pytest.raises(ValueError, match="cond and uncond token embeddings differ in shape"):
        sd_prior.noise_pred(x_t, t, PriorCondition(random_text(2, 0)), short, 1.0)
    with pytest.raises(ValueError, match="prediction_type must be one of"):
        unet_eps(sd_prior.unet, x_t, t, short, short, 1.0, "flow", sd_prior.alphas_cumprod)


# ---------------------------------------------------------------------------------------------- IF


def test_if_keeps_only_eps_channels(if_prior: DeepFloydPrior) -> None:
    assert if_prior.space == "pixel" and if_prior.image_size == 16
    x_t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(9))
    t = torch.tensor([50, 500])
    cond, uncond = PriorCondition(random_text(2, 10)), PriorCondition(random_text(1, 11))
    with torch.no_grad():
        eps = if_prior.noise_pred(x_t, t, cond, uncond, guidance_scale=4.0)
    raw_cond = raw_unet(if_prior.unet, x_t, t, cond.text)
    raw_uncond = raw_unet(if_prior.unet, x_t, t, uncond.text.expand(2, -1, -1))
    assert raw_cond.shape == (2, 6, 16, 16) and eps.shape == (2, 3, 16, 16)
    expected = raw_uncond[:, :3] + 4.0 * (raw_cond[:, :3] - raw_uncond[:, :3])
    torch.testing.assert_close(eps, expected, atol=1e-4, rtol=1e-4)


def test_if_encode_images_maps_to_unit_range(if_prior: DeepFloydPrior) -> None:
    images = torch.zeros(2, 3, 32, 32)
    images[0] = 1.0
    images[1] = 0.5
    x = if_prior.encode_images(images)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[0], torch.ones(3, 16, 16))
    torch.testing.assert_close(x[1], torch.zeros(3, 16, 16))


def test_sds_through_deepfloyd(if_prior: DeepFloydPrior) -> None:
    config = SDSConfig(guidance_scale=20.0, t_min=0.02, t_max_start=0.98)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    cond, uncond = PriorCondition(random_text(2, 12)), PriorCondition(random_text(1, 13))
    out = sds_loss(if_prior, images, cond, uncond, config, generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    assert images.grad is not None and images.grad.shape == (2, 3, 32, 32)
    assert images.grad.isfinite().all() and images.grad.abs().sum() > 0
    assert ((out.timesteps >= 20) & (out.timesteps <= 980)).all()


def test_if_rejects_latent_unet() -> None:
    with pytest.raises(ValueError, match="in_channels=4, out_channels=4"):
        DeepFloydPrior(tiny_sd_unet(), if_scheduler())


# ------------------------------------------------------------------------------------- view prompts


def test_view_index_by_elevation_and_azimuth() -> None:
    elevation = [0, 10, 0, 0, 0, 0, 0, 30, 70, 59]
    azimuth = [0, 44, 45, 90, -90, 136, -170, 350, 180, 180]
    expected = [FRONT, FRONT, SIDE, SIDE, SIDE, BACK, BACK, FRONT, OVERHEAD, BACK]
    assert view_index(make_cameras(elevation, azimuth)).tolist() == expected
    assert VIEW_SUFFIXES[BACK] == ", back view" and VIEW_SUFFIXES[OVERHEAD] == ", overhead view"


def test_condition_for_gathers_per_camera_view() -> None:
    cameras = make_cameras([0, 0, 80], [180, 0, 0])
    by_view = torch.arange(len(VIEW_SUFFIXES), dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 3)
    cond = condition_for(by_view, cameras)
    assert cond.text.shape == (3, 2, 3) and cond.cameras is cameras
    assert cond.text[:, 0, 0].tolist() == [BACK, FRONT, OVERHEAD]
    per_image = torch.stack([by_view, by_view + 10, by_view + 20])  # [B, V, L, D]
    assert condition_for(per_image, cameras).text[:, 0, 0].tolist() == [BACK, 10 + FRONT, 20 + OVERHEAD]
    with pytest.raises(ValueError, match=r"must be \[4, L, D\] or \[3, 4, L, D\]"):
        condition_for(per_image[:2], cameras)


def test_encode_text_caches_per_prompt_and_suffix() -> None:
    clip = tiny_clip()
    prior = StableDiffusionPrior(
        tiny_sd_unet(), tiny_vae(), sd_scheduler(), CharTokenizer(), clip, negative_prompt="blurry"
    )
    calls: list[int] = []
    clip.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    by_view = encode_view_prompts(prior.encode_text, ["a cube", "a cone"])
    assert by_view.shape == (2, len(VIEW_SUFFIXES), TOKENS, TEXT_DIM)
    assert calls == [8]
    again = encode_view_prompts(prior.encode_text, ["a cube"])
    assert calls == [8]  # all four (prompt, suffix) strings were cached
    torch.testing.assert_close(again[0], by_view[0])
    with torch.no_grad():
        direct = clip(CharTokenizer()(["a cone, side view"], "max_length", TOKENS, True, "pt").input_ids)[0]
    torch.testing.assert_close(by_view[1, SIDE], direct[0])
    negative = prior.unconditional_text(3)
    assert negative.shape == (3, TOKENS, TEXT_DIM)
    torch.testing.assert_close(negative[2], prior.encode_text(["blurry"])[0])
    prior.release_text_encoder()
    assert prior.text_encoder is None
    torch.testing.assert_close(prior.unconditional_text(1)[0], negative[0])
    with pytest.raises(RuntimeError, match=r"no text encoder is loaded.*'a sphere'"):
        prior.encode_text(["a sphere"])


def test_prompt_cache_insert_without_text_encoder(if_prior: DeepFloydPrior) -> None:
    with pytest.raises(RuntimeError, match="no text encoder is loaded"):
        if_prior.unconditional_text(1)
    with pytest.raises(ValueError, match=r"embeddings must be \[2, L, D\]"):
        if_prior.prompts.insert(["", "x"], random_text(1, 0))
    if_prior.prompts.insert([""], random_text(1, 14))
    torch.testing.assert_close(if_prior.unconditional_text(2)[1], random_text(1, 14)[0])


# ----------------------------------------------------------------------------------------- registry


def test_load_prior_names_dispatch_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, object]] = []

    def recorder(kind: str):
        return classmethod(lambda cls, path=None, device=None, **kw: seen.append((kind, path, device)))

    monkeypatch.setattr(StableDiffusionPrior, "from_pretrained", recorder("sd"))
    monkeypatch.setattr(DeepFloydPrior, "from_pretrained", recorder("if"))
    shapes = types.ModuleType("att3d.priors.shapes")
    shapes.ShapesPrior = type("ShapesPrior", (), {"from_pretrained": recorder("shapes")})
    monkeypatch.setitem(sys.modules, "att3d.priors.shapes", shapes)

    load_prior("stable-diffusion", device="cpu")
    load_prior("stable-diffusion:stabilityai/stable-diffusion-2-1")
    load_prior("deepfloyd-if", device="cuda:1")
    load_prior("shapes", device="cpu")
    assert seen == [
        ("sd", "stabilityai/stable-diffusion-2-1-base", "cpu"),
        ("sd", "stabilityai/stable-diffusion-2-1", None),
        ("if", "DeepFloyd/IF-I-XL-v1.0", "cuda:1"),
        ("shapes", None, "cpu"),
    ]


def test_load_prior_rejects_unknown_and_bad_folders(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown prior 'dalle'.*shapes, stable-diffusion, deepfloyd-if"):
        load_prior("dalle")
    with pytest.raises(ValueError, match=r"has no model_index\.json"):
        load_prior(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="_class_name 'FluxPipeline' is not a supported prior"):
        load_prior(tmp_path)


def test_load_prior_from_local_sd_folder(tmp_path) -> None:
    tiny_sd_unet().save_pretrained(tmp_path / "unet")
    tiny_vae().save_pretrained(tmp_path / "vae")
    sd_scheduler("v_prediction").save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    prior = load_prior(tmp_path, device="cpu", load_text_encoder=False, local_files_only=True)
    assert isinstance(prior, StableDiffusionPrior)
    assert prior.prediction_type == "v_prediction" and prior.image_size == 16
    assert prior.unet.dtype == torch.float32 and prior.text_encoder is None
    reference = tiny_sd_unet()
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([3]), random_text(1, 0)
    torch.testing.assert_close(raw_unet(prior.unet, x, t, text), raw_unet(reference, x, t, text))
