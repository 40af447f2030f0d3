"""``att3d info CHECKPOINT|RUN_DIR``: a short summary of a verified checkpoint, without building a model.

``--json`` prints the whole manifest instead (config, every prompt, metadata), for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from att3d.commands.errors import UserError, user_errors

EXAMPLE_PROMPTS = 3
"""Prompts quoted in the summary; ``--json`` lists them all."""


def info(
    checkpoint: Annotated[
        Path, typer.Argument(help="Checkpoint directory, or a training run folder (its newest checkpoint).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the verified manifest as JSON.")] = False,
) -> None:
    """Summarize a checkpoint: name, hash, training, prompts, text encoder, sizes (verified, not loaded)."""
    with user_errors():
        from att3d.checkpoint import read_manifest

        if not checkpoint.exists():
            raise UserError(f"checkpoint not found: {checkpoint}")
        directory = checkpoint_of(checkpoint)
        manifest = read_manifest(directory)
        typer.echo(json.dumps(manifest, indent=2) if as_json else summary(directory, manifest))


def checkpoint_of(path: Path) -> Path:
    """``path`` itself, or the newest complete checkpoint when ``path`` is a run folder."""
    from att3d.checkpoint import MANIFEST_FILE
    from att3d.training.run_folder import CHECKPOINTS, latest_checkpoint

    if path.is_dir() and not (path / MANIFEST_FILE).exists() and (path / CHECKPOINTS).is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise UserError(f"run folder {path} holds no complete, verified checkpoint")
        return latest[1]
    return path


def summary(directory: Path, manifest: dict[str, Any]) -> str:
    """A dozen lines a person reads: what the model is, what it was trained on, how big it is."""
    from att3d.checkpoint import WEIGHTS_FILE, CheckpointError, model_identity
    from att3d.config import ConfigError, ModelConfig, from_dict, to_dict

    try:
        config = from_dict(ModelConfig, manifest["config"])
    except ConfigError as err:
        raise CheckpointError(f"{directory}: manifest 'config' is invalid: {err}") from None
    metadata, prompts = manifest["metadata"], manifest["prompts"]
    field, grid = config.field, config.field.encoding
    examples = ", ".join(json.dumps(p, ensure_ascii=False) for p in prompts[:EXAMPLE_PROMPTS])
    hidden = len(prompts) - EXAMPLE_PROMPTS
    more = f", ... ({hidden} more; --json lists all)" if hidden > 0 else ""
    parameters, tensors = _parameter_count(directory / WEIGHTS_FILE)
    step = metadata.get("step")
    rows = [
        ("checkpoint", str(directory)),
        ("name", str(metadata.get("name") or directory.name)),
        ("model hash", model_identity(manifest["weights_sha256"], to_dict(config))),
        ("trained", f"{step} steps" if isinstance(step, int) else "(step not recorded)"),
        ("created", manifest["created"]),
        ("prompts", f"{len(prompts)}" + (f": {examples}{more}" if prompts else "")),
        ("text encoder", f"{manifest['text_encoder']} ({config.text.encoder}, {field.text_dim}-d)"),
        (
            "field",
            f"{field.num_bases} basis grids x {grid.levels} levels x 2^{grid.log2_table_size} entries x "
            f"{grid.features_per_level} features; MLP {field.hidden_layers} x {field.hidden_dim}",
        ),
        ("mesh", f"resolution {config.mesh.resolution}, texture {config.mesh.texture}"),
        ("parameters", f"{parameters:,} in {tensors} tensors"),
        ("files", ", ".join(f"{p.name} {_size(p.stat().st_size)}" for p in sorted(directory.iterdir()))),
    ]
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def _parameter_count(weights: Path) -> tuple[int, int]:
    """Numbers and tensors in a safetensors file, from its header alone (no tensor is read)."""
    import math

    from safetensors import safe_open

    with safe_open(weights, framework="pt") as f:
        names = list(f.keys())
        return sum(math.prod(f.get_slice(name).get_shape()) for name in names), len(names)


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
