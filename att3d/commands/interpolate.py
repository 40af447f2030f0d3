"""``att3d interpolate A B -o OUT``: a mesh of a blend of two prompts, or frames of a walk between them."""

from __future__ import annotations

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
    mesh_files,
    write_mesh_file,
)


def interpolate(
    prompt_a: Annotated[str, typer.Argument(help="First prompt.")],
    prompt_b: Annotated[str, typer.Argument(help="Second prompt.")],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output mesh; with --frames, frame i goes to NAME_iii.EXT.")
    ],
    alpha: Annotated[float | None, typer.Option(help="Blend weight of the second prompt, in [0, 1].")] = None,
    frames: Annotated[int | None, typer.Option(help="Number of frames of a walk from A to B (>= 2).")] = None,
    checkpoint: CheckpointOption = None,
    resolution: ResolutionOption = None,
    texture: TextureOption = "vertex",
) -> None:
    """Mesh a blend of two prompts (--alpha) or a sequence of frames between them (--frames)."""
    with user_errors():
        from att3d.generate import interpolation_weights
        from att3d.limits import validate_prompt

        validate_prompt(prompt_a)
        validate_prompt(prompt_b)
        check_mesh_options(output, resolution, texture)
        if (alpha is None) == (frames is None):
            raise UserError("give exactly one of --alpha or --frames")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {alpha}")
        walk = [[1.0 - alpha, alpha]] if alpha is not None else interpolation_weights(2, frames or 0)
        generator = load_generator(checkpoint)
        config = mesh_config(generator, resolution, texture)
        # Build every mesh before writing any file, so a failure leaves no partial sequence behind.
        meshes = [generator.mesh(generator.blend([prompt_a, prompt_b], w), config) for w in walk]
        paths = (
            [output]
            if alpha is not None
            else [output.with_name(f"{output.stem}_{i:03d}{output.suffix}") for i in range(len(meshes))]
        )
        new = [file for path in paths for file in mesh_files(path) if not file.exists()]
        try:
            for mesh, path in zip(meshes, paths, strict=True):
                write_mesh_file(mesh, path)
        except OSError:  # a full disk part-way: no partial sequence either (files already there stay)
            for file in new:
                file.unlink(missing_ok=True)
            raise
        for mesh, path in zip(meshes, paths, strict=True):
            typer.echo(f"wrote {path} ({len(mesh.vertices)} vertices)")
