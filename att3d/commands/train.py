"""``att3d train CONFIG [key=value ...] [--resume] [--out DIR]``: the command-line face of ``att3d.training``.

Runs the same on one process (``python -m att3d train configs/shapes_amortized.yaml``) and under
``torchrun --nproc_per_node=N -m att3d train ...``; only rank 0 prints and writes.

Exit codes: 0 done, 1 training failed (e.g. the loss diverged), 2 bad config or arguments (a run folder
another trainer holds, one that cannot be written), 128 + signal
number after SIGINT/SIGTERM (a checkpoint is saved first; ``--resume`` continues from it).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NoReturn

import typer

EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2


def train(
    config: Path = typer.Argument(..., help="Training config (YAML), e.g. configs/shapes_amortized.yaml."),
    overrides: list[str] | None = typer.Argument(
        None, help="Config overrides as key.sub=value, e.g. steps=500 prompts.split=heldout."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue from the newest checkpoint in the run folder."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        "-o",
        help="Run folder for checkpoints, logs and previews (default: runs/<config name>).",
    ),
) -> None:
    """Train an amortized text-to-3D generator on a prompt set with score distillation."""
    # After argument parsing: keeps --help fast.
    import att3d.training.loop as training
    from att3d.checkpoint import CheckpointError
    from att3d.config import ConfigError, TrainConfig, load_config
    from att3d.training.run_folder import RunFolderBusy

    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        train_config = load_config(TrainConfig, config, list(overrides or []))
    except ConfigError as err:
        _fail(f"error: {err}", EXIT_BAD_CONFIG)
    run_dir = out if out is not None else Path("runs") / config.stem
    try:
        result = training.train(train_config, run_dir, resume=resume)
    except (ConfigError, RunFolderBusy) as err:
        _fail(f"error: {err}", EXIT_BAD_CONFIG)
    except OSError as err:  # the run folder cannot be made or written (read-only, full disk)
        _fail(f"error: {run_dir}: {err.strerror or err}", EXIT_BAD_CONFIG)
    except (training.TrainingError, CheckpointError) as err:
        _fail(f"error: {err}", EXIT_FAILED)
    if rank == 0:
        where = f"; checkpoint: {result.checkpoint}" if result.checkpoint else ""
        typer.echo(f"{result.status} at step {result.step}/{train_config.steps}{where}")
    if result.signal is not None:
        raise typer.Exit(128 + result.signal)
    if result.status != "completed":
        raise typer.Exit(EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)
