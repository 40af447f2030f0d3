"""Amortized score distillation: one generator trained on a whole prompt set (ATT3D).

One optimizer step, top to bottom (:func:`forward_backward`, then ``optimizer.step()``):

1. draw ``P`` training "prompts" as weight vectors over the prompt bank (:func:`sample_prompt_weights`): a
   one-hot row is a plain prompt; with probability ``interp_prob`` a row is a Dirichlet mix of
   ``interp_prompts`` prompts (an *interpolant*, ATT3D §3.3);
2. mix the field's text embeddings and the prior's text conditioning with the same weights, so the SDS
   target is the same blend the generator is asked for (:func:`prior_condition`);
3. draw ``V`` cameras per prompt, pick one shading mode for the step (:func:`choose_shading`) and render
   the ``P × V`` images;
4. SDS (``att3d.sds``) plus optional opacity regularizers; backward through the render into the field.

A one-prompt set is per-prompt DreamFusion through the same code path.

Runs are resumable bit for bit on the CPU: every random draw comes from two per-process generators (a
``torch.Generator`` for tensors, a numpy ``Generator`` for host-side choices) whose states are saved
with the Adam state next to each checkpoint (``train_state.safetensors``). On CUDA the hash-grid
backward accumulates with atomic adds, whose order varies, so a resumed run matches to about 1e-6.

Multi-process (``torchrun``): the process group comes from the environment (gloo on CPU, NCCL on CUDA),
only the field is wrapped in DistributedDataParallel (the frozen prior never is), each rank draws its
plain prompts from its own shard of the set, and rank 0 writes checkpoints, logs and previews.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import Tensor, nn

from att3d.atomic import atomic_write
from att3d.cameras import Cameras, orbit_cameras, sample_cameras
from att3d.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_tensors,
    read_manifest,
    save_checkpoint,
    save_tensors_atomic,
)
from att3d.config import ConfigError, FieldConfig, OptimConfig, TrainConfig, to_dict
from att3d.field import AmortizedField
from att3d.priors.base import DiffusionPrior, PriorCondition
from att3d.prompts import PromptSet, load_prompt_set
from att3d.render import SHADING_MODES, FieldFn, render
from att3d.sds import sds_loss, t_max_at
from att3d.text import TextEncoder, get_text_encoder

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""``progress_callback(step, total_steps, loss)``, called on rank 0 after every optimizer step."""
Evaluator = Callable[[AmortizedField, int], dict[str, float]]
"""``evaluator(field, step) -> {metric: value}``, called on rank 0 every ``eval_every`` steps."""

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run directory holding ``step_XXXXXXX`` checkpoints."""
TRAIN_STATE_FILE = "train_state.safetensors"
"""Optimizer and RNG state, written into a checkpoint directory after its weights and manifest."""
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why."""


