"""``att3d shapes``: look at ShapesWorld objects and at what the bundled prior makes of them.

    att3d shapes render "a red cube" -o grid.png      # ground-truth turntable
    att3d shapes sample "a red cube" -o samples.png   # prior samples at the same views (GT rows between)

A user error (unknown prompt, bad option) prints one ``error: ...`` line and exits with status 2, as the
rest of the ``att3d`` command line does. Torch models are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from att3d.commands.errors import user_errors

shapes_app = typer.Typer(
    help="ShapesWorld: ground-truth renders and samples of the bundled prior.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OutputOption = Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")]
ViewsOption = Annotated[int, typer.Option(help="Azimuths per row (evenly spaced from 0°).")]
ElevationOption = Annotated[
    list[float] | None, typer.Option("--elevation", help="Elevation of a row in degrees (repeatable).")
]


def _parse(prompt: str):  # -> ShapeObject
    from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, parse_prompt

    obj = parse_prompt(prompt)
    if obj is None:
        raise ValueError(
            f"{prompt!r} is not a ShapesWorld prompt: name one shape ({', '.join(SHAPE_NAMES)}) and one "
            f"colour ({', '.join(COLOR_NAMES)}), e.g. 'a red cube'"
        )
    return obj


def _check(output: Path, views: int, elevations: list[float] | None) -> list[float]:
    from att3d.shapes.sheets import DEFAULT_ELEVATIONS

    if output.suffix.lower() != ".png":
        raise ValueError(f"--output must end in .png, got {output}")
    if output.is_dir():
        raise ValueError(f"--output {output} is a directory")
    if not 1 <= views <= 64:
        raise ValueError(f"--views must be between 1 and 64, got {views}")
    elevations = list(elevations) if elevations else list(DEFAULT_ELEVATIONS)
    if any(not -90.0 < e < 90.0 for e in elevations):
        raise ValueError(f"--elevation must be strictly between -90 and 90 degrees, got {elevations}")
    return elevations


@shapes_app.command()
def render(
    prompt: Annotated[str, typer.Argument(help='A ShapesWorld prompt, e.g. "a red cube".')],
    output: OutputOption = Path("shapes_render.png"),
    views: ViewsOption = 8,
    elevation: ElevationOption = None,
    size: Annotated[int, typer.Option(help="Side of each render in pixels.")] = 64,
) -> None:
    """Turntable sheet of exact ground-truth renders of the object a prompt names."""
    with user_errors():
        obj = _parse(prompt)
        elevations = _check(output, views, elevation)
        if not 8 <= size <= 512:
            raise ValueError(f"--size must be between 8 and 512, got {size}")
        from att3d.images import save_png
        from att3d.shapes.sheets import turntable_sheet

        save_png(turntable_sheet(obj, views, elevations, size), output)
    typer.echo(f"wrote {output}")


@shapes_app.command()
def sample(
    prompt: Annotated[str, typer.Argument(help='A ShapesWorld prompt, e.g. "a red cube".')],
    output: OutputOption = Path("shapes_samples.png"),
    views: ViewsOption = 8,
    elevation: ElevationOption = None,
    steps: Annotated[int, typer.Option(help="DDIM denoising steps.")] = 50,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = none).")] = 3.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampling noise.")] = 0,
    prior: Annotated[Path | None, typer.Option(help="Prior folder (default: the bundled one).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda if available).")] = None,
    any_prompt: Annotated[
        bool, typer.Option("--any-prompt", help="Allow prompts outside ShapesWorld (no GT rows).")
    ] = False,
) -> None:
    """Samples of the prior for a prompt at turntable views, each row followed by the ground truth."""
    with user_errors():
        from att3d.limits import validate_prompt

        prompt = validate_prompt(prompt)
        from att3d.shapes.world import parse_prompt

        # Outside ShapesWorld there is no ground truth to show; inside it, the GT rows come along.
        obj = parse_prompt(prompt) if any_prompt else _parse(prompt)
        elevations = _check(output, views, elevation)
        if not 1 <= steps <= 1000:
            raise ValueError(f"--steps must be between 1 and 1000, got {steps}")
        if prior is not None and not prior.is_dir():
            raise ValueError(f"--prior {prior} is not a folder")
        from att3d.images import save_png
        from att3d.priors.shapes import ShapesPrior
        from att3d.shapes.sheets import sample_sheet

        model = ShapesPrior.from_pretrained(prior, device=device)
        sheet = sample_sheet(model, prompt, views, elevations, steps, guidance, seed, ground_truth=obj)
        save_png(sheet, output)
    typer.echo(f"wrote {output}")
