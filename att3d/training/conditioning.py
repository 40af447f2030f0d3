"""What a step is conditioned on: which prompts (and mixes of them), the prior's text input, the shading.

Each step draws ``P`` training "prompts" as weight vectors over the prompt bank: a one-hot row is a
plain prompt; with probability ``interp_prob`` a row is a Dirichlet mix of ``interp_prompts`` prompts (an
*interpolant*, ATT3D §3.3). The field's text embeddings and the prior's text conditioning are mixed with
the same weights, so the SDS target is the same blend the generator is asked for. :class:`LevelMask`
schedules the hash-grid levels (coarse to fine) without the field knowing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from att3d.cameras import Cameras
from att3d.config import TrainConfig
from att3d.field import AmortizedField
from att3d.priors.base import DiffusionPrior, PriorCondition
from att3d.render import SHADING_MODES
from att3d.text import TextEncoder


class LevelMask:
    """Coarse-to-fine training: zero the features of the finest hash-grid levels early on.

    Implemented as a forward pre-hook on the field's MLP head (the only consumer of grid features), so
    the field code stays unaware of the schedule. With every level active the hook is a no-op.
    """

    def __init__(self, field: AmortizedField, start_levels: int, level_steps: int) -> None:
        self.levels = field.config.encoding.levels
        self.features = field.config.encoding.features_per_level
        self.start_levels = start_levels
        self.level_steps = level_steps
        self.active = start_levels
        self._handle = field.head.register_forward_pre_hook(self._hook)

    def active_at(self, step: int) -> int:
        """Levels in use at ``step``."""
        return min(self.levels, self.start_levels + step // self.level_steps)

    def set_step(self, step: int) -> None:
        self.active = self.active_at(step)

    def remove(self) -> None:
        self._handle.remove()

    def _hook(self, module: nn.Module, args: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor] | None:
        if self.active >= self.levels:
            return None
        features, points = args
        keep = torch.arange(self.levels, device=features.device) < self.active
        mask = keep.repeat_interleave(self.features).to(features.dtype)
        return features * mask, points


@dataclass
class PromptBank:
    """Every training prompt's conditioning, computed once at start-up and kept on the device."""

    prompts: list[str]
    embeddings: Tensor
    """Field conditioning ``[N, D]`` (the model's text encoder)."""
    prior_text: Tensor
    """Prior conditioning ``[N, ...]``; ``[N, 4, L, D]`` with view suffixes for text-only priors."""
    uncond_text: Tensor
    """Unconditional branch of guidance ``[1, ...]``."""
    view_suffixes: bool
    """Whether ``prior_text`` holds one embedding per view suffix (``att3d.priors.view_prompts``)."""


def prior_is_view_conditioned(prior: DiffusionPrior) -> bool:
    """View-conditioned priors read ``PriorCondition.cameras``; text-only ones get view suffixes instead."""
    return bool(prior.view_conditioned)


def build_prompt_bank(
    prompts: Sequence[str],
    encoder: TextEncoder,
    prior: DiffusionPrior,
    device: torch.device,
    prior_prompts: Sequence[str] | None = None,
) -> PromptBank:
    """Encode ``prompts`` for the field and ``prior_prompts`` (default: the same prompts, row for row) for
    the prior; each encoder caches its own results, and a prior prompt shared by many rows is encoded once."""
    from att3d.priors.view_prompts import encode_view_prompts

    prompts = list(prompts)
    prior_prompts = prompts if prior_prompts is None else list(prior_prompts)
    if len(prior_prompts) != len(prompts):
        raise ValueError(f"{len(prior_prompts)} prior prompts for {len(prompts)} prompts")
    embeddings = encoder.encode(prompts).to(device=device, dtype=torch.float32)
    view_suffixes = not prior_is_view_conditioned(prior)
    distinct = list(dict.fromkeys(prior_prompts))
    row_of = {p: i for i, p in enumerate(distinct)}
    rows = torch.tensor([row_of[p] for p in prior_prompts])
    with torch.no_grad():
        if view_suffixes:
            prior_text = encode_view_prompts(prior.encode_text, distinct)
        else:
            prior_text = prior.encode_text(distinct)
        prior_text = prior_text[rows.to(prior_text.device)]
        uncond = prior.unconditional_text(1)
    return PromptBank(prompts, embeddings, prior_text.to(device), uncond.to(device), view_suffixes)


def sample_prompt_weights(
    count: int, shard: Sequence[int], bank_size: int, config: TrainConfig, rng: np.random.Generator
) -> np.ndarray:
    """``[count, bank_size]`` rows on the probability simplex: which prompts (and how much) each sample is.

    A plain sample is one-hot on a prompt from ``shard``. An interpolant (probability ``interp_prob``)
    mixes that prompt with ``interp_prompts - 1`` distinct others from the whole set, with
    Dirichlet(``interp_concentration``) weights (a Beta(a, a) for two prompts).
    """
    weights = np.zeros((count, bank_size), dtype=np.float32)
    for row in range(count):
        first = int(shard[rng.integers(len(shard))])
        if config.interp_prob > 0 and rng.random() < config.interp_prob:
            others = [i for i in range(bank_size) if i != first]
            chosen = [first, *rng.choice(others, size=config.interp_prompts - 1, replace=False).tolist()]
            mix = rng.dirichlet(np.full(len(chosen), config.interp_concentration))
            weights[row, chosen] = mix.astype(np.float32)
        else:
            weights[row, first] = 1.0
    return weights


def mix_rows(weights: Tensor, table: Tensor) -> Tensor:
    """``[P, N] × [N, ...] -> [P, ...]``: each output row is the weighted blend of the table's rows."""
    return torch.tensordot(weights.to(table.dtype), table, dims=1)


def prior_condition(
    bank: PromptBank, weights: Tensor, cameras: Cameras, views: int
) -> tuple[PriorCondition, PriorCondition]:
    """Conditional and unconditional prior inputs for ``P`` weighted prompts × ``views`` cameras each."""
    from att3d.priors.view_prompts import condition_for

    text = mix_rows(weights, bank.prior_text).repeat_interleave(views, dim=0)
    batch = len(cameras)
    cond = condition_for(text, cameras) if bank.view_suffixes else PriorCondition(text=text, cameras=cameras)
    uncond = PriorCondition(text=bank.uncond_text.expand(batch, *bank.uncond_text.shape[1:]), cameras=cameras)
    return cond, uncond


def choose_shading(step: int, config: TrainConfig, rng: np.random.Generator) -> str:
    """One shading mode for the whole step: albedo first, then drawn from ``shading_probs``."""
    if step < config.albedo_steps:
        return "albedo"
    return SHADING_MODES[int(rng.choice(len(SHADING_MODES), p=np.asarray(config.shading_probs)))]
