"""Score a generator against ShapesWorld ground truth, prompt by prompt (what ``att3d eval`` runs).

Each case is a prompt paired with the object it should produce (``att3d.shapes.eval_cases``; any
phrasing can be scored against a named ground truth). Per case, the prompt's field is materialized once
and scored four ways:

- ``iou``: volumetric IoU against the exact occupancy (``metrics.volumetric_iou``);
- on the model's own surface (``surface_metrics``): ``chamfer`` to the exact surface,
  ``surface_color_distance`` / ``surface_color`` / ``surface_color_right`` (a misplaced or missing
  surface costs colour too), ``albedo_std`` (colour uniformity), ``surface_missing`` /
  ``surface_misplaced``;
- ``color_distance`` / ``nearest_color`` / ``color_correct``: the older colour score, albedo read on the
  TRUE surface (``metrics.color_error``): blind to where the model put its surface, kept for comparison
  with earlier figures;
- ``r_precision``: the fraction of rendered views the bundled classifier labels as the object's
  (shape, colour), the R-precision analogue of DESIGN.md §3; a view named background is a miss.

The renders for the classifier imitate its training data: 32×32 diffuse shading, white background,
the light ``make_cameras`` gives (camera direction lifted towards +z, no jitter), at the middle of the
training camera distance. Views are an orbit at 20° elevation plus a few other elevations
(:func:`eval_cameras`).

The core, :func:`score_query`, takes a plain query function, so the exact object itself
(:func:`reference_query`) runs through the same code and shows what a perfect score looks like.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:  # keeps `att3d --help` from importing torch
    from torch import Tensor

    from att3d.cameras import Cameras
    from att3d.config import RenderConfig
    from att3d.generate import Generator
    from att3d.meshing.query import QueryFn
    from att3d.shapes.classifier import ShapesClassifier
    from att3d.shapes.eval_cases import EvalCase
    from att3d.shapes.world import ShapeObject

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
    """Points sampled on the true surface (both colour scores and Chamfer's true-to-model term)."""

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


class ObjectScores(TypedDict):
    """Scores of one field against one object (:func:`score_query`)."""

    iou: float
    """Volumetric IoU of ``density > threshold`` against the exact occupancy."""
    chamfer: float
    """Symmetric mean Chamfer distance from the model's surface to the exact one (world units)."""
    surface_color_distance: float
    """Two-way mean RGB distance on the model's surface; misplaced or missing surface counts √3."""
    surface_color: str
    """World colour nearest to the median albedo on the model's surface (``""`` if it has none)."""
    surface_color_right: bool
    """``surface_color`` is the object's and at most half the true surface is missing."""
    albedo_std: float
    """RGB standard deviation of the albedo over the model's surface."""
    albedo_bias: float
    """RGB distance of the mean albedo over the model's surface to the true colour."""
    surface_missing: float
    """Fraction of the true surface with no model surface within the tolerance."""
    surface_misplaced: float
    """Fraction of the model's surface farther than the tolerance from the true surface."""
    color_distance: float
    """Older score: mean RGB distance between the albedo on the TRUE surface and the true colour."""
    nearest_color: str
    """Older score: world colour nearest to the mean albedo on the true surface."""
    color_correct: bool
    """Older score: ``nearest_color`` is the object's colour."""
    r_precision: float
    """Fraction of views the classifier labels as the object's (shape, colour)."""
    view_labels: list[str]
    """What the classifier saw in each view, as ``"<colour> <shape>"``."""


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
    color_depth: float = 0.0,
) -> ObjectScores:
    """Score one field ``query(points [N, 3]) -> (density [N], albedo [N, 3])`` against ``obj``.

    ``threshold`` is the occupancy iso-level (default ``metrics.DENSITY_THRESHOLD``, the mesh default);
    ``color_depth`` how deep below its surface the surface scores read the colour (the mesh's
    ``MeshConfig.color_depth``; 0: at the iso-surface);
    ``render_config`` sets samples per ray, ambient and normals of the renders (default
    ``RenderConfig()``; its background is replaced by white and its image size by ``settings``);
    ``classifier`` defaults to the bundled one.
    """
    import dataclasses

    import torch

    from att3d.config import RenderConfig
    from att3d.shapes.classifier import classify
    from att3d.shapes.metrics import DENSITY_THRESHOLD, color_error
    from att3d.shapes.surface_metrics import field_scores

    settings = settings or EvalSettings()
    threshold = DENSITY_THRESHOLD if threshold is None else threshold
    # The classifier only ever saw white backgrounds.
    render_config = dataclasses.replace(render_config or RenderConfig(), background=(1.0, 1.0, 1.0))
    with torch.no_grad():
        surface = field_scores(
            query,
            obj,
            settings.resolution,
            threshold,
            bound,
            settings.n_points,
            device=device,
            color_depth=color_depth,
        )
        colour = color_error(query, obj, settings.n_points, device=device)
        cameras = eval_cameras(settings.views).to(device)
        images = render_query(query, cameras, render_config, settings.image_size, bound)
        shapes, colours, _ = classify(images, classifier)
    # The R-precision of classifier.r_precision, computed from the labels it would recompute.
    hits = sum(s == obj.shape and c == obj.color for s, c in zip(shapes, colours, strict=True))
    return ObjectScores(
        iou=surface["iou"],
        chamfer=surface["chamfer"],
        surface_color_distance=surface["surface_color_distance"],
        surface_color=surface["surface_color"],
        surface_color_right=surface["surface_color_right"],
        albedo_std=surface["albedo_std"],
        albedo_bias=surface["albedo_bias"],
        surface_missing=surface["surface_missing"],
        surface_misplaced=surface["surface_misplaced"],
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

    Uses the model's mesh iso-level and colour depth, scene bound and render settings. ``on_case(i,
    case)`` is called before case ``i`` is scored (progress reporting).
    """
    import torch

    settings = settings or EvalSettings()
    config = generator.config
    written = [case.prompt.strip() for case in cases]
    read = [generator.read(prompt) for prompt in written]  # read once: embedded and reported below
    embeddings = generator.embed(read, as_written=True)
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
            color_depth=config.mesh.color_depth,
        )
        row = {"prompt": case.prompt, "shape": case.obj.shape, "color": case.obj.color, "split": case.split}
        if read[i] != written[i]:
            row["read_as"] = read[i]  # words the model was not trained on, read as ones it was
        results.append(row | scores)
    return results


MEANS = {
    "iou": "iou",
    "chamfer": "chamfer",
    "surface_color_distance": "surface_color_distance",
    "surface_color_accuracy": "surface_color_right",
    "albedo_std": "albedo_std",
    "albedo_bias": "albedo_bias",
    "color_distance": "color_distance",
    "color_accuracy": "color_correct",
    "r_precision": "r_precision",
}
"""Each averaged metric and the per-case score it is the mean of (booleans count as 0 or 1)."""
METRICS = tuple(MEANS)
"""The averaged metrics."""


def mean_scores(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``{"overall": means, "splits": {split: means}}``; each ``means`` has ``cases`` and :data:`METRICS`.

    A metric is averaged when every row has its score (rows from older reports may lack the surface ones).
    """

    def means(rows: Sequence[dict[str, Any]]) -> dict[str, float | int]:
        count = len(rows)
        out: dict[str, float | int] = {"cases": count}
        for name, key in MEANS.items():
            if all(key in r for r in rows):
                out[name] = sum(float(r[key]) for r in rows) / count
        return out

    if not results:
        raise ValueError("no results to average")
    by_split: dict[str, list[dict[str, Any]]] = {}
    for row in results:
        by_split.setdefault(row["split"], []).append(row)
    return {"overall": means(results), "splits": {name: means(rows) for name, rows in by_split.items()}}


__all__ = [
    "MEANS",
    "METRICS",
    "EvalSettings",
    "ObjectScores",
    "eval_cameras",
    "evaluate_generator",
    "mean_scores",
    "reference_query",
    "render_query",
    "score_query",
]
