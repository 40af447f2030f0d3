"""``att3d eval``: score a generator against ShapesWorld ground truth and print (or save) the report.

The scoring is ``att3d.shapes.evaluate``, the cases ``att3d.shapes.eval_cases``; this module validates
the options, loads the model and the classifier, and reports: a table on stdout, optionally a JSON file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from att3d.atomic import write_json_atomic
from att3d.commands.errors import UserError, user_errors

if TYPE_CHECKING:  # att3d.shapes imports torch: keeps `att3d --help` fast
    from att3d.shapes.eval_cases import EvalCase


def eval_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Checkpoint directory (default: the bundled model)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            help="Score the canonical prompts of a split (train, heldout, all), or held-out wordings"
            " (words and templates never trained on) of the train objects (wording) or of the held-out"
            " objects (heldout-wording).",
        ),
    ] = None,
    cases: Annotated[
        Path | None,
        typer.Option("--cases", help='JSON Lines file of {"prompt": ..., "shape": ..., "color": ...} cases.'),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write per-case and mean metrics to this JSON file.")
    ] = None,
    all_phrasings: Annotated[
        bool,
        typer.Option(
            "--all-phrasings", help="With --split train, heldout or all: every phrasing of each object."
        ),
    ] = False,
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="IoU grid side, 8-256.")] = 64,
    views: Annotated[int, typer.Option("--views", help="Rendered views per case for R-precision.")] = 8,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of each view in pixels.")] = 32,
    points: Annotated[int, typer.Option("--points", help="Surface samples for the colour score.")] = 2048,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda if available).")
    ] = None,
    unknown_words: Annotated[
        str | None,
        typer.Option(
            "--unknown-words",
            help="nearest_known or as_written: how the model reads words it was not trained on"
            " (default: the model's config.text.unknown_words).",
        ),
    ] = None,
) -> None:
    """Score a generator against ShapesWorld ground truth: IoU, Chamfer, surface colour, R-precision."""
    with user_errors():
        from att3d.shapes.eval_cases import SPLIT_CHOICES, read_cases, split_cases
        from att3d.shapes.evaluate import EvalSettings, eval_cameras, evaluate_generator, mean_scores

        # Validate everything before loading a model, so a bad input fails fast and writes nothing.
        settings = EvalSettings(resolution=resolution, views=views, image_size=image_size, n_points=points)
        if (split is None) == (cases is None):
            raise UserError(f"give exactly one of --split ({', '.join(SPLIT_CHOICES)}) or --cases FILE.jsonl")
        if cases is not None and all_phrasings:
            raise UserError("--all-phrasings applies to --split only (a case file lists its phrasings)")
        if json_out is not None and json_out.is_dir():
            raise UserError(f"--json {json_out} is a directory")
        if json_out is not None and json_out.parent.exists() and not json_out.parent.is_dir():
            raise UserError(f"--json {json_out}: {json_out.parent} is not a directory")
        if unknown_words not in (None, "nearest_known", "as_written"):
            raise UserError(f"--unknown-words must be nearest_known or as_written, got {unknown_words!r}")
        if checkpoint is not None and not checkpoint.exists():
            raise UserError(f"checkpoint not found: {checkpoint}")
        selected = split_cases(split, all_phrasings) if split is not None else read_cases(cases)

        import torch

        from att3d.generate import Generator
        from att3d.shapes.classifier import default_classifier

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise UserError(f"--device must be cpu or cuda, got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine")
        generator = (
            Generator.default(device)
            if checkpoint is None
            else Generator.from_checkpoint(checkpoint, device=device)
        )
        if unknown_words is not None:
            generator.config.text.unknown_words = unknown_words
        classifier = default_classifier(device)

        def progress(i: int, case: EvalCase) -> None:
            typer.echo(f"[{i + 1}/{len(selected)}] {case.prompt}", err=True)

        results = evaluate_generator(generator, selected, settings, classifier, on_case=progress)
        means = mean_scores(results)
        print_table(results, means)
        if json_out is not None:
            report = {
                "model": {
                    "name": generator.name,
                    "model_hash": generator.model_hash,
                    "checkpoint": str(checkpoint) if checkpoint is not None else None,
                    "training_steps": int(generator.metadata.get("step", 0)),
                    "unknown_words": generator.config.text.unknown_words,
                },
                "source": {"split": split, "all_phrasings": all_phrasings}
                if split is not None
                else {"cases": str(cases)},
                "settings": {
                    "resolution": settings.resolution,
                    "views": settings.views,
                    "image_size": settings.image_size,
                    "n_points": settings.n_points,
                    "density_threshold": generator.config.mesh.density_threshold,
                    "color_depth": generator.config.mesh.color_depth,
                    "view_elevations": eval_cameras(settings.views).elevation.tolist(),
                },
                "cases": results,
                "means": means,
            }
            write_json_atomic(json_out, report)
            typer.echo(f"wrote {json_out}")


def print_table(results: Sequence[dict[str, Any]], means: dict[str, Any]) -> None:
    """Per-case rows, then the means per split and overall, as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: no wrapping at 80 columns
        console = Console(width=200)
    table = Table(title="ShapesWorld evaluation")
    for name, justify in (
        ("prompt", "left"),
        ("object", "left"),
        ("split", "left"),
        ("IoU", "right"),
        ("Chamfer", "right"),
        ("surface colour dist", "right"),
        ("surface colour", "left"),
        ("albedo std", "right"),
        ("albedo bias", "right"),
        ("R-prec", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in results:
        mark = "" if row["surface_color_right"] else " ✗"
        table.add_row(
            row["prompt"],
            f"{row['color']} {row['shape']}",
            row["split"],
            f"{row['iou']:.3f}",
            f"{row['chamfer']:.3f}",
            f"{row['surface_color_distance']:.3f}",
            (row["surface_color"] or "(no surface)") + mark,
            f"{row['albedo_std']:.3f}",
            f"{row['albedo_bias']:.3f}",
            f"{row['r_precision']:.2f}",
        )
    summaries = [(f"mean ({name})", m) for name, m in means["splits"].items()]
    summaries.append(("mean (all)", means["overall"]))
    for i, (label, m) in enumerate(summaries):
        table.add_row(
            label,
            f"{m['cases']} cases",
            "",
            f"{m['iou']:.3f}",
            f"{m['chamfer']:.3f}",
            f"{m['surface_color_distance']:.3f}",
            f"{m['surface_color_accuracy']:.0%} right",
            f"{m['albedo_std']:.3f}",
            f"{m['albedo_bias']:.3f}",
            f"{m['r_precision']:.2f}",
            end_section=i == len(summaries) - 1,
            style="bold" if i == len(summaries) - 1 else None,
        )
    console.print(table)
