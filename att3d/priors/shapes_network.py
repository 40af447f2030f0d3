"""The ShapesWorld prior's network: its settings, conditioning vector, UNet and noise schedule.

What :mod:`att3d.priors.shapes` (the prior) and ``scripts/train_shapes_prior.py`` (its training) share.
diffusers is imported inside functions: it takes seconds to import, and :func:`camera_features` must stay
importable without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from att3d.cameras import Cameras

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DConditionModel


@dataclass
class ShapesPriorConfig:
    """Architecture and conditioning of the ShapesWorld prior (stored in ``shapes_prior.json``)."""

    image_size: int = 32
    """Native resolution in pixels (square)."""
    text_encoder: str = "all-MiniLM-L6-v2"
    """Id of the text encoder whose embeddings condition the prior (``att3d.text`` encoder ``id``)."""
    text_dim: int = 384
    """Size of a text embedding."""
    azimuth_harmonics: int = 4
    """K: azimuth enters as sin/cos(k·azimuth) for k = 1..K."""
    distance_center: float = 2.8
    """Camera distance that maps to feature 0 (centre of the training range)."""
    distance_scale: float = 0.2
    """Camera distance offset that maps to feature ±1 (half the training range)."""
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    """UNet channels per resolution level (each level after the first halves the resolution)."""
    layers_per_block: int = 1
    """ResNet blocks per UNet level."""
    norm_num_groups: int = 8
    """GroupNorm groups in the UNet."""
    token_dim: int = 8
    """Width of the constant zero token passed as ``encoder_hidden_states`` (unused without attention)."""
    num_train_timesteps: int = 1000
    """Length of the DDPM noise schedule."""
    beta_schedule: str = "linear"
    """diffusers beta schedule (``linear``: β from 1e-4 to 0.02, as DDPM)."""

    @property
    def camera_dim(self) -> int:
        """Size of :func:`camera_features`' output."""
        return 2 * self.azimuth_harmonics + 3

    @property
    def condition_dim(self) -> int:
        """Size of the vector fed to the UNet's class-embedding projection."""
        return self.text_dim + self.camera_dim


# --------------------------------------------------------------------------------------------------
# Conditioning (no diffusers needed)
# --------------------------------------------------------------------------------------------------


def camera_features(
    cameras: Cameras, harmonics: int = 4, distance_center: float = 2.8, distance_scale: float = 0.2
) -> Tensor:
    """View features ``[B, 2·harmonics + 3]`` for a batch of cameras.

    Columns: sin(k·az), cos(k·az) for k = 1..harmonics (interleaved), sin(el), cos(el), and
    ``(distance - distance_center) / distance_scale``. Higher harmonics separate views that differ by
    360°/k, which is what a cube's (90°-periodic) appearance needs.
    """
    if harmonics < 1:
        raise ValueError(f"harmonics must be >= 1, got {harmonics}")
    if distance_scale <= 0:
        raise ValueError(f"distance_scale must be > 0, got {distance_scale}")
    azimuth = torch.deg2rad(cameras.azimuth.float())
    elevation = torch.deg2rad(cameras.elevation.float())
    k = torch.arange(1, harmonics + 1, dtype=torch.float32, device=azimuth.device)
    angles = azimuth[:, None] * k  # [B, K]
    columns = [
        torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1),
        elevation.sin()[:, None],
        elevation.cos()[:, None],
        ((cameras.distance.float() - distance_center) / distance_scale)[:, None],
    ]
    return torch.cat(columns, dim=1)


def condition_vector(text: Tensor, cameras: Cameras, config: ShapesPriorConfig) -> Tensor:
    """The UNet's class-embedding input ``[B, condition_dim]``: text embedding then camera features."""
    if text.dim() != 2 or text.shape[1] != config.text_dim:
        raise ValueError(f"text must be [B, {config.text_dim}] embeddings, got shape {tuple(text.shape)}")
    if text.shape[0] != len(cameras):
        raise ValueError(f"got {text.shape[0]} text embeddings for {len(cameras)} cameras")
    views = camera_features(cameras, config.azimuth_harmonics, config.distance_center, config.distance_scale)
    return torch.cat([text.float(), views.to(text.device)], dim=1)


def denoise(unet: UNet2DConditionModel, x_t: Tensor, t: Tensor, condition: Tensor) -> Tensor:
    """Raw UNet output (the predicted clean image) for noisy images, timesteps and condition vectors.

    Training and inference both call this, so the zero token and dtype handling cannot drift apart.
    """
    dtype = unet.dtype
    token = torch.zeros(x_t.shape[0], 1, unet.config.cross_attention_dim, device=x_t.device, dtype=dtype)
    return unet(
        x_t.to(dtype), t, encoder_hidden_states=token, class_labels=condition.to(dtype), return_dict=False
    )[0]


# --------------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------------


def build_unet(config: ShapesPriorConfig) -> UNet2DConditionModel:
    """A randomly initialized UNet for ``config`` (training from scratch, tests)."""
    from diffusers import UNet2DConditionModel

    levels = len(config.block_out_channels)
    return UNet2DConditionModel(
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownBlock2D",) * levels,
        up_block_types=("UpBlock2D",) * levels,
        mid_block_type=None,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.token_dim,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=config.condition_dim,
        # FiLM (scale and shift from the embedding) lets the condition act multiplicatively on features.
        resnet_time_scale_shift="scale_shift",
    )


def build_scheduler(config: ShapesPriorConfig) -> DDPMScheduler:
    """The DDPM schedule the prior is trained with; the UNet predicts the clean sample."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        prediction_type="sample",
        clip_sample=True,
        clip_sample_range=1.0,
    )


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (for logs and docs)."""
    return sum(p.numel() for p in module.parameters())
