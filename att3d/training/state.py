"""A training checkpoint: the generator checkpoint (``att3d.checkpoint``) plus Adam and RNG state.

Every rank's generator states are saved with the Adam state next to each checkpoint
(``train_state.safetensors``, written last so an interrupted save is never resumed from), which makes a
resumed run bit-identical on the CPU. On CUDA the hash-grid backward accumulates with atomic adds, whose
order varies, so a resumed run matches to about 1e-6.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from att3d.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors_atomic,
)
from att3d.config import ConfigError, ModelConfig, from_dict, to_dict
from att3d.generate import check_weights_fit
from att3d.training.errors import TrainingError
from att3d.training.run_folder import TRAIN_STATE_FILE, checkpoint_dir, prune_checkpoints
from att3d.training.setup import TrainRun, make_generators

logger = logging.getLogger(__name__)


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
        if run.occupancy is not None:
            tensors.update(run.occupancy.state())
        for rank, state in enumerate(states):
            for key, data in state.items():
                tensors[f"rng.rank{rank}.{key}"] = _bytes_tensor(data)
        # Written last: a checkpoint without it is incomplete and ignored by resume.
        save_tensors_atomic(path / TRAIN_STATE_FILE, tensors, {"step": str(run.step)})
        prune_checkpoints(run.out_dir, run.config.keep_checkpoints)
    if run.dist.distributed:
        dist.barrier()
    return path


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


def warm_start(run: TrainRun, path: str | Path) -> None:
    """Start the run's field from another run's weights (``init_from``): the same field config and text
    encoder, any prompt set or rendering; the optimizer, RNG and step start fresh (a fine-tune, not a
    resume)."""
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        raise TrainingError(f"init_from: {err}") from None
    diff = _first_difference(ckpt.config.get("field"), to_dict(run.config.model.field))
    if diff is not None:
        raise TrainingError(f"init_from: {path} has another field config (differs at 'model.field.{diff}')")
    if ckpt.text_encoder != run.encoder_id:
        raise TrainingError(
            f"init_from: {path} was trained with text encoder {ckpt.text_encoder!r}, config gives "
            f"{run.encoder_id!r}"
        )
    try:
        check_weights_fit(run.config.model, ckpt.tensors, path)
    except CheckpointError as err:
        raise TrainingError(f"init_from: {err}") from None
    run.field.load_state_dict({k: v.to(run.dist.device) for k, v in ckpt.tensors.items()})


def stored_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """A manifest's model config with the defaults of fields added since it was written (an older
    checkpoint lacks ``text.unknown_words``); as stored if it no longer parses (the comparison reports it)."""
    try:
        return to_dict(from_dict(ModelConfig, config))
    except ConfigError:
        return config


def load_training_checkpoint(run: TrainRun, path: Path) -> None:
    """Restore weights, Adam state, RNG states and the step from a checkpoint of this run."""
    ckpt = load_checkpoint(path)
    diff = _first_difference(stored_model_config(ckpt.config), to_dict(run.config.model))
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
    try:  # a re-signed checkpoint may hold weights its config does not describe
        check_weights_fit(run.config.model, ckpt.tensors, path)
    except CheckpointError as err:
        raise TrainingError(f"cannot resume: {err}") from None
    run.field.load_state_dict({k: v.to(run.dist.device) for k, v in ckpt.tensors.items()})
    tensors = load_tensors(path / TRAIN_STATE_FILE)
    load_optimizer_tensors(run, {k: v for k, v in tensors.items() if k.startswith("optim.")})
    if run.occupancy is not None:
        run.occupancy.load_state(tensors)
    run.step = int(ckpt.metadata["step"])
    prefix = f"rng.rank{run.dist.rank}."
    state = {k[len(prefix) :]: v.numpy().tobytes() for k, v in tensors.items() if k.startswith(prefix)}
    if state:
        restore_rng_state(run, state)
    else:
        logger.warning("%s has no RNG state for rank %d; reseeding from the step", path, run.dist.rank)
        run.host_rng, run.torch_gen = make_generators(run.config.seed, run.dist.rank, run.step)
