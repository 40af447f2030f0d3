"""The ``att3d`` command line: the typer app, its commands, and ``main`` (the console script).

Every command validates its arguments before loading a model, reports a user error as one
``error: ...`` line with exit status 2 (``att3d.commands.errors``), and writes output files atomically
(nothing is left behind on failure). Each command lives in its own module and imports its heavy
dependencies (torch models, diffusers, the server) inside the command, so ``att3d --help`` stays fast.
"""

from __future__ import annotations

import typer

from att3d import malloc_tuning
from att3d.commands.eval import eval_command
from att3d.commands.generate import generate
from att3d.commands.info import info
from att3d.commands.interpolate import interpolate
from att3d.commands.refine import refine_command
from att3d.commands.serve import serve
from att3d.commands.shapes import shapes_app
from att3d.commands.train import train

app = typer.Typer(
    name="att3d",
    help="Amortized text-to-3D: prompt -> textured mesh in one forward pass.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command(name="generate")(generate)
app.command(name="interpolate")(interpolate)
app.command(name="refine")(refine_command)
app.command(name="info")(info)
app.add_typer(shapes_app, name="shapes", help="ShapesWorld: ground-truth renders and prior samples.")
app.command(name="train")(train)
app.command(name="serve")(serve)
app.command(name="eval")(eval_command)


def main() -> None:
    """Entry point of the ``att3d`` script, ``python -m att3d`` and ``torchrun -m att3d train ...``."""
    malloc_tuning.tune()  # before any large allocation (glibc only; see att3d.malloc_tuning)
    app(prog_name="att3d")


if __name__ == "__main__":
    main()
