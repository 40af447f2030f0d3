"""Tiny random components for the hub priors (Stable Diffusion, DeepFloyd IF), as diffusers' fast tests build.

Every model comes from a constructor config with a fixed seed; nothing is downloaded.
"""

from __future__ import annotations

import types

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from att3d.priors.base import PriorCondition

TOKENS, TEXT_DIM = 6, 16

UNET_SIZES = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "attention_head_dim": 4,
}
"""Widths both tiny UNets share."""


def tiny_sd_unet(in_channels: int = 4) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        **UNET_SIZES,
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
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        cross_attention_dim=32,  # the group-normed cross-attention input uses 32 groups
        encoder_hid_dim=TEXT_DIM,
        addition_embed_type="text",
        addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        **UNET_SIZES,
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


def text_conditions(batch: int, seed: int) -> tuple[PriorCondition, PriorCondition]:
    """Random token embeddings: ``batch`` conditional rows and one unconditional row (broadcast)."""
    return PriorCondition(random_text(batch, seed)), PriorCondition(random_text(1, seed + 1))


def raw_unet(unet: UNet2DConditionModel, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=text).sample
