"""The newest usable checkpoint of a job's run folder, in the trainer's layout."""

from __future__ import annotations

from pathlib import Path


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """``(step, path)`` of the newest complete checkpoint of a run whose manifest verifies.

    Uses the trainer's own layout (``att3d.train.list_checkpoints``), skipping a corrupt newer checkpoint
    as ``att3d.train.latest_checkpoint`` does.
    """
    from att3d.checkpoint import CheckpointError, read_manifest
    from att3d.train import list_checkpoints

    for step, path in reversed(list_checkpoints(Path(run_dir))):
        try:
            read_manifest(path, check_weights=False)
        except CheckpointError:
            continue
        return step, path
    return None
