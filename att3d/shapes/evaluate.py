"""``att3d eval``: score a generator against ShapesWorld ground truth, prompt by prompt.

Each case is a prompt paired with the object it should produce (any phrasing can be scored against a
named ground truth). Per case, the prompt's field is materialized once and scored three ways:

- ``iou``: volumetric IoU against the exact occupancy (``metrics.volumetric_iou``);
- ``color_distance`` / ``nearest_color`` / ``color_correct``: albedo on the true surface
  (``metrics.color_error``);
- ``r_precision``: the fraction of rendered views the bundled classifier labels as the object's
  (shape, colour), the R-precision analogue of DESIGN.md §3.

The renders for the classifier imitate its training data: 32×32 diffuse shading, white background,
the light ``make_cameras`` gives (camera direction lifted towards +z, no jitter), at the middle of the
training camera distance. Views are an orbit at 20° elevation plus a few other elevations
(:func:`eval_cameras`).

The core, :func:`score_query`, takes a plain query function, so the exact object itself
(:func:`reference_query`) runs through the same code and shows what a perfect score looks like.

Case files are JSON Lines, one ``{"prompt": ..., "shape": ..., "color": ...}`` object per line (blank
lines are skipped). A bad line is reported as ``FILE:LINE: what`` and nothing is scored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

import typer

from att3d.atomic import write_json_atomic

if TYPE_CHECKING:  # keeps `att3d --help` from importing torch
    from torch import Tensor

    from att3d.cameras import Cameras
    from att3d.config import RenderConfig
    from att3d.generate import Generator
    from att3d.mesh import QueryFn
    from att3d.shapes.classifier import ShapesClassifier
    from att3d.shapes.world import ShapeObject, Splits

SPLIT_CHOICES = ("train", "heldout", "all")
"""Values of ``--split``."""
CASE_KEYS = ("prompt", "shape", "color")
"""Keys of a case-file line (all required, no others)."""
ORBIT_ELEVATION = 20.0
"""Elevation (degrees) of the main orbit of views."""
EXTRA_ELEVATIONS = (0.0, 45.0)
"""Elevations of the extra views, one per four views (at most one each), inside the training range."""
EVAL_DISTANCE = 2.8
"""Camera distance: the middle of the training range ``CameraSamplingConfig.distance``."""
EVAL_FOVY = 40.0
"""Vertical field of view (degrees), as in training."""


@dataclass
class EvalSettings:
    """How each case is scored (``att3d eval`` options)."""

    resolution: int = 64
    """Side of the grid the volumetric IoU is computed on (cells over ``[-bound, bound]^3``)."""
    views: int = 8
    """Rendered views per case for the R-precision analogue."""
    image_size: int = 32
    """Side of each rendered view in pixels (the classifier works at 32)."""
    n_points: int = 2048
    """Points on the true surface where the albedo is compared with the true colour."""

    def __post_init__(self) -> None:
        for name, low, high in (
            ("resolution", 8, 256),
            ("views", 1, 64),
            ("image_size", 8, 256),
            ("n_points", 1, 1_000_000),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class EvalCase:
    """A prompt and the object it should produce."""

    prompt: str
    """The text given to the generator."""
    obj: ShapeObject
    """The ground truth it is scored against."""
    split: str
    """``train`` or ``heldout`` by the bundled split file (``other`` if the object is in neither)."""


class ObjectScores(TypedDict):
    """Scores of one field against one object (:func:`score_query`)."""

    iou: float
    """Volumetric IoU of ``density > threshold`` against the exact occupancy."""
    color_distance: float
    """Mean RGB distance between the albedo on the true surface and the true colour."""
    nearest_color: str
    """World colour nearest to the mean surface albedo."""
    color_correct: bool
    """``nearest_color`` is the object's colour."""
    r_precision: float
    """Fraction of views the classifier labels as the object's (shape, colour)."""
    view_labels: list[str]
    """What the classifier saw in each view, as ``"<colour> <shape>"``."""


class CaseFileError(ValueError):
    """A case file cannot be read; the message is ``FILE:LINE: what`` (or ``FILE: what``)."""


# --------------------------------------------------------------------------------------------------
# Scoring one field
# --------------------------------------------------------------------------------------------------


