"""DeepFloyd IF stage I as a score-distillation prior: denoises 64×64 pixels, conditioned on T5 embeddings.

diffusers and transformers are imported inside functions: importing diffusers alone costs seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from att3d.priors.base import DiffusionPrior, PriorCondition
from att3d.priors.stable_diffusion import (
    PREDICTION_TYPES,
    check_images,
    default_device_and_dtype,
    freeze,
    resize_images,
    unet_eps,
)
from att3d.priors.view_prompts import PromptEmbeddingCache

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, UNet2DConditionModel

DEFAULT_MODEL_ID = "DeepFloyd/IF-I-XL-v1.0"
"""Hub id used when no path is given (gated: accept the licence on the hub first)."""

MAX_TOKENS = 77
"""IF's T5 was trained on prompts padded/truncated to 77 tokens (as in the diffusers IF pipeline)."""


class DeepFloydPrior(DiffusionPrior):
    """DeepFloyd IF stage I (pixel-space cascade base model, T5-XXL text encoder) as a frozen SDS prior.

    Real models: ``DeepFloyd/IF-I-XL-v1.0`` (default, 4.3 B parameters), ``DeepFloyd/IF-I-L-v1.0`` and
    ``DeepFloyd/IF-I-M-v1.0``, or a local folder in the diffusers layout (``unet/``, ``scheduler/``,
    ``tokenizer/``, ``text_encoder/``). Memory in fp16, approximately: IF-I-XL UNet ≈ 8.6 GB and T5-XXL
    encoder ≈ 9.5 GB; encode the prompts, then :meth:`release_text_encoder` to give the T5 memory back.
    Runs on CUDA only in practice; the CPU path exists for the tiny random components of the tests.
    The T5 tokenizer needs the ``sentencepiece`` package.

    The UNet predicts noise and a variance (6 output channels); only the first 3 (``eps``) are used.
    ``PriorCondition.text`` holds T5 token embeddings ``[B, 77, 4096]`` from :meth:`encode_text`.
    """

    space = "pixel"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        tokenizer: Any | None = None,
        text_encoder: torch.nn.Module | None = None,
        negative_prompt: str = "",
        image_size: int | None = None,
    ) -> None:
        """Wrap already-built components (moved to their device and dtype by the caller).

        ``image_size`` defaults to the UNet's ``sample_size`` (64 for IF stage I).
        """
        if (tokenizer is None) != (text_encoder is None):
            raise ValueError("pass both tokenizer and text_encoder, or neither")
        if unet.config.in_channels != 3 or unet.config.out_channels not in (3, 6):
            raise ValueError(
                "an IF stage I UNet maps 3 channels to 3 (eps) or 6 (eps and variance), got "
                f"in_channels={unet.config.in_channels}, out_channels={unet.config.out_channels}"
            )
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        freeze(unet, text_encoder)
        self.unet = unet
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.prediction_type: str = prediction_type
        """How the UNet's mean output is parameterized (``epsilon`` for the released IF models)."""
        self.image_size = image_size or unet.config.sample_size
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=unet.device, dtype=torch.float32)
        encode = self._encode_uncached if text_encoder is not None else None
        self.prompts = PromptEmbeddingCache(encode, negative_prompt)
        """Per-string cache of token embeddings; ``prompts.insert`` adds precomputed ones."""

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path = DEFAULT_MODEL_ID,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
        load_text_encoder: bool = True,
        negative_prompt: str = "",
        local_files_only: bool = False,
    ) -> DeepFloydPrior:
        """Load from a hub id or a local diffusers folder.

        ``variant="fp16"`` fetches the half-precision weight files (halves a ~40 GB fp32 download).
        ``load_text_encoder=False`` skips T5 when all embeddings come from a cache (:meth:`prompts.insert`).
        """
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import T5EncoderModel, T5Tokenizer

        device, dtype = default_device_and_dtype(device, dtype)
        common = {"local_files_only": local_files_only}
        weights = {"torch_dtype": dtype, "variant": variant, **common}
        path = str(path_or_id)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **weights).to(device)
        tokenizer = text_encoder = None
        if load_text_encoder:
            tokenizer = T5Tokenizer.from_pretrained(path, subfolder="tokenizer", **common)
            text_encoder = T5EncoderModel.from_pretrained(path, subfolder="text_encoder", **weights)
            text_encoder.to(device)
        return cls(unet, scheduler, tokenizer, text_encoder, negative_prompt=negative_prompt)

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Tensor:
        """T5 last hidden states ``[N, 77, D]``; prompts lower-cased and stripped as IF's pipeline does."""
        tokens = self.tokenizer(
            [p.lower().strip() for p in prompts],
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        hidden = self.text_encoder(
            tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
        )[0]
        return hidden.to(device=self.device, dtype=self.unet.dtype)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """T5 token embeddings ``[N, 77, D]``, computed once per exact prompt string."""
        return self.prompts(prompts)

    def unconditional_text(self, batch: int) -> Tensor:
        """Embeddings of the negative prompt (empty by default) ``[batch, 77, D]``."""
        return self.prompts.unconditional(batch)

    def release_text_encoder(self) -> None:
        """Free T5; cached prompts (and the negative prompt) stay usable."""
        self.prompts.release_encoder()
        self.tokenizer = self.text_encoder = None

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` in [-1, 1] (differentiable resize)."""
        check_images(images)
        return resize_images(images, self.image_size) * 2.0 - 1.0

    def noise_pred(
        self, x_t: Tensor, t: Tensor, cond: PriorCondition, uncond: PriorCondition, guidance_scale: float
    ) -> Tensor:
        """Guided ``eps`` ``[B, 3, S, S]``; the UNet's variance channels are dropped in :func:`unet_eps`."""
        return unet_eps(
            self.unet, x_t, t, cond, uncond, guidance_scale, self.prediction_type, self.alphas_cumprod
        )
