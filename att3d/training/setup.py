"""Setting up a run: the prompt set, text encoder, prior, prompt bank, field, optimizer and generators.

Runs are resumable bit for bit on the CPU because every random draw comes from two per-process
generators (:func:`make_generators`: a ``torch.Generator`` for tensors, a numpy ``Generator`` for
host-side choices), seeded from (seed, rank, step) and saved with each checkpoint (``state``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from att3d.config import ConfigError, FieldConfig, OptimConfig, TrainConfig
from att3d.field import AmortizedField
from att3d.priors.base import DiffusionPrior
from att3d.prompts import PromptSet, load_prompt_set
from att3d.text import TextEncoder, get_text_encoder
from att3d.training.conditioning import LevelMask, PromptBank, build_prompt_bank
from att3d.training.distributed import DistInfo, shard_indices
from att3d.training.occupancy import OccupancyGrid


@dataclass
class TrainRun:
    """The state of a run. Plain data: the functions of ``att3d.training`` do the work."""

    config: TrainConfig
    out_dir: Path
    dist: DistInfo
    field: AmortizedField
    model: nn.Module
    """The field, or its DistributedDataParallel wrapper."""
    optimizer: torch.optim.Adam
    prior: DiffusionPrior
    prompt_set: PromptSet
    bank: PromptBank
    shard: list[int]
    encoder_id: str
    host_rng: np.random.Generator
    """Host-side draws: prompts, interpolation weights, shading."""
    torch_gen: torch.Generator
    """Tensor draws (on the CPU): cameras, ray jitter, timesteps and noise."""
    level_mask: LevelMask | None
    occupancy: OccupancyGrid | None = None
    """Empty-space skipping (``config.occupancy.enabled``)."""
    step: int = 0


def build_field(config: FieldConfig, seed: int, device: torch.device) -> AmortizedField:
    """A freshly initialized field; the same ``seed`` gives the same weights in every process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        field = AmortizedField(config)
    return field.to(device).train()


def build_optimizer(field: AmortizedField, config: OptimConfig) -> torch.optim.Adam:
    """Adam with the hash grids and the networks (mapping + head) as two parameter groups."""
    grid = list(field.bases.parameters())
    grid_ids = {id(p) for p in grid}
    network = [p for p in field.parameters() if id(p) not in grid_ids]
    return torch.optim.Adam(
        [
            {"params": grid, "lr": config.grid_lr, "weight_decay": 0.0, "name": "grid"},
            {
                "params": network,
                "lr": config.network_lr,
                "weight_decay": config.weight_decay,
                "name": "network",
            },
        ],
        betas=config.betas,
        eps=config.eps,
    )


def build_prior(name: str, device: torch.device) -> DiffusionPrior:
    """The frozen prior named in the config (``att3d.priors.registry``)."""
    from att3d.priors.registry import load_prior

    try:
        return load_prior(name, device=device)
    except ValueError as err:
        raise ConfigError(f"prior: {err}") from None


def build_text_encoder(config: TrainConfig) -> TextEncoder:
    """The field's text encoder named in the config (an unknown name is a config error)."""
    try:
        return get_text_encoder(config.model.text.encoder, cache_dir=config.model.text.cache_dir or None)
    except ValueError as err:
        raise ConfigError(f"model.text.encoder: {err}") from None


def make_generators(seed: int, rank: int, step: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """Per-process generators from (seed, rank, step): distinct streams for distinct ranks."""
    host = np.random.Generator(np.random.PCG64([seed, rank, step]))
    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1)[0])
    )
    return host, gen


def setup_run(
    config: TrainConfig,
    out_dir: Path,
    info: DistInfo,
    prior: DiffusionPrior | None = None,
    text_encoder: TextEncoder | None = None,
) -> TrainRun:
    """Build everything a run needs (prompt set, field, optimizer, prior, embeddings, generators)."""
    prompt_set = load_prompt_set(config.prompts, max_chars=config.model.text.max_prompt_chars)
    if config.interp_prob > 0 and len(prompt_set) < config.interp_prompts:
        raise ConfigError(
            f"interp_prompts: interpolants mix {config.interp_prompts} prompts but the set has "
            f"{len(prompt_set)}; set interp_prob=0 or add prompts"
        )
    encoder = text_encoder if text_encoder is not None else build_text_encoder(config)
    if encoder.dim != config.model.field.text_dim:
        raise ConfigError(
            f"model.field.text_dim is {config.model.field.text_dim} but text encoder {encoder.id!r} gives "
            f"{encoder.dim}-d embeddings"
        )
    own_prior = prior is None
    if own_prior:
        prior = build_prior(config.prior, info.device)

    # Rank 0 fills the on-disk text caches first so other ranks read instead of recomputing.
    if info.distributed and not info.is_main:
        dist.barrier()
    bank = build_prompt_bank(prompt_set.train, encoder, prior, info.device, prompt_set.prior_text)
    if info.distributed and info.is_main:
        dist.barrier()
    # Every embedding the run needs is in the bank now: give the text encoders' memory back.
    release = getattr(encoder, "encoder", encoder)  # a CachedEncoder's wrapped model
    if hasattr(release, "release"):
        release.release()
    if own_prior and hasattr(prior, "release_text_encoder"):
        prior.release_text_encoder()

    field = build_field(config.model.field, config.seed, info.device)
    optimizer = build_optimizer(field, config.optim)
    level_mask = None
    if 0 < config.progressive_levels < config.model.field.encoding.levels:
        level_mask = LevelMask(field, config.progressive_levels, config.level_steps)
    host_rng, torch_gen = make_generators(config.seed, info.rank)
    occupancy = None
    if config.occupancy.enabled:
        occupancy = OccupancyGrid(config.occupancy, config.model.field.bound, info.device)
    return TrainRun(
        config=config,
        out_dir=out_dir,
        dist=info,
        field=field,
        model=field,
        optimizer=optimizer,
        prior=prior,
        prompt_set=prompt_set,
        bank=bank,
        shard=shard_indices(len(prompt_set), info.rank, info.world_size),
        encoder_id=encoder.id,
        host_rng=host_rng,
        torch_gen=torch_gen,
        level_mask=level_mask,
        occupancy=occupancy,
    )