def eval_cameras(views: int, distance: float = EVAL_DISTANCE, fovy: float = EVAL_FOVY) -> Cameras:
    """``views`` cameras: an orbit at :data:`ORBIT_ELEVATION` plus one view per four at the extra elevations.

    The extra views sit half-way between orbit azimuths, spread around the object, so a shape that only
    looks right from the main orbit (e.g. an azimuth-averaged cube seen at 20°) is still caught.
    """
    from att3d.cameras import Cameras, make_cameras, orbit_cameras

    if not isinstance(views, int) or views < 1:
        raise ValueError(f"views must be a positive integer, got {views!r}")
    extra = min(views // 4, len(EXTRA_ELEVATIONS))
    orbit = orbit_cameras(views - extra, ORBIT_ELEVATION, distance, fovy)
    if extra == 0:
        return orbit
    half_step = 180.0 / (views - extra)
    azimuths = [half_step + 360.0 * i / extra for i in range(extra)]
    return Cameras.cat([orbit, make_cameras(list(EXTRA_ELEVATIONS[:extra]), azimuths, distance, fovy)])


def render_query(
    query: QueryFn,
    cameras: Cameras,
    render_config: RenderConfig,
    image_size: int,
    bound: float = 1.0,
) -> Tensor:
    """Diffuse renders ``[V, 3, S, S]`` of one field from ``cameras``, without sample jitter."""
    from att3d.render import render

    def field_fn(points: Tensor) -> tuple[Tensor, Tensor]:  # [1, M, 3] -> [1, M], [1, M, 3]
        density, albedo = query(points.reshape(-1, 3))
        return density.reshape(points.shape[:-1]), albedo.reshape(points.shape)

    out = render(
        field_fn,
        cameras,
        render_config,
        num_prompts=1,
        shading="diffuse",
        image_size=image_size,
        perturb=False,
        bound=bound,
    )
    return out.rgb.clamp(0.0, 1.0)


def score_query(
    query: QueryFn,
    obj: ShapeObject,
    settings: EvalSettings | None = None,
    *,
    threshold: float | None = None,
    bound: float = 1.0,
    render_config: RenderConfig | None = None,
    classifier: ShapesClassifier | None = None,
    device: str = "cpu",
) -> ObjectScores:
    """Score one field ``query(points [N, 3]) -> (density [N], albedo [N, 3])`` against ``obj``.

    ``threshold`` is the occupancy iso-level (default ``metrics.DENSITY_THRESHOLD``, the mesh default);
    ``render_config`` sets samples per ray, ambient and normals of the renders (default
    ``RenderConfig()``; its background is replaced by white and its image size by ``settings``);
    ``classifier`` defaults to the bundled one.
    """
    import dataclasses

    import torch

    from att3d.config import RenderConfig
    from att3d.shapes.classifier import classify
    from att3d.shapes.metrics import DENSITY_THRESHOLD, color_error, volumetric_iou

    settings = settings or EvalSettings()
    threshold = DENSITY_THRESHOLD if threshold is None else threshold
    # The classifier only ever saw white backgrounds.
    render_config = dataclasses.replace(render_config or RenderConfig(), background=(1.0, 1.0, 1.0))
    with torch.no_grad():
        iou = volumetric_iou(query, obj, settings.resolution, threshold, bound, device=device)
        colour = color_error(query, obj, settings.n_points, device=device)
        cameras = eval_cameras(settings.views).to(device)
        images = render_query(query, cameras, render_config, settings.image_size, bound)
        shapes, colours, _ = classify(images, classifier)
    # The R-precision of classifier.r_precision, computed from the labels it would recompute.
    hits = sum(s == obj.shape and c == obj.color for s, c in zip(shapes, colours, strict=True))
    return ObjectScores(
        iou=float(iou),
        color_distance=float(colour["mean_rgb_distance"]),
        nearest_color=colour["nearest_color_name"],
        color_correct=bool(colour["correct"]),
        r_precision=hits / len(shapes),
        view_labels=[f"{c} {s}" for s, c in zip(shapes, colours, strict=True)],
    )


def reference_query(
    obj: ShapeObject, width: float = 0.004, inside_density: float = 1000.0, threshold: float | None = None
) -> QueryFn:
    """The exact object as a smooth field, for calibrating the scores (it should score ~1).

    Density rises from ``threshold`` (default ``metrics.DENSITY_THRESHOLD``) on the true surface to
    ``inside_density`` a few ``width`` inside, as a sigmoid of the signed distance: so the occupancy
    level set is the true surface, and the ramp gives the renderer's finite-difference normals
    something to differentiate (a hard step has no gradient one normal step inside, and renders flat).
    """
    import math

    import torch

    from att3d.shapes.metrics import DENSITY_THRESHOLD

    threshold = DENSITY_THRESHOLD if threshold is None else threshold
    if not 0.0 < threshold < inside_density:
        raise ValueError(f"need 0 < threshold < inside_density, got {threshold} and {inside_density}")
    # sigmoid(-offset / width) = threshold / inside_density at sdf = 0.
    offset = width * math.log(inside_density / threshold - 1.0)

    def query(points: Tensor) -> tuple[Tensor, Tensor]:
        density = inside_density * torch.sigmoid(-(obj.sdf(points) + offset) / width)
        return density, obj.rgb.to(points.device).expand(*points.shape[:-1], 3)

    return query


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------


def split_of(obj: ShapeObject, splits: Splits) -> str:
    """``train``, ``heldout`` or ``other``: where ``obj`` sits in ``splits``."""
    if obj in splits.train:
        return "train"
    if obj in splits.heldout:
        return "heldout"
    return "other"


def split_cases(split: str, all_phrasings: bool = False, splits: Splits | None = None) -> list[EvalCase]:
    """Cases for the objects of a split (``train``, ``heldout`` or ``all`` = both), train first.

    Each object contributes its canonical prompt, or with ``all_phrasings`` every phrasing it has.
    """
    from att3d.shapes.world import load_splits

    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    splits = splits or load_splits()
    groups = {"train": splits.train, "heldout": splits.heldout}
    names = ("train", "heldout") if split == "all" else (split,)
    return [
        EvalCase(prompt, obj, name)
        for name in names
        for obj in groups[name]
        for prompt in (obj.prompts if all_phrasings else [obj.canonical_prompt])
    ]


def read_cases(path: str | Path, splits: Splits | None = None) -> list[EvalCase]:
    """Read a JSON Lines case file; raises :class:`CaseFileError` at the first bad line.

    Every line must be an object with exactly the keys ``prompt``, ``shape``, ``color``: a non-empty
    prompt and a shape and colour named as in the world (``SHAPE_NAMES``, ``COLOR_NAMES``).
    """
    from att3d.limits import PromptError, validate_prompt
    from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, ShapeObject, load_splits

    path = Path(path)
    if not path.exists():
        raise CaseFileError(f"{path}: case file not found")
    if not path.is_file():
        raise CaseFileError(f"{path}: not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise CaseFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    splits = splits or load_splits()
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise CaseFileError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(entry, dict):
            raise CaseFileError(f"{where}: expected a JSON object, got {_json_type(entry)}")
        missing = [key for key in CASE_KEYS if key not in entry]
        if missing:
            raise CaseFileError(f"{where}: missing key(s) {', '.join(missing)} (need {', '.join(CASE_KEYS)})")
        unknown = sorted(set(entry) - set(CASE_KEYS))
        if unknown:
            raise CaseFileError(
                f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(CASE_KEYS)})"
            )
        for key in CASE_KEYS:
            if not isinstance(entry[key], str):
                raise CaseFileError(f"{where}: {key!r} must be a string, got {_json_type(entry[key])}")
        try:
            prompt = validate_prompt(entry["prompt"])
        except PromptError as err:
            raise CaseFileError(f"{where}: {err}") from None
        if entry["shape"] not in SHAPE_NAMES:
            raise CaseFileError(
                f"{where}: unknown shape {entry['shape']!r} (known: {', '.join(SHAPE_NAMES)})"
            )
        if entry["color"] not in COLOR_NAMES:
            raise CaseFileError(
                f"{where}: unknown color {entry['color']!r} (known: {', '.join(COLOR_NAMES)})"
            )
        obj = ShapeObject(entry["shape"], entry["color"])
        cases.append(EvalCase(prompt, obj, split_of(obj, splits)))
    if not cases:
        raise CaseFileError(f"{path}: no cases (the file is empty)")
    return cases


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# --------------------------------------------------------------------------------------------------
# Scoring a generator and summarizing
# --------------------------------------------------------------------------------------------------


