"""A refine's checkpoints: the refined field, Adam and the random stream, so a refine resumes exactly.

They use the training run-folder layout (``checkpoints/step_XXXXXXX``, train state written last;
``att3d.training.run_folder``), so the job service finds and reports them as it does a training run's.
The weights are the ``PromptField``'s (one grid plus the head), with the model config in the manifest and
``metadata.kind = "refine"``: not a generator checkpoint (``Generator.from_checkpoint`` refuses it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from att3d.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_tensors,
    save_checkpoint,
    save_tensors_atomic,
)
from att3d.config import to_dict
from att3d.training.run_folder import TRAIN_STATE_FILE, checkpoint_dir, latest_checkpoint, prune_checkpoints

KEEP = 2
"""Checkpoints kept per refine (the newest, and the one before in case the newest is damaged)."""


def save_refine_checkpoint(loop: Any, out_dir: Path) -> Path:
    """Write the checkpoint of ``loop.step`` (weights and manifest, then the train state) and prune.

    ``loop`` is ``att3d.refine``'s loop state (target, config, optimizer, generator, step).
    """
    target = loop.target
    path = save_checkpoint(
        checkpoint_dir(out_dir, loop.step),
        {k: v.detach().cpu().contiguous() for k, v in target.field.state_dict().items()},
        to_dict(target.model),
        target.encoder_id or "unknown",
        [target.prompt],
        {"kind": "refine", "step": loop.step, "refine": to_dict(loop.config)},
    )
    state = {"step": torch.tensor([loop.step]), "rng": loop.generator.get_state()}
    for index, entry in loop.optimizer.state_dict()["state"].items():
        for key, value in entry.items():
            state[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    save_tensors_atomic(path / TRAIN_STATE_FILE, state)
    prune_checkpoints(out_dir, KEEP)
    return path


def newest_refine_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete, verified checkpoint in ``out_dir`` (``None``: start from step 0)."""
    found = latest_checkpoint(out_dir)
    return found[1] if found is not None else None


def load_refine_checkpoint(loop: Any, path: Path) -> None:
    """Put the field, Adam, the random stream and the step back as they were at ``path``."""
    ckpt = load_checkpoint(path)
    if ckpt.metadata.get("kind") != "refine":
        raise CheckpointError(f"{path}: not a refine checkpoint")
    saved_prompt = ckpt.prompts[0] if ckpt.prompts else None
    if saved_prompt != loop.target.prompt:
        raise CheckpointError(f"{path}: refines {saved_prompt!r}, not {loop.target.prompt!r}")
    device = next(loop.target.field.parameters()).device
    loop.target.field.load_state_dict({k: v.to(device) for k, v in ckpt.tensors.items()})
    state = load_tensors(path / TRAIN_STATE_FILE)
    optim = loop.optimizer.state_dict()
    entries: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in state.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            entries.setdefault(int(index), {})[key] = value
    optim["state"] = entries
    loop.optimizer.load_state_dict(optim)
    loop.generator.set_state(state["rng"])
    loop.step = int(state["step"][0])