class TrainingDiverged(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    status: str
    """``completed``, ``cancelled`` (cancel flag) or ``interrupted`` (SIGINT/SIGTERM)."""
    step: int
    """Optimizer steps done in total (including those before a resume)."""
    checkpoint: Path | None
    """The checkpoint written last (on rank 0; ``None`` elsewhere)."""
    loss: float
    """Loss of the last step (NaN when no step ran)."""
    signal: int | None = None
    """The signal that interrupted training, if any."""


# --------------------------------------------------------------------------------------------------
# Config checks
# --------------------------------------------------------------------------------------------------


def check_train_config(config: TrainConfig) -> None:
    """Reject settings that cannot work, naming the key (before any model is built)."""

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    need(config.steps >= 1, "steps", f"must be >= 1, got {config.steps}")
    need(config.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1, got {config.prompts_per_step}")
    need(config.views_per_prompt >= 1, "views_per_prompt", f"must be >= 1, got {config.views_per_prompt}")
    need(config.albedo_steps >= 0, "albedo_steps", f"must be >= 0, got {config.albedo_steps}")
    probs = config.shading_probs
    need(
        min(probs) >= 0 and abs(sum(probs) - 1.0) < 1e-6,
        "shading_probs",
        f"must be 3 probabilities >= 0 (albedo, diffuse, textureless) summing to 1, got {list(probs)}",
    )
    need(0.0 <= config.interp_prob <= 1.0, "interp_prob", f"must be in [0, 1], got {config.interp_prob}")
    need(config.interp_prompts >= 2, "interp_prompts", f"must be >= 2, got {config.interp_prompts}")
    need(
        config.interp_concentration > 0,
        "interp_concentration",
        f"must be > 0, got {config.interp_concentration}",
    )
    levels = config.model.field.encoding.levels
    need(
        0 <= config.progressive_levels <= levels,
        "progressive_levels",
        f"must be in [0, {levels}] (0: off), got {config.progressive_levels}",
    )
    if 0 < config.progressive_levels < levels:
        need(config.level_steps >= 1, "level_steps", f"must be >= 1, got {config.level_steps}")
        # Masked levels are not trained; a model saved before they are all active would meet untrained
        # features at inference, where nothing is masked.
        all_active = (levels - config.progressive_levels) * config.level_steps
        need(
            all_active < config.steps,
            "progressive_levels",
            f"all {levels} levels become active only at step {all_active}, not before steps={config.steps}",
        )
    for key in ("sparsity_weight", "opacity_entropy_weight"):
        need(getattr(config, key) >= 0, key, f"must be >= 0, got {getattr(config, key)}")
    for key in ("log_every", "preview_every", "eval_every", "checkpoint_every"):
        need(getattr(config, key) >= 0, key, f"must be >= 0, got {getattr(config, key)}")
    need(config.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {config.keep_checkpoints}")
    need(config.preview_prompts >= 1, "preview_prompts", f"must be >= 1, got {config.preview_prompts}")
    need(config.preview_views >= 1, "preview_views", f"must be >= 1, got {config.preview_views}")


# --------------------------------------------------------------------------------------------------
# Processes and devices
# --------------------------------------------------------------------------------------------------


@dataclass
class DistInfo:
    """Where this process sits in a (possibly single-process) run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool
    """Whether :func:`init_distributed` created the process group (and so destroys it)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available; a bare ``cuda`` becomes this process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device: {name!r} requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group described by torchrun's environment (``WORLD_SIZE``, ``RANK``, ...).

    Without those variables this is a single process. An already initialized group is reused.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, owns)
    return DistInfo(0, 1, 0, device, owns)


def shard_indices(count: int, rank: int, world_size: int) -> list[int]:
    """The prompt indices rank ``rank`` draws plain prompts from (every rank gets all if too few)."""
    if count < world_size:
        return list(range(count))
    return list(range(rank, count, world_size))


# --------------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------------


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
    try:
        return get_text_encoder(config.model.text.encoder, cache_dir=config.model.text.cache_dir or None)
    except ValueError as err:
        raise ConfigError(f"model.text.encoder: {err}") from None


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


# --------------------------------------------------------------------------------------------------
# Prompts and conditioning
# --------------------------------------------------------------------------------------------------


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
    prompts: Sequence[str], encoder: TextEncoder, prior: DiffusionPrior, device: torch.device
) -> PromptBank:
    """Encode ``prompts`` for the field and for the prior (each encoder caches its own results)."""
    from att3d.priors.view_prompts import encode_view_prompts

    prompts = list(prompts)
    embeddings = encoder.encode(prompts).to(device=device, dtype=torch.float32)
    view_suffixes = not prior_is_view_conditioned(prior)
    with torch.no_grad():
        if view_suffixes:
            prior_text = encode_view_prompts(prior.encode_text, prompts)
        else:
            prior_text = prior.encode_text(prompts)
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


def single_power_iteration(model: nn.Module, field: AmortizedField, embeddings: Tensor) -> FieldFn:
    """The field function for one step: only its first call updates the spectral-norm estimates.

    The renderer queries the field several times per step (samples, then normals). In training mode
    every call would update the power-iteration vectors in place while the first call's autograd graph
    still needs them; later calls therefore run in eval mode, which reuses the just-updated estimates
    and gives the same values. ``model`` is the field or its DDP wrapper.
    """
    calls = 0

    def field_fn(points: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal calls
        calls += 1
        if calls == 1:
            return model(points, embeddings)
        field.eval()
        try:
            return model(points, embeddings)
        finally:
            field.train()

    return field_fn


# --------------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainRun:
    """The state of a run. Plain data: the functions of this module do the work."""

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
    step: int = 0


@dataclass
class StepOutput:
    """Detached values of one step, for logging."""

    loss: Tensor
    sds: Tensor
    grad_norm: Tensor
    t_mean: Tensor
    opacity: Tensor
    interpolants: Tensor
    shading: str


def forward_backward(run: TrainRun, step: int) -> StepOutput:
    """Draw prompts and cameras, render, SDS, backward. The optimizer step is the caller's."""
    config, device = run.config, run.dist.device
    p, v = config.prompts_per_step, config.views_per_prompt
    weights = torch.from_numpy(
        sample_prompt_weights(p, run.shard, len(run.bank.prompts), config, run.host_rng)
    ).to(device)
    embeddings = mix_rows(weights, run.bank.embeddings)
    cameras = sample_cameras(p * v, config.cameras, generator=run.torch_gen).to(device)
    shading = choose_shading(step, config, run.host_rng)
    if run.level_mask is not None:
        run.level_mask.set_step(step)

    out = render(
        single_power_iteration(run.model, run.field, embeddings),
        cameras,
        config.model.render,
        num_prompts=p,
        shading=shading,
        generator=run.torch_gen,
        bound=config.model.field.bound,
    )
    cond, uncond = prior_condition(run.bank, weights, cameras, v)
    sds = sds_loss(run.prior, out.rgb, cond, uncond, config.sds, step, generator=run.torch_gen)
    loss = sds.loss
    if config.sparsity_weight > 0:
        loss = loss + config.sparsity_weight * out.opacity.mean()
    if config.opacity_entropy_weight > 0:
        o = out.opacity.clamp(1e-5, 1.0 - 1e-5)
        entropy = -(o * o.log() + (1.0 - o) * (1.0 - o).log()).mean()
        loss = loss + config.opacity_entropy_weight * entropy

    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    return StepOutput(
        loss=loss.detach(),
        sds=sds.loss.detach(),
        grad_norm=sds.grad_norm.detach(),
        t_mean=sds.timesteps.float().mean() / run.prior.num_train_timesteps,
        opacity=out.opacity.detach().mean(),
        interpolants=((weights > 0).sum(dim=1) > 1).float().mean(),
        shading=shading,
    )


def reduce_scalars(info: DistInfo, values: dict[str, Tensor]) -> dict[str, float]:
    """Mean of each scalar over all processes (one all-reduce)."""
    names = list(values)
    packed = torch.stack([values[n].detach().float().reshape(()) for n in names]).to(info.device)
    if info.distributed:
        dist.all_reduce(packed)
        packed /= info.world_size
    return dict(zip(names, packed.tolist(), strict=True))


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (keeps all ranks stopping at the same step)."""
    if not info.distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / CHECKPOINTS / f"step_{step:07d}"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints of a run (train state written last), oldest first."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_dir() and (path / TRAIN_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint that verifies (manifest and weights checksum); corrupt ones are skipped."""
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            read_manifest(path, check_weights=True)
            return path
        except CheckpointError as err:
            logger.warning("skipping unreadable checkpoint: %s", err)
    return None


def _param_names(run: TrainRun) -> dict[int, str]:
    return {id(p): name for name, p in run.field.named_parameters()}


def optimizer_tensors(run: TrainRun) -> dict[str, Tensor]:
    """Adam's per-parameter state as ``optim.<param name>.<key>`` tensors."""
    names = _param_names(run)
    tensors = {}
    for param, state in run.optimizer.state.items():
        for key, value in state.items():
            tensors[f"optim.{names[id(param)]}.{key}"] = torch.as_tensor(value)
    return tensors


def load_optimizer_tensors(run: TrainRun, tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`optimizer_tensors` (through ``load_state_dict``, which moves state to the params)."""
    names = _param_names(run)
    state_dict = run.optimizer.state_dict()
    params = [p for group in run.optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Tensor]] = {}
    for index, param in enumerate(params):
        prefix = f"optim.{names[id(param)]}."
        entry = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            state[index] = entry
    run.optimizer.load_state_dict({"state": state, "param_groups": state_dict["param_groups"]})


def _bytes_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def rng_state(run: TrainRun) -> dict[str, bytes]:
    """This process's generator states as raw bytes (uint8 tensors in the train-state file)."""
    state = {
        "torch": run.torch_gen.get_state().numpy().tobytes(),
        "numpy": json.dumps(run.host_rng.bit_generator.state).encode(),
        "torch_global": torch.get_rng_state().numpy().tobytes(),
    }
    if run.dist.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.dist.device).numpy().tobytes()
    return state


def restore_rng_state(run: TrainRun, state: dict[str, bytes]) -> None:
    run.torch_gen.set_state(_bytes_tensor(state["torch"]))
    run.host_rng.bit_generator.state = json.loads(state["numpy"].decode())
    torch.set_rng_state(_bytes_tensor(state["torch_global"]))
    if "cuda" in state and run.dist.device.type == "cuda":
        torch.cuda.set_rng_state(_bytes_tensor(state["cuda"]), run.dist.device)


def make_generators(seed: int, rank: int, step: int = 0) -> tuple[np.random.Generator, torch.Generator]:
    """Per-process generators from (seed, rank, step): distinct streams for distinct ranks."""
    host = np.random.Generator(np.random.PCG64([seed, rank, step]))
    gen = torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, rank, step, 1]).generate_state(1)[0])
    )
    return host, gen