def evaluate_generator(
    generator: Generator,
    cases: Sequence[EvalCase],
    settings: EvalSettings | None = None,
    classifier: ShapesClassifier | None = None,
    on_case: Callable[[int, EvalCase], None] | None = None,
) -> list[dict[str, Any]]:
    """Per-case results: ``prompt``, ``shape``, ``color``, ``split`` and the :class:`ObjectScores`.

    Uses the model's mesh iso-level, scene bound and render settings. ``on_case(i, case)`` is called
    before case ``i`` is scored (progress reporting).
    """
    import torch

    settings = settings or EvalSettings()
    config = generator.config
    embeddings = generator.embed([case.prompt for case in cases])
    results = []
    for i, (case, embedding) in enumerate(zip(cases, embeddings, strict=True)):
        if on_case is not None:
            on_case(i, case)
        with torch.no_grad():
            field = generator.prompt_field(embedding)
        scores = score_query(
            field,
            case.obj,
            settings,
            threshold=config.mesh.density_threshold,
            bound=config.field.bound,
            render_config=config.render,
            classifier=classifier,
            device=str(generator.device),
        )
        results.append(
            {"prompt": case.prompt, "shape": case.obj.shape, "color": case.obj.color, "split": case.split}
            | scores
        )
    return results


METRICS = ("iou", "color_distance", "color_accuracy", "r_precision")
"""The averaged metrics (``color_accuracy`` is the mean of ``color_correct``)."""


