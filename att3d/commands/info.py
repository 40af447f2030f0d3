"""``att3d info CHECKPOINT``: a checkpoint's verified manifest, without building a model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from att3d.commands.errors import UserError, user_errors


def info(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")]) -> None:
    """Print a checkpoint's verified manifest (without loading the weights into a model)."""
    with user_errors():
        from att3d.checkpoint import read_manifest

        if not checkpoint.exists():
            raise UserError(f"checkpoint not found: {checkpoint}")
        manifest = read_manifest(checkpoint)
        typer.echo(json.dumps(manifest, indent=2))
