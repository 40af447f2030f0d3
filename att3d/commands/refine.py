"""``att3d refine PROMPT -o OUT``: the model's output for PROMPT, improved by per-prompt SDS
(``att3d.refine``) and written as a mesh (progress bar on a terminal, log lines otherwise)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from att3d.commands.errors import UserError, user_errors
from att3d.commands.mesh_options import (
    CheckpointOption,
    ResolutionOption,
    TextureOption,
    check_mesh_options,
    load_generator,
    mesh_config,
    write_mesh_file,
)

STEPS_RANGE = (1, 10_000)
"""``--steps`` bounds (``att3d.refine_config.REFINE_STEPS_RANGE``, repeated: ``--help`` imports no torch)."""


def refine_command(
    prompt: Annotated[str, typer.Argument(help="Text prompt, e.g. 'a red cube'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output mesh: .glb, .obj or .ply.")],
    steps: Annotated[int, typer.Option("--steps", "-n", help="Refine steps, 1-10000.")] = 64,
    checkpoint: CheckpointOption = None,
    freeze_head: Annotated[
        bool,
        typer.Option(
            "--freeze-head/--no-freeze-head", help="Optimize only the prompt's grid, or the head's copy too."
        ),
    ] = True,
    prior: Annotated[str, typer.Option("--prior", help="Diffusion prior (default: the model's).")] = "",
    seed: Annotated[int, typer.Option("--seed", help="Seed of cameras, timesteps and noise.")] = 0,
    prior_text: Annotated[
        str | None,
        typer.Option(
            "--prior-text",
            help="prompt: condition the prior on the prompt as given; nearest: on the nearest prompt it "
            "knows (for words a closed-vocabulary prior was not trained on). Default: the refine config's.",
        ),
    ] = None,
    resolution: ResolutionOption = None,
    texture: TextureOption = "vertex",
) -> None:
    """Refine the model's mesh for PROMPT with per-prompt score distillation, starting from its output."""
    with user_errors():
        from att3d.limits import validate_prompt

        validate_prompt(prompt)
        check_mesh_options(output, resolution, texture)
        if prior_text not in (None, "prompt", "nearest"):
            raise UserError(f"--prior-text must be prompt or nearest, got {prior_text!r}")
        if not STEPS_RANGE[0] <= steps <= STEPS_RANGE[1]:
            raise UserError(f"--steps must be in [{STEPS_RANGE[0]}, {STEPS_RANGE[1]}], got {steps}")
        start = time.perf_counter()
        generator = load_generator(checkpoint)
        from att3d.priors.registry import load_prior
        from att3d.refine import RefineConfig, mesh_refined, refine

        prior_name = prior or _model_prior(generator)
        loaded_prior = load_prior(prior_name, device=generator.device)
        loaded = time.perf_counter()
        choice = {} if prior_text is None else {"prior_text": prior_text}
        config = RefineConfig(steps=steps, freeze_head=freeze_head, seed=seed, **choice)
        result = refine(generator, prompt, config, loaded_prior, progress=True)
        if result.status != "completed":
            raise UserError(f"refine stopped at step {result.step} of {steps}; nothing written")
        mesh = mesh_refined(result.field, mesh_config(generator, resolution, texture), generator.device)
        write_mesh_file(mesh, output)
        typer.echo(
            f"wrote {output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces) after {steps} refine "
            f"steps in {time.perf_counter() - loaded:.1f} s (loading {loaded - start:.1f} s)"
        )


def _model_prior(generator) -> str:
    """The prior the model was trained with (its manifest's training config), else the bundled one."""
    train_config = generator.metadata.get("train_config")
    name = train_config.get("prior") if isinstance(train_config, dict) else None
    return name if isinstance(name, str) and name else "shapes"