def mean_scores(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"overall": means, "splits": {split: means}}``; each ``means`` has :data:`METRICS` and ``cases``."""

    def means(rows: Sequence[dict[str, Any]]) -> dict[str, float | int]:
        count = len(rows)
        return {
            "cases": count,
            "iou": sum(r["iou"] for r in rows) / count,
            "color_distance": sum(r["color_distance"] for r in rows) / count,
            "color_accuracy": sum(float(r["color_correct"]) for r in rows) / count,
            "r_precision": sum(r["r_precision"] for r in rows) / count,
        }

    if not results:
        raise ValueError("no results to average")
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in results:
        by_split.setdefault(row["split"], []).append(row)
    return {"overall": means(results), "splits": {name: means(rows) for name, rows in by_split.items()}}


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
        ("colour dist", "right"),
        ("nearest colour", "left"),
        ("R-prec", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in results:
        mark = "" if row["color_correct"] else " ✗"
        table.add_row(
            row["prompt"],
            f"{row['color']} {row['shape']}",
            row["split"],
            f"{row['iou']:.3f}",
            f"{row['color_distance']:.3f}",
            row["nearest_color"] + mark,
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
            f"{m['color_distance']:.3f}",
            f"{m['color_accuracy']:.0%} right",
            f"{m['r_precision']:.2f}",
            end_section=i == len(summaries) - 1,
            style="bold" if i == len(summaries) - 1 else None,
        )
    console.print(table)


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def eval_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", help="Checkpoint directory (default: the bundled model)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Score the canonical prompts of a split: train, heldout or all."),
    ] = None,
    cases: Annotated[
        Path | None,
        typer.Option("--cases", help='JSON Lines file of {"prompt": ..., "shape": ..., "color": ...} cases.'),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write per-case and mean metrics to this JSON file.")
    ] = None,
    all_phrasings: Annotated[
        bool, typer.Option("--all-phrasings", help="With --split: every phrasing of each object.")
    ] = False,
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="IoU grid side, 8-256.")] = 64,
    views: Annotated[int, typer.Option("--views", help="Rendered views per case for R-precision.")] = 8,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of each view in pixels.")] = 32,
    points: Annotated[int, typer.Option("--points", help="Surface samples for the colour score.")] = 2048,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu or cuda (default: cuda if available).")
    ] = None,
) -> None:
    """Score a generator against ShapesWorld ground truth: IoU, colour and R-precision per prompt."""
    from att3d.cli import UserError, user_errors

    with user_errors():
        # Validate everything before loading a model, so a bad input fails fast and writes nothing.
        settings = EvalSettings(resolution=resolution, views=views, image_size=image_size, n_points=points)
        if (split is None) == (cases is None):
            raise UserError("give exactly one of --split (train, heldout, all) or --cases FILE.jsonl")
        if cases is not None and all_phrasings:
            raise UserError("--all-phrasings applies to --split only (a case file lists its phrasings)")
        if json_out is not None and json_out.is_dir():
            raise UserError(f"--json {json_out} is a directory")
        if json_out is not None and json_out.parent.exists() and not json_out.parent.is_dir():
            raise UserError(f"--json {json_out}: {json_out.parent} is not a directory")
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
                    "view_elevations": eval_cameras(settings.views).elevation.tolist(),
                },
                "cases": results,
                "means": means,
            }
            write_json_atomic(json_out, report)
            typer.echo(f"wrote {json_out}")


__all__ = [
    "CASE_KEYS",
    "METRICS",
    "SPLIT_CHOICES",
    "CaseFileError",
    "EvalCase",
    "EvalSettings",
    "ObjectScores",
    "eval_cameras",
    "eval_command",
    "evaluate_generator",
    "mean_scores",
    "print_table",
    "read_cases",
    "reference_query",
    "render_query",
    "score_query",
    "split_cases",
    "split_of",
]
