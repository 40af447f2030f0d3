"""Stable Diffusion as a score-distillation prior: denoises VAE latents, conditioned on CLIP token embeddings.

Also home of :func:`unet_eps`, the one guided UNet call shared by the hub priors (SD and DeepFloyd IF).
diffusers and transformers are imported inside functions: importing diffusers alone costs seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from att3d.priors.base import DiffusionPrior, PriorCondition, eps_from_sample, eps_from_v, guided
from att3d.priors.view_prompts import PromptEmbeddingCache

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel

DEFAULT_MODEL_ID = "stabilityai/stable-diffusion-2-1-base"
"""Hub id used when no path is given (512 px, epsilon prediction)."""

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""Scheduler ``prediction_type`` values the hub priors convert to a noise prediction."""


def default_device_and_dtype(
    device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """CUDA when available; fp16 on CUDA, fp32 on the CPU (fp16 convolutions are slow there)."""
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    return device, dtype


def freeze(*modules: torch.nn.Module | None) -> None:
    """Priors are never trained: no parameter gradients, eval mode (no dropout)."""
    for module in modules:
        if module is not None:
            module.requires_grad_(False).eval()


def check_images(images: Tensor) -> None:
    """Renders must be ``[B, 3, H, W]``."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")


def resize_images(images: Tensor, size: int) -> Tensor:
    """Differentiable bilinear resize to ``size × size`` (antialiased when shrinking)."""
    if images.shape[-2:] == (size, size):
        return images
    shrinking = images.shape[-1] > size or images.shape[-2] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def _batch_text(text: Tensor, batch: int, name: str) -> Tensor:
    """Token embeddings ``[batch, L, D]``; a single ``[1, L, D]`` row is broadcast."""
    if text.dim() != 3 or text.shape[0] not in (1, batch):
        raise ValueError(f"{name}.text must be [{batch}, L, D] or [1, L, D], got {tuple(text.shape)}")
    return text.expand(batch, -1, -1)


def unet_eps(
    unet: UNet2DConditionModel,
    x_t: Tensor,
    t: Tensor,
    cond: PriorCondition,
    uncond: PriorCondition,
    guidance_scale: float,
    prediction_type: str,
    alphas_cumprod: Tensor,
) -> Tensor:
    """Guided noise prediction from a text-conditioned UNet, in ``x_t``'s dtype.

    The conditional and unconditional branches run as ONE batch ``[uncond; cond]`` through the UNet.
    UNets that also predict a variance (DeepFloyd IF: 6 output channels for 3 input channels) are cut to
    their first ``C`` channels, the mean prediction. Guidance is applied to the raw output and then
    converted to ``eps``; the conversions are affine in the output, so the order does not matter.
    """
    if x_t.dim() != 4 or t.shape != (x_t.shape[0],):
        raise ValueError(f"need x_t [B, C, H, W] and t [B], got {tuple(x_t.shape)} and {tuple(t.shape)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
    batch, channels = x_t.shape[:2]
    text_cond = _batch_text(cond.text, batch, "cond")
    text_uncond = _batch_text(uncond.text, batch, "uncond")
    if text_cond.shape[1:] != text_uncond.shape[1:]:
        raise ValueError(
            f"cond and uncond token embeddings differ in shape: {tuple(text_cond.shape[1:])} vs "
            f"{tuple(text_uncond.shape[1:])} (pad both prompts to the same length)"
        )
    dtype = unet.dtype
    out = unet(
        torch.cat([x_t, x_t]).to(dtype),
        torch.cat([t, t]),
        encoder_hidden_states=torch.cat([text_uncond, text_cond]).to(device=x_t.device, dtype=dtype),
        return_dict=False,
    )[0]
    out = out[:, :channels].to(x_t.dtype)
    out_uncond, out_cond = out.chunk(2)
    pred = guided(out_uncond, out_cond, guidance_scale)
    if prediction_type == "epsilon":
        return pred
    alpha_bar = alphas_cumprod.to(x_t.device)[t].to(x_t.dtype)
    if prediction_type == "v_prediction":
        return eps_from_v(x_t, pred, alpha_bar)
    return eps_from_sample(x_t, pred, alpha_bar)


class StableDiffusionPrior(DiffusionPrior):
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
        """Wrap already-built components (moved to their device and dtype by the caller).

        ``image_size`` defaults to the UNet's latent ``sample_size`` times the VAE's downsampling factor
        (512 for SD 2.1 base), the resolution the model was trained at.
        """
        if (tokenizer is None) != (text_encoder is None):
            raise ValueError("pass both tokenizer and text_encoder, or neither")
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        if vae.config.latent_channels != unet.config.in_channels:
            raise ValueError(
                f"VAE latent_channels ({vae.config.latent_channels}) != UNet in_channels "
                f"({unet.config.in_channels})"
            )
        freeze(unet, vae, text_encoder)
        self.unet = unet
        self.vae = vae
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.prediction_type: str = prediction_type
        """How the UNet's output is parameterized (``epsilon``, ``v_prediction`` or ``sample``)."""
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        """Pixels per latent cell along each side."""
        self.image_size = image_size or unet.config.sample_size * self.vae_scale_factor
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
    ) -> StableDiffusionPrior:
        """Load from a hub id or a local diffusers folder.

        ``variant="fp16"`` fetches the half-precision weight files where the repo has them.
        ``load_text_encoder=False`` skips CLIP when all embeddings come from a cache (:meth:`prompts.insert`).
        """
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        device, dtype = default_device_and_dtype(device, dtype)
        common = {"local_files_only": local_files_only}
        weights = {"torch_dtype": dtype, "variant": variant, **common}
        path = str(path_or_id)
        # Only the noise schedule matters for SDS; DDPM reads it from any scheduler config in the repo.
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **weights).to(device)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", **weights).to(device)
        tokenizer = text_encoder = None
        if load_text_encoder:
            tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer", **common)
            text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", **weights)
            text_encoder.to(device)
        return cls(unet, vae, scheduler, tokenizer, text_encoder, negative_prompt=negative_prompt)

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Tensor:
        """CLIP last hidden states ``[N, 77, D]`` (as the diffusers pipeline does, no attention mask)."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(device)
        hidden = self.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]
        return hidden.to(device=self.device, dtype=self.unet.dtype)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """CLIP token embeddings ``[N, 77, D]``, computed once per exact prompt string."""
        return self.prompts(prompts)

    def unconditional_text(self, batch: int) -> Tensor:
        """Embeddings of the negative prompt (empty by default) ``[batch, 77, D]``."""
        return self.prompts.unconditional(batch)

    def release_text_encoder(self) -> None:
        """Free the text encoder; cached prompts (and the negative prompt) stay usable."""
        self.prompts.release_encoder()
        self.tokenizer = self.text_encoder = None

    def encode_images(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] -> scaled VAE latents ``[B, 4, S/8, S/8]`` (float32).

        Differentiable: the VAE encoder's weights are frozen but the gradient flows through it to
        ``images``. The latent is a sample of the encoder's distribution, as in training.
        """
        check_images(images)
        x = resize_images(images, self.image_size) * 2.0 - 1.0
        posterior = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        latents = posterior.sample(generator=generator) * self.vae.config.scaling_factor
        return latents.float()

    def noise_pred(
        self, x_t: Tensor, t: Tensor, cond: PriorCondition, uncond: PriorCondition, guidance_scale: float
    ) -> Tensor:
        return unet_eps(
            self.unet, x_t, t, cond, uncond, guidance_scale, self.prediction_type, self.alphas_cumprod
        )