def save_training_checkpoint(run: TrainRun) -> Path | None:
    """Checkpoint at ``run.step`` (a collective: every rank calls it; rank 0 writes). Returns the path."""
    states = [rng_state(run)]
    if run.dist.distributed:
        states = [None] * run.dist.world_size
        dist.all_gather_object(states, rng_state(run))
    path = None
    if run.dist.is_main:
        path = checkpoint_dir(run.out_dir, run.step)
        metadata = {
            "step": run.step,
            "name": run.out_dir.name,
            "heldout_prompts": list(run.prompt_set.heldout),
            "world_size": run.dist.world_size,
            "train_config": to_dict(run.config),
        }
        save_checkpoint(
            path,
            run.field.state_dict(),
            to_dict(run.config.model),
            run.encoder_id,
            list(run.prompt_set.train),
            metadata,
        )
        tensors = optimizer_tensors(run)
        for rank, state in enumerate(states):
            for key, data in state.items():
                tensors[f"rng.rank{rank}.{key}"] = _bytes_tensor(data)
        # Written last: a checkpoint without it is incomplete and ignored by resume.
        save_tensors_atomic(path / TRAIN_STATE_FILE, tensors, {"step": str(run.step)})
        prune_checkpoints(run.out_dir, run.config.keep_checkpoints)
    if run.dist.distributed:
        dist.barrier()
    return path


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (incomplete ones never count)."""
    for _, path in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            where = f"{path}.{key}" if path else key
            if key not in a or key not in b:
                return where
            found = _first_difference(a[key], b[key], where)
            if found:
                return found
        return None
    return None if a == b else path


def load_training_checkpoint(run: TrainRun, path: Path) -> None:
    """Restore weights, Adam state, RNG states and the step from a checkpoint of this run."""
    ckpt = load_checkpoint(path)
    diff = _first_difference(ckpt.config, to_dict(run.config.model))
    if diff is not None:
        raise TrainingError(f"cannot resume from {path}: model config differs at 'model.{diff}'")
    if ckpt.text_encoder != run.encoder_id:
        raise TrainingError(
            f"cannot resume from {path}: trained with text encoder {ckpt.text_encoder!r}, config gives "
            f"{run.encoder_id!r}"
        )
    if list(ckpt.prompts) != list(run.prompt_set.train):
        raise TrainingError(
            f"cannot resume from {path}: the training prompt set differs from the checkpoint's"
        )
    run.field.load_state_dict({k: v.to(run.dist.device) for k, v in ckpt.tensors.items()})
    tensors = load_tensors(path / TRAIN_STATE_FILE)
    load_optimizer_tensors(run, {k: v for k, v in tensors.items() if k.startswith("optim.")})
    run.step = int(ckpt.metadata["step"])
    prefix = f"rng.rank{run.dist.rank}."
    state = {k[len(prefix) :]: v.numpy().tobytes() for k, v in tensors.items() if k.startswith(prefix)}
    if state:
        restore_rng_state(run, state)
    else:
        logger.warning("%s has no RNG state for rank %d; reseeding from the step", path, run.dist.rank)
        run.host_rng, run.torch_gen = make_generators(run.config.seed, run.dist.rank, run.step)


# --------------------------------------------------------------------------------------------------
# Previews, logs, files
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def render_preview(run: TrainRun) -> np.ndarray:
    """A ``uint8 [rows*S, cols*S, 3]`` grid: the first prompts (rows) × an orbit of views (columns)."""
    config = run.config
    rows = min(config.preview_prompts, len(run.bank.prompts))
    cols = config.preview_views
    distance = sum(config.cameras.distance) / 2
    fovy = sum(config.cameras.fovy) / 2
    cameras = Cameras.cat([orbit_cameras(cols, elevation=20.0, distance=distance, fovy=fovy)] * rows)
    embeddings = run.bank.embeddings[:rows]
    # Eval mode: a preview must not advance the spectral-norm estimates (training would not be reproducible).
    run.field.eval()
    try:
        out = render(
            lambda points: run.field(points, embeddings),
            cameras.to(run.dist.device),
            config.model.render,
            num_prompts=rows,
            shading="diffuse",
            perturb=False,
            bound=config.model.field.bound,
        )
    finally:
        run.field.train()
    size = out.rgb.shape[-1]
    grid = out.rgb.clamp(0, 1).reshape(rows, cols, 3, size, size).permute(0, 3, 1, 4, 2)
    return (grid.reshape(rows * size, cols * size, 3) * 255).round().byte().cpu().numpy()


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


class Reporter:
    """Rank-0 outputs: progress bar, TensorBoard scalars, eval log (all optional)."""

    def __init__(self, run: TrainRun) -> None:
        config = run.config
        self.enabled = run.dist.is_main
        self.writer = None
        self.bar = None
        if not self.enabled:
            return
        if config.log_every > 0:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when logging

            self.writer = SummaryWriter(str(run.out_dir / "tb"))
        if config.progress_bar:
            from tqdm.auto import tqdm

            # disable=None: tqdm hides the bar when stderr is not a terminal (logs, services).
            self.bar = tqdm(
                total=config.steps, initial=run.step, unit="step", dynamic_ncols=True, disable=None
            )

    def step(self, step: int, scalars: dict[str, float], every: int) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{scalars['loss/total']:.4g}", refresh=False)
        if self.writer is not None and every > 0 and step % every == 0:
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)

    def scalars(self, step: int, values: dict[str, float], prefix: str) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def default_evaluator(run: TrainRun) -> Evaluator | None:
    """``att3d.shapes.metrics.evaluate`` on the held-out prompts, when that module and prompts exist."""
    import importlib.util

    if not run.prompt_set.heldout or importlib.util.find_spec("att3d.shapes.metrics") is None:
        return None
    from att3d.shapes import metrics

    evaluate = getattr(metrics, "evaluate", None)
    if evaluate is None:
        return None
    prompts = list(run.prompt_set.heldout)
    encoder = build_text_encoder(run.config)

    def evaluator(field: AmortizedField, step: int) -> dict[str, float]:
        embeddings = encoder.encode(prompts).to(run.dist.device)
        return evaluate(field, prompts=prompts, embeddings=embeddings, config=run.config.model)

    return evaluator


@contextlib.contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM set ``event`` (training then saves and exits) instead of killing.

    A second signal raises ``KeyboardInterrupt`` at once (an impatient Ctrl-C; saves are atomic, so the
    newest complete checkpoint survives). Yields the list of received signal numbers. Only the main
    thread can install handlers; elsewhere (e.g. a service's worker thread) this does nothing and the
    cancel flag is the way to stop.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if event.is_set():
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopping without saving")
        logger.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


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
    bank = build_prompt_bank(prompt_set.train, encoder, prior, info.device)
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
    )


def wrap_ddp(run: TrainRun) -> None:
    """Wrap the field (and only the field) for gradient averaging across processes."""
    if not run.dist.distributed:
        return
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [run.dist.device.index] if run.dist.device.type == "cuda" else None
    # No buffer broadcast in forward: the only buffers are the spectral-norm power-iteration vectors,
    # which every rank computes identically from identical weights, and the renderer calls the field
    # several times per step. Newer torch names the switch forward_sync_buffers.
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        no_sync = {"forward_sync_buffers": False}
    else:
        no_sync = {"broadcast_buffers": False}
    run.model = DistributedDataParallel(run.field, device_ids=device_ids, **no_sync)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    prior: DiffusionPrior | None = None,
    text_encoder: TextEncoder | None = None,
    evaluator: Evaluator | None = None,
    progress_callback: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``out_dir`` until ``config.steps``.

    ``prior``/``text_encoder`` replace the ones named in the config (tests, services that keep a prior
    loaded). Setting ``cancel`` stops at the next step boundary after saving a checkpoint; so do SIGINT and
    SIGTERM when called from the main thread. A NaN/Inf loss raises :class:`TrainingDiverged` without
    saving, so the newest checkpoint stays the last good one.
    """
    check_train_config(config)
    out_dir = Path(out_dir)
    info = init_distributed(config.device)
    try:
        return _train(
            config, out_dir, info, resume, prior, text_encoder, evaluator, progress_callback, cancel
        )
    finally:
        if info.owns_group:
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    out_dir: Path,
    info: DistInfo,
    resume: bool,
    prior: DiffusionPrior | None,
    text_encoder: TextEncoder | None,
    evaluator: Evaluator | None,
    progress_callback: ProgressCallback | None,
    cancel: threading.Event | None,
) -> TrainResult:
    existing = latest_checkpoint(out_dir)
    if existing is not None and not resume:
        raise TrainingError(
            f"{out_dir} already holds checkpoints ({existing.name}); pass --resume or a new --out"
        )
    run = setup_run(config, out_dir, info, prior, text_encoder)
    if resume and existing is not None:
        load_training_checkpoint(run, existing)
        logger.info("resumed from %s at step %d", existing, run.step)
    elif resume:
        logger.info("no checkpoint in %s; starting from scratch", out_dir)
    wrap_ddp(run)
    if info.is_main:
        atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(to_dict(config))))
    if evaluator is None and config.eval_every > 0 and info.is_main:
        evaluator = default_evaluator(run)

    cancel = cancel if cancel is not None else threading.Event()
    signalled = threading.Event()
    reporter = Reporter(run)
    last_saved: Path | None = existing
    saved_step = run.step if existing is not None else -1
    loss = math.nan
    status = "completed"
    try:
        with stop_on_signals(signalled) as received:
            while run.step < config.steps:
                if any_rank(info, cancel.is_set() or signalled.is_set()):
                    status = "interrupted" if signalled.is_set() or received else "cancelled"
                    break
                started = time.perf_counter()
                out = forward_backward(run, run.step)
                scalars = reduce_scalars(
                    info,
                    {
                        "loss/total": out.loss,
                        "loss/sds": out.sds,
                        "sds/grad_norm": out.grad_norm,
                        "sds/t_mean": out.t_mean,
                        "render/opacity": out.opacity,
                        "train/interpolant_fraction": out.interpolants,
                    },
                )
                loss = scalars["loss/total"]
                if not math.isfinite(loss):
                    where = (
                        f"; last good checkpoint: {last_saved}" if last_saved else "; no checkpoint was saved"
                    )
                    raise TrainingDiverged(
                        f"loss is {loss} at step {run.step} (sds {scalars['loss/sds']:.4g}, "
                        f"shading {out.shading}); training stopped{where}"
                    )
                run.optimizer.step()
                run.step += 1
                scalars["sds/t_max"] = t_max_at(config.sds, run.step - 1)
                scalars["train/steps_per_s"] = 1.0 / max(time.perf_counter() - started, 1e-9)
                if run.level_mask is not None:
                    scalars["train/active_levels"] = float(run.level_mask.active)
                reporter.step(run.step, scalars, config.log_every)
                if progress_callback is not None and info.is_main:
                    progress_callback(run.step, config.steps, loss)

                if _due(run.step, config.checkpoint_every) and run.step < config.steps:
                    last_saved, saved_step = save_training_checkpoint(run), run.step
                if _due(run.step, config.preview_every) and info.is_main:
                    save_png(run.out_dir / "previews" / f"step_{run.step:07d}.png", render_preview(run))
                if _due(run.step, config.eval_every) and evaluator is not None and info.is_main:
                    _run_evaluator(run, evaluator, reporter)
        if saved_step != run.step:
            last_saved = save_training_checkpoint(run)
        if config.preview_every > 0 and not _due(run.step, config.preview_every) and info.is_main:
            save_png(run.out_dir / "previews" / f"step_{run.step:07d}.png", render_preview(run))  # final look
    finally:
        reporter.close()
        if run.level_mask is not None:
            run.level_mask.remove()
    return TrainResult(
        status=status,
        step=run.step,
        checkpoint=last_saved if info.is_main else None,
        loss=loss,
        signal=received[0] if received else None,
    )


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _run_evaluator(run: TrainRun, evaluator: Evaluator, reporter: Reporter) -> None:
    run.field.eval()  # no spectral-norm updates during evaluation
    try:
        metrics = {k: float(v) for k, v in evaluator(run.field, run.step).items()}
    finally:
        run.field.train()
    reporter.scalars(run.step, metrics, "eval")
    line = json.dumps({"step": run.step, **metrics})
    with open(run.out_dir / "eval.jsonl", "a") as f:
        f.write(line + "\n")


__all__ = [
    "DistInfo",
    "Evaluator",
    "LevelMask",
    "ProgressCallback",
    "PromptBank",
    "StepOutput",
    "TrainResult",
    "TrainRun",
    "TrainingDiverged",
    "TrainingError",
    "build_field",
    "build_optimizer",
    "build_prior",
    "build_prompt_bank",
    "check_train_config",
    "choose_shading",
    "forward_backward",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "mix_rows",
    "prior_condition",
    "render_preview",
    "sample_prompt_weights",
    "shard_indices",
    "single_power_iteration",
    "train",
]
