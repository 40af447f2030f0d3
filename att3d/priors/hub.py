"""What the hub priors (Stable Diffusion, DeepFloyd IF) share: loading, freezing, text encoding, guidance.

Both are a diffusers ``UNet2DConditionModel`` conditioned on a transformers text encoder's token
embeddings, with a scheduler that fixes the noise schedule and the prediction type. :class:`HubPrior` holds
all of that; a concrete prior only says how it tokenizes, which extra components it loads (SD's VAE) and
how renders enter its diffusion space. diffusers and transformers are imported inside functions: importing
diffusers alone costs seconds.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import Tensor

from att3d.priors.base import DiffusionPrior, PriorCondition, eps_from_sample, eps_from_v, freeze, guided
from att3d.priors.view_prompts import PromptEmbeddingCache

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, UNet2DConditionModel

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


class HubPrior(DiffusionPrior):
    """A frozen text-conditioned diffusers UNet plus its tokenizer and text encoder (see module docstring).

    Subclasses set :attr:`default_model_id` and implement :meth:`_tokenize`, :meth:`_text_model_classes`
    and :meth:`encode_images`; a prior with more components (SD's VAE) extends :meth:`_load_components`.
    ``PriorCondition.text`` holds token embeddings ``[B, L, D]`` from :meth:`encode_text` (use
    ``att3d.priors.view_prompts`` for view-dependent suffixes).
    """

    default_model_id: str
    """Hub id :meth:`from_pretrained` loads when no path is given."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        tokenizer: Any | None,
        text_encoder: torch.nn.Module | None,
        negative_prompt: str,
        frozen: tuple[torch.nn.Module | None, ...] = (),
    ) -> None:
        """Check and freeze the shared components; ``frozen`` are the subclass's other modules."""
        if (tokenizer is None) != (text_encoder is None):
            raise ValueError("pass both tokenizer and text_encoder, or neither")
        prediction_type = scheduler.config.prediction_type
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"scheduler prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}"
            )
        freeze(unet, *frozen, text_encoder)
        self.unet = unet
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.prediction_type: str = prediction_type
        """How the UNet's (mean) output is parameterized (``epsilon``, ``v_prediction`` or ``sample``)."""
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=unet.device, dtype=torch.float32)
        encode = self._encode_uncached if text_encoder is not None else None
        self.prompts = PromptEmbeddingCache(encode, negative_prompt)
        """Per-string cache of token embeddings; ``prompts.insert`` adds precomputed ones."""

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str | Path | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
        load_text_encoder: bool = True,
        negative_prompt: str = "",
        local_files_only: bool = False,
    ) -> Self:
        """Load from a hub id (default :attr:`default_model_id`) or a local diffusers folder.

        ``variant="fp16"`` fetches the half-precision weight files where the repo has them.
        ``load_text_encoder=False`` skips the text encoder when all embeddings come from a cache
        (:meth:`prompts.insert`).
        """
        device, dtype = default_device_and_dtype(device, dtype)
        common = {"local_files_only": local_files_only}
        weights = {"torch_dtype": dtype, "variant": variant, **common}
        path = str(path_or_id if path_or_id is not None else cls.default_model_id)
        components = cls._load_components(path, device, common, weights)
        tokenizer = text_encoder = None
        if load_text_encoder:
            tokenizer_class, text_encoder_class = cls._text_model_classes()
            tokenizer = tokenizer_class.from_pretrained(path, subfolder="tokenizer", **common)
            text_encoder = text_encoder_class.from_pretrained(path, subfolder="text_encoder", **weights)
            text_encoder.to(device)
        return cls(
            tokenizer=tokenizer, text_encoder=text_encoder, negative_prompt=negative_prompt, **components
        )

    @classmethod
    def _load_components(
        cls, path: str, device: torch.device, common: dict[str, Any], weights: dict[str, Any]
    ) -> dict[str, Any]:
        """The constructor's model components other than the text encoder: scheduler and UNet."""
        from diffusers import DDPMScheduler, UNet2DConditionModel

        # Only the noise schedule matters for SDS; DDPM reads it from any scheduler config in the repo.
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **common)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", **weights).to(device)
        return {"scheduler": scheduler, "unet": unet}

    @classmethod
    @abstractmethod
    def _text_model_classes(cls) -> tuple[Any, Any]:
        """``(tokenizer class, text encoder class)`` from transformers (imported when called)."""

    # ---------------------------------------------------------------------------------- text

    @abstractmethod
    def _tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """``(input_ids [N, L], attention_mask [N, L] or None)`` as the model's own pipeline tokenizes."""

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> Tensor:
        """The text encoder's last hidden states ``[N, L, D]`` on the prior's device and UNet dtype."""
        input_ids, mask = self._tokenize(prompts)
        device = self.text_encoder.device
        mask = None if mask is None else mask.to(device)
        hidden = self.text_encoder(input_ids.to(device), attention_mask=mask)[0]
        return hidden.to(device=self.device, dtype=self.unet.dtype)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """Token embeddings ``[N, L, D]``, computed once per exact prompt string."""
        return self.prompts(prompts)

    def unconditional_text(self, batch: int) -> Tensor:
        """Embeddings of the negative prompt (empty by default) ``[batch, L, D]``."""
        return self.prompts.unconditional(batch)

    def release_text_encoder(self) -> None:
        """Free the text encoder; cached prompts (and the negative prompt) stay usable."""
        self.prompts.release_encoder()
        self.tokenizer = self.text_encoder = None

    # ---------------------------------------------------------------------------------- denoising

    def noise_pred(
        self, x_t: Tensor, t: Tensor, cond: PriorCondition, uncond: PriorCondition, guidance_scale: float
    ) -> Tensor:
        """Guided ``eps`` in ``x_t``'s shape; variance channels, if the UNet has them, are dropped."""
        return unet_eps(
            self.unet, x_t, t, cond, uncond, guidance_scale, self.prediction_type, self.alphas_cumprod
        )
