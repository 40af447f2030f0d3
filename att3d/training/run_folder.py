"""The layout of a training run's folder, shared by the trainer and the job service.

A run folder holds ``checkpoints/step_XXXXXXX/`` directories (plus ``config.yaml``, ``previews/``,
``tb/``, ``eval.jsonl`` and ``.lock``). A checkpoint is complete once its train-state file exists: the
trainer writes it last. One trainer at a time: :func:`lock_run_folder`. This module imports no torch,
so the service can inspect runs cheaply; only :func:`latest_checkpoint` reads manifests (through
``att3d.checkpoint``, imported when called).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from att3d.training.errors import TrainingError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not locked there
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run directory holding ``step_XXXXXXX`` checkpoints."""
TRAIN_STATE_FILE = "train_state.safetensors"
"""Optimizer and RNG state, written into a checkpoint directory after its weights and manifest."""
LOCK_FILE = ".lock"
"""Held (``flock``) by the trainer writing the run; holds its pid for the error a second trainer gets."""
_CHECKPOINT_NAME = re.compile(r"step_(\d+)")


class RunFolderBusy(TrainingError):
    """Another trainer (a CLI run or a job) is writing the run folder."""


@contextlib.contextmanager
def lock_run_folder(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``run_dir``'s exclusive lock while the block runs (creating the folder); raise
    :class:`RunFolderBusy` at once if another process holds it.

    An ``flock`` belongs to the open file, so the kernel drops it when its holder exits however it
    dies (kill -9 included): a crashed trainer never blocks the next one. The file stays (deleting it
    would let two trainers lock two different files).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                by = f" (pid {holder})" if holder.isdigit() else ""
                raise RunFolderBusy(
                    f"run folder {run_dir} is in use by another trainer{by}; "
                    "wait for it to end or choose another --out"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


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
