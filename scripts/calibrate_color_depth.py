"""Pick a trained model's colour depth (``mesh.color_depth``) on its TRAINING objects.

The iso-level of a field trained by SDS lies in a faint outer layer that renders barely show, and SDS
leaves that layer's albedo lighter and noisier than the body's (docs/DESIGN_NOTES.md "Where a soft surface
is, and where its colour is read"). Meshes therefore read their colour ``color_depth`` below the surface,
along the inward normal. How thick that layer is depends on the training, so the depth is chosen again for
each model, as the iso-level is (``scripts/calibrate_iso_level.py``, run that one first: the depth is
measured from the model's iso-surface). For each depth this script takes the mean colour distance on the
model's own surface (``att3d.shapes.surface_metrics``, what ``att3d eval`` reports) over every training
object's canonical prompt; the best depth is the one to ship. Held-out objects are never looked at.

    python scripts/calibrate_color_depth.py [--checkpoint DIR] [--depths 0 0.02 0.03 ...] [--write OUT]

``--write OUT`` saves a copy of the checkpoint with the best depth in its config (and its shipped prompt
embeddings) to ``OUT``; the weights are unchanged, the model hash changes with the config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from att3d.generate import Generator
from att3d.shapes.metrics import grid_points, query_field, surface_points
from att3d.shapes.splits import load_splits
from att3d.shapes.surface_metrics import SURFACE_TOLERANCE, model_surface, score_surface

DEFAULT_DEPTHS = (0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08)
RESOLUTION = 64
"""The grid of ``att3d eval`` (``EvalSettings.resolution``)."""
TRUE_POINTS = 2048
"""Points on each true surface (``EvalSettings.n_points``)."""


def mean_scores_by_depth(
    generator: Generator, depths: list[float], resolution: int = RESOLUTION
) -> list[dict[str, float]]:
    """Mean surface colour distance, albedo std and albedo bias over the training objects at each depth."""
    config = generator.config
    objects = load_splits().train
    bound, level = config.field.bound, config.mesh.density_threshold
    points = grid_points(resolution, bound)
    tolerance = max(SURFACE_TOLERANCE, 2.0 * bound / resolution)
    keys = ("surface_color_distance", "albedo_std", "albedo_bias")
    totals = [dict.fromkeys(keys, 0.0) for _ in depths]
    with torch.no_grad():
        for obj in objects:
            field = generator.prompt_field(generator.embed([obj.canonical_prompt])[0])
            density, _ = query_field(field, points.to(generator.device), 65536)
            truth = surface_points(obj, TRUE_POINTS, 0)
            for total, depth in zip(totals, depths, strict=True):
                surface, albedo = model_surface(
                    field, density.cpu(), resolution, level, bound, device=generator.device, color_depth=depth
                )
                scores = score_surface(surface, albedo, obj, truth, tolerance, bound)
                for key in keys:
                    total[key] += float(scores[key]) / len(objects)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--depths", type=float, nargs="+", default=list(DEFAULT_DEPTHS))
    parser.add_argument("--write", type=Path, help="save the checkpoint with the best depth here")
    args = parser.parse_args(argv)
    if any(depth < 0 or depth > 0.2 for depth in args.depths):
        parser.error("depths must be in [0, 0.2] (world units)")
    generator = Generator.from_checkpoint(args.checkpoint) if args.checkpoint else Generator.default()
    current = generator.config.mesh.color_depth
    depths = sorted({*args.depths, current})
    means = mean_scores_by_depth(generator, depths)
    distances = [m["surface_color_distance"] for m in means]
    best = depths[min(range(len(depths)), key=distances.__getitem__)]
    for depth, m in zip(depths, means, strict=True):
        notes = [n for n, hit in (("current", depth == current), ("best", depth == best)) if hit]
        print(
            f"depth {depth:5.3f}  train colour distance {m['surface_color_distance']:.4f}"
            f"  albedo std {m['albedo_std']:.4f}  bias {m['albedo_bias']:.4f}  {', '.join(notes)}"
        )
    if args.write:
        out = generator.save_with_mesh(args.write, color_depth=best)
        print(f"wrote {out} with mesh.color_depth = {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
