"""``att3d generate PROMPT -o OUT``: one prompt -> one mesh file (and a warning on stderr when the prompt is
unfamiliar to the model: the mesh is written all the same)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from att3d.commands.errors import user_errors
from att3d.commands.mesh_options import (
    CheckpointOption,
    ResolutionOption,
    TextureOption,
    check_mesh_options,
    load_generator,
    mesh_config,
    write_mesh_file,
)


def generate(
    prompt: Annotated[str, typer.Argument(help="Text prompt, e.g. 'a red cube'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output mesh: .glb, .obj or .ply.")],
    checkpoint: CheckpointOption = None,
    resolution: ResolutionOption = None,
    texture: TextureOption = "vertex",
) -> None:
    """Generate a mesh for PROMPT."""
    with user_errors():
        from att3d.limits import validate_prompt

        validate_prompt(prompt)
        check_mesh_options(output, resolution, texture)
        start = time.perf_counter()
        generator = load_generator(checkpoint)
        loaded = time.perf_counter()
        generation = generator.generate_with_familiarity(prompt, mesh_config(generator, resolution, texture))
        mesh = generation.mesh
        write_mesh_file(mesh, output)
        done = time.perf_counter()
        typer.echo(
            f"wrote {output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces) "
            f"in {done - loaded:.2f} s (model load {loaded - start:.2f} s)"
        )
        familiarity = generation.familiarity
        if familiarity is not None and familiarity.read_as:
            typer.echo(
                f'note: read as "{familiarity.read_as}" (words this model was not trained on replaced)',
                err=True,
            )
        if familiarity is not None and not familiarity.familiar:
            typer.echo(unfamiliar_warning(prompt.strip(), familiarity), err=True)


def unfamiliar_warning(prompt: str, familiarity) -> str:  # familiarity: att3d.familiarity.Familiarity
    """The one-line warning for a prompt below the model's familiarity threshold."""
    return (
        f'warning: "{prompt}" is unfamiliar to this model (similarity {familiarity.similarity:.2f} to '
        f'"{familiarity.nearest}"; threshold {familiarity.threshold:.2f}); the mesh may not match it'
    )
