"""The layout of a training run's folder, shared by the trainer and the job service.

A run folder holds ``checkpoints/step_XXXXXXX/`` directories (plus ``config.yaml``, ``previews/``,
``tb/`` and ``eval.jsonl``). A checkpoint is complete once its train-state file exists: the trainer
writes it last. This module imports no torch, so the service can inspect runs cheaply; only
:func:`latest_checkpoint` reads manifests (through ``att3d.checkpoint``, imported when called).
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run directory holding ``step_XXXXXXX`` checkpoints."""
TRAIN_STATE_FILE = "train_state.safetensors"
"""Optimizer and RNG state, written into a checkpoint directory after its weights and manifest."""
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Where the checkpoint of ``step`` goes."""
    return Path(run_dir) / CHECKPOINTS / f"step_{step:07d}"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of the complete checkpoints of a run (train state written last), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _CHECKPOINT_NAME.fullmatch(path.name)
        if match and path.is_dir() and (path / TRAIN_STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path, check_weights: bool = True) -> tuple[int, Path] | None:
    """``(step, path)`` of the newest complete checkpoint whose manifest verifies; corrupt ones are skipped.

    ``check_weights`` also verifies the weights' checksum (what resuming needs); without it only the
    manifest is read, which is cheap enough for a service polling many runs.
    """
    from att3d.checkpoint import CheckpointError, read_manifest  # imports torch: only when asked

    for step, path in reversed(list_checkpoints(run_dir)):
        try:
            read_manifest(path, check_weights=check_weights)
            return step, path
        except CheckpointError as err:
            logger.warning("skipping unreadable checkpoint: %s", err)
    return None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest complete checkpoints (incomplete ones never count)."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
