"""The ``att3d`` command line.

Every command validates its arguments before loading a model, reports a user error as one
``error: ...`` line with exit status 2, and writes output files atomically (nothing is left behind on
failure). Heavy modules (torch models, diffusers, the server) are imported inside the commands so that
``att3d --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="att3d",
    help="Amortized text-to-3D: prompt -> textured mesh in one forward pass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

MESH_EXTENSIONS = (".glb", ".obj", ".ply")
TEXTURE_MODES = ("vertex", "uv")


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures (bad input, unreadable files, empty fields) into one line and exit 2."""
    try:
        yield
    except (UserError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=2) from None


def _check_output(path: Path) -> Path:
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise UserError(
            f"unsupported output extension {path.suffix or '(none)'!r} for {path} "
            f"(use one of {', '.join(MESH_EXTENSIONS)})"
        )
    if path.exists() and path.is_dir():
        raise UserError(f"output path {path} is a directory")
    return path


def _check_texture(texture: str) -> str:
    if texture not in TEXTURE_MODES:
        raise UserError(f"--texture must be one of {', '.join(TEXTURE_MODES)}, got {texture!r}")
    return texture


def _load_generator(checkpoint: Path | None):  # -> Generator (imported lazily)
    from att3d.generate import Generator

    if checkpoint is None:
        return Generator.default()
    if not checkpoint.exists():
        raise UserError(f"checkpoint not found: {checkpoint}")
    return Generator.from_checkpoint(checkpoint)


def _mesh_config(generator, resolution: int | None, texture: str):  # -> MeshConfig
    import dataclasses

    from att3d.generate import check_resolution

    config = generator.config.mesh
    if resolution is not None:
        config = dataclasses.replace(config, resolution=check_resolution(resolution))
    return dataclasses.replace(config, texture=texture)


CheckpointOption = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint directory (default: the bundled model).")
]
ResolutionOption = Annotated[
    int | None, typer.Option("--resolution", "-r", help="Marching-cubes grid resolution, 16-512.")
]
TextureOption = Annotated[
    str, typer.Option("--texture", help="vertex (vertex colours) or uv (baked texture).")
]


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="Text prompt, e.g. 'a red cube'.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output mesh: .glb, .obj or .ply.")],
    checkpoint: CheckpointOption = None,
    resolution: ResolutionOption = None,
    texture: TextureOption = "vertex",
) -> None:
    """Generate a mesh for PROMPT."""
    with user_errors():
        from att3d.generate import check_resolution
        from att3d.limits import validate_prompt

        validate_prompt(prompt)
        _check_output(output)
        _check_texture(texture)
        if resolution is not None:
            check_resolution(resolution)
        start = time.perf_counter()
        generator = _load_generator(checkpoint)
        loaded = time.perf_counter()
        mesh = generator.generate(prompt, _mesh_config(generator, resolution, texture))
        _write(mesh, output)
        done = time.perf_counter()
        typer.echo(
            f"wrote {output} ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces) "
            f"in {done - loaded:.2f} s (model load {loaded - start:.2f} s)"
        )


@app.command()
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
        from att3d.generate import check_resolution, interpolation_weights
        from att3d.limits import validate_prompt

        validate_prompt(prompt_a)
        validate_prompt(prompt_b)
        _check_output(output)
        _check_texture(texture)
        if resolution is not None:
            check_resolution(resolution)
        if (alpha is None) == (frames is None):
            raise UserError("give exactly one of --alpha or --frames")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {alpha}")
        walk = [[1.0 - alpha, alpha]] if alpha is not None else interpolation_weights(2, frames or 0)
        generator = _load_generator(checkpoint)
        config = _mesh_config(generator, resolution, texture)
        # Build every mesh before writing any file, so a failure leaves no partial sequence behind.
        meshes = [generator.mesh(generator.blend([prompt_a, prompt_b], w), config) for w in walk]
        paths = (
            [output]
            if alpha is not None
            else [output.with_name(f"{output.stem}_{i:03d}{output.suffix}") for i in range(len(meshes))]
        )
        for mesh, path in zip(meshes, paths, strict=True):
            _write(mesh, path)
            typer.echo(f"wrote {path} ({len(mesh.vertices)} vertices)")


@app.command()
def info(checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory.")]) -> None:
    """Print a checkpoint's verified manifest (without loading the weights into a model)."""
    with user_errors():
        from att3d.checkpoint import read_manifest

        if not checkpoint.exists():
            raise UserError(f"checkpoint not found: {checkpoint}")
        manifest = read_manifest(checkpoint)
        typer.echo(json.dumps(manifest, indent=2))


def _write(mesh, path: Path) -> None:
    from att3d.mesh import write_mesh

    path.parent.mkdir(parents=True, exist_ok=True)
    write_mesh(mesh, path)


def _mount_subcommands() -> None:
    """Attach the command groups of other modules (each imports its heavy dependencies lazily)."""
    if importlib.util.find_spec("att3d.shapes.cli") is not None:
        from att3d.shapes.cli import app as shapes_app

        app.add_typer(shapes_app, name="shapes", help="ShapesWorld: ground-truth renders and prior samples.")
    if importlib.util.find_spec("att3d.train_cli") is not None:
        from att3d.train_cli import train

        app.command(name="train")(train)
    if importlib.util.find_spec("att3d.serve_cli") is not None:
        from att3d.serve_cli import serve

        app.command(name="serve")(serve)
    if importlib.util.find_spec("att3d.shapes.evaluate") is not None:
        from att3d.shapes.evaluate import eval_command

        app.command(name="eval")(eval_command)


_mount_subcommands()


def main() -> None:
    app(prog_name="att3d")


if __name__ == "__main__":
    main()
