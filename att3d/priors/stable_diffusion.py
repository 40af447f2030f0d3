"""Stable Diffusion as a score-distillation prior: denoises VAE latents, conditioned on CLIP token embeddings.

What it shares with DeepFloyd IF lives in :mod:`att3d.priors.hub`; this module adds the VAE and CLIP.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from att3d.priors.hub import HubPrior
from att3d.priors.images import to_pixel_space

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel

DEFAULT_MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
"""Hub id used when no path is given (512 px, epsilon prediction)."""


class StableDiffusionPrior(HubPrior):
    """Stable Diffusion (latent diffusion with a CLIP text encoder) as a frozen SDS prior.

    Real models: ``stabilityai/stable-diffusion-2-1-base`` (default; 512 px, 64×64×4 latents,
    epsilon prediction) and ``stabilityai/stable-diffusion-2-1`` (768 px, v-prediction), or any local
    folder in the diffusers layout (``unet/``, ``vae/``, ``scheduler/``, ``tokenizer/``, ``text_encoder/``).
    Memory in fp16, approximately: UNet + VAE ≈ 2.6 GB, CLIP ViT-H text encoder ≈ 0.7 GB (freed by
    :meth:`release_text_encoder`), plus activations of the VAE encoder backward at 512 px. It runs on CUDA
    only in practice; the CPU path exists for the tiny random components of the tests.

    Conditioning: ``PriorCondition.text`` holds CLIP token embeddings ``[B, 77, D]`` from
    :meth:`encode_text` (use ``att3d.priors.view_prompts`` for view-dependent suffixes).
    """

    space = "latent"
    default_model_id = DEFAULT_MODEL_ID

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
        tokenizer: Any | None = None,
        text_encoder: torch.nn.Module | None = None,
        negative_prompt: str = "",
        image_size: int | None = None,
    ) -> None:
        """Wrap a built UNet, VAE and scheduler (and CLIP, optionally), each already on its device and dtype.

        ``image_size`` defaults to the UNet's latent ``sample_size`` times the VAE's downsampling factor
        (512 for SD 2.1 base), the resolution the model was trained at.
        """
        if vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(
                f"VAE latent_channels ({vae.config.latent_channels}) != UNet in_channels "
                f"({unet.config.in_channels})"
            )
        super().__init__(unet, scheduler, tokenizer, text_encoder, negative_prompt, frozen=(vae,))
        self.vae = vae
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        """Pixels per latent cell along each side."""
        self.image_size = image_size or unet.config.sample_size * self.vae_scale_factor

    @classmethod
    def _load_components(
        cls, path: str, device: torch.device, common: dict[str, Any], weights: dict[str, Any]
    ) -> dict[str, Any]:
        from diffusers import AutoencoderKL

        components = super()._load_components(path, device, common, weights)
        components["vae"] = AutoencoderKL.from_pretrained(path, subfolder="vae", **weights).to(device)
        return components

    @classmethod
    def _text_model_classes(cls) -> tuple[Any, Any]:
        from transformers import CLIPTextModel, CLIPTokenizer

        return CLIPTokenizer, CLIPTextModel

    def _tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """CLIP ids padded to 77; as the diffusers pipeline does, no attention mask unless the model asks."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        use_mask = getattr(self.text_encoder.config, "use_attention_mask", False)
        return tokens.input_ids, tokens.attention_mask if use_mask else None

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] -> scaled VAE latents ``[B, 4, S/8, S/8]`` (float32).

        Differentiable: the VAE encoder's weights are frozen but the gradient flows through it to
        ``images``. The latent is a sample of the encoder's distribution, as in training.
        """
        x = to_pixel_space(images, self.image_size)
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator) * self.vae.config.scaling_factor
        return latents.float()
