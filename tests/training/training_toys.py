"""Toy stand-ins for training tests: a hash-seeded text encoder, an analytic prior and a tiny config.

Runs use a tiny field at 16×16 px with 16 samples per ray, a hash-seeded toy text encoder and a toy
analytic prior (its clean-image prediction is a flat colour decoded from the text vector), so nothing is
downloaded and a step costs a fraction of a second.
"""

from __future__ import annotations

import hashlib

import torch

from att3d.checkpoint import load_checkpoint
from att3d.config import TrainConfig
from att3d.priors.base import DiffusionPrior, PriorCondition, eps_from_sample, guided
from att3d.training.loop import train

from conftest import tiny_train_config

TEXT_DIM = 8


class ToyEncoder:
    """Deterministic unit vectors seeded by the prompt's hash."""

    id = "toy-encoder"
    dim = TEXT_DIM

    def encode(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


class ToyPrior(DiffusionPrior):
    """Predicts a flat image of colour ``tanh(10 text[:3])`` (near-saturated); records its conditions."""

    space = "pixel"
    view_conditioned = True

    def __init__(self, size: int = 16) -> None:
        self.image_size = size
        self.num_train_timesteps = 1000
        self.alphas_cumprod = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000), dim=0)
        self.encoder = ToyEncoder()
        self.conditions: list[PriorCondition] = []

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.encoder.encode(prompts)

    def unconditional_text(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, TEXT_DIM)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    def noise_pred(self, x_t, t, cond, uncond, guidance_scale):
        self.conditions.append(cond)

        def flat(text: torch.Tensor) -> torch.Tensor:
            return torch.tanh(10 * text[:, :3])[:, :, None, None].expand_as(x_t)

        x0 = guided(flat(uncond.text), flat(cond.text), guidance_scale)
        return eps_from_sample(x_t, x0, self.alphas_cumprod[t])


TINY = [
    f"model.field.text_dim={TEXT_DIM}",
    "prompts.prompts=[a red cube, a blue cone, a green ball]",
    "prompts_per_step=2",
    "device=cpu",
    "log_every=0",
    "preview_every=0",
    "progress_bar=false",
    "sds.guidance_scale=1",
]


def tiny_config(*overrides: str) -> TrainConfig:
    return tiny_train_config(*TINY, *overrides)


def run_train(config: TrainConfig, out, **kwargs):
    return train(config, out, prior=kwargs.pop("prior", ToyPrior()), text_encoder=ToyEncoder(), **kwargs)


def weights_of(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).tensors
