"""DeepFloyd IF stage I as a score-distillation prior: denoises 64×64 pixels, conditioned on T5 embeddings.

What it shares with Stable Diffusion lives in :mod:`att3d.priors.hub`; this module adds T5 tokenization
and the pixel-space input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from att3d.priors.hub import HubPrior
from att3d.priors.images import to_pixel_space

if TYPE_CHECKING:
    from diffusers import SchedulerMixin, UNet2DConditionModel

DEFAULT_MODEL_ID = "DeepFloyd/IF-I-XL-v1.0"
"""Hub id used when no path is given (gated: accept the licence on the hub first)."""

MAX_TOKENS = 77
"""IF's T5 was trained on prompts padded/truncated to 77 tokens (as in the diffusers IF pipeline)."""


class DeepFloydPrior(HubPrior):
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
    default_model_id = DEFAULT_MODEL_ID

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        tokenizer: Any | None = None,
        text_encoder: torch.nn.Module | None = None,
        negative_prompt: str = "",
        image_size: int | None = None,
    ) -> None:
        """Wrap a built UNet and scheduler (and T5, optionally), each already on its device and dtype.

        ``image_size`` defaults to the UNet's ``sample_size`` (64 for IF stage I).
        """
        if unet.config.in_channels != 3 or unet.config.out_channels not in (3, 6):
            raise ValueError(
                "an IF stage I UNet maps 3 channels to 3 (eps) or 6 (eps and variance), got "
                f"in_channels={unet.config.in_channels}, out_channels={unet.config.out_channels}"
            )
        super().__init__(unet, scheduler, tokenizer, text_encoder, negative_prompt)
        self.image_size = image_size or unet.config.sample_size

    @classmethod
    def _text_model_classes(cls) -> tuple[Any, Any]:
        from transformers import T5EncoderModel, T5Tokenizer

        return T5Tokenizer, T5EncoderModel

    def _tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """T5 ids and mask, padded to 77; prompts lower-cased and stripped as IF's pipeline does."""
        tokens = self.tokenizer(
            [p.lower().strip() for p in prompts],
            padding="max_length",
            max_length=MAX_TOKENS,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return tokens.input_ids, tokens.attention_mask

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders ``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, S, S]`` in [-1, 1] (differentiable resize)."""
        return to_pixel_space(images, self.image_size)
