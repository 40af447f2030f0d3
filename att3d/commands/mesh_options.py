"""What ``att3d generate`` and ``att3d interpolate`` share: their options, their checks, loading the
generator and writing a mesh file.

Checks run before a model is loaded; files are written atomically (nothing is left behind on failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from att3d.commands.errors import UserError

MESH_EXTENSIONS = (".glb", ".obj", ".ply")

CheckpointOption = Annotated[
    Path | None, typer.Option("--checkpoint", "-c", help="Checkpoint directory (default: the bundled model).")
]
ResolutionOption = Annotated[
    int | None, typer.Option("--resolution", "-r", help="Marching-cubes grid resolution, 16-512.")
]
TextureOption = Annotated[
    str, typer.Option("--texture", help="vertex (vertex colours) or uv (baked texture).")
]


def check_mesh_options(output: Path, resolution: int | None, texture: str) -> None:
    """The options ``generate`` and ``interpolate`` share, checked before a model is loaded (the only check
    of ``-r`` on the CLI path)."""
    from att3d.limits import check_resolution

    check_output(output)
    check_texture(texture)
    if resolution is not None:
        check_resolution(resolution)


def check_output(path: Path) -> Path:
    """``path``, if its extension names a mesh format and it is not a directory."""
    if path.suffix.lower() not in MESH_EXTENSIONS:
        raise UserError(
            f"unsupported output extension {path.suffix or '(none)'!r} for {path} "
            f"(use one of {', '.join(MESH_EXTENSIONS)})"
        )
    if path.exists() and path.is_dir():
        raise UserError(f"output path {path} is a directory")
    return path


def check_texture(texture: str) -> str:
    """``texture``, if it is one of ``MeshConfig.texture``'s choices."""
    import typing

    from att3d.config import TextureMode  # here, not at the top: the CLI starts without pydantic

    modes = typing.get_args(TextureMode)
    if texture not in modes:
        raise UserError(f"--texture must be one of {', '.join(modes)}, got {texture!r}")
    return texture


def load_generator(checkpoint: Path | None):  # -> Generator (imported lazily)
    """The generator of ``checkpoint`` (``None``: the bundled model)."""
    from att3d.generate import Generator

    if checkpoint is None:
        return Generator.default()
    if not checkpoint.exists():
        raise UserError(f"checkpoint not found: {checkpoint}")
    return Generator.from_checkpoint(checkpoint)


def mesh_config(generator, resolution: int | None, texture: str):  # -> MeshConfig
    """The generator's mesh settings with the command's resolution (checked by
    :func:`check_mesh_options`) and texture mode."""
    import dataclasses

    changes = {"texture": texture} if resolution is None else {"texture": texture, "resolution": resolution}
    return dataclasses.replace(generator.config.mesh, **changes)


def mesh_files(path: Path) -> list[Path]:
    """The files writing a mesh to ``path`` may create: ``path``, and for an OBJ its material and texture."""
    if path.suffix.lower() != ".obj":
        return [path]
    return [path, path.with_suffix(".mtl"), path.with_suffix(".png")]


def write_mesh_file(mesh, path: Path) -> None:
    """Write ``mesh`` to ``path`` (format from the extension), creating the parent folders.

    An OBJ is up to three files, each atomic; if a later one fails (a full disk), the earlier new ones
    are removed so no material or texture is left without its OBJ.
    """
    from att3d.meshing.export import write_mesh

    new = [p for p in mesh_files(path)[1:] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_mesh(mesh, path)
    except OSError:
        for leftover in new:
            leftover.unlink(missing_ok=True)
        raise
