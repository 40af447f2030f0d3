"""Pick a trained model's mesh iso-level (``mesh.density_threshold``) on its TRAINING objects.

A field trained by SDS has no sharp surface: its density ramps up over a few hundredths of a unit, and
where along that ramp the true surface lies depends on the training (the opacity regularizer, the noise
schedule). The default level (``ln 2 / 0.1`` = 6.93) is a guess made before training. This script meshes
nothing: for each level it takes the volumetric IoU of ``density > level`` against the exact occupancy
of every training object (canonical prompt, 64³ grid, as ``att3d eval``) and prints the means; the best
level is the one to ship. Held-out objects are never looked at, so ``att3d eval --split heldout`` stays
a fair test of the chosen level.

    python scripts/calibrate_iso_level.py [--checkpoint DIR] [--levels 4 4.5 5 ...] [--write OUT]

``--write OUT`` saves a copy of the checkpoint with the best level in its config (and its shipped prompt
embeddings) to ``OUT``; the weights are unchanged, the model hash changes with the config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from att3d.generate import Generator
from att3d.shapes.metrics import grid_points, occupancy_iou, query_field
from att3d.shapes.splits import load_splits

DEFAULT_LEVELS = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.93, 8.0, 10.0)
RESOLUTION = 64


def mean_iou_by_level(generator: Generator, levels: list[float], resolution: int = RESOLUTION) -> list[float]:
    """Mean IoU over the training objects' canonical prompts at each level."""
    objects = load_splits().train
    points = grid_points(resolution, generator.config.field.bound)
    totals = torch.zeros(len(levels), dtype=torch.float64)
    with torch.no_grad():
        for obj in objects:
            field = generator.prompt_field(generator.embed([obj.canonical_prompt])[0])
            density, _ = query_field(field, points.to(generator.device), 65536)
            truth = obj.occupancy(points)
            totals += torch.tensor([occupancy_iou(density.cpu() > level, truth) for level in levels])
    return (totals / len(objects)).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--levels", type=float, nargs="+", default=list(DEFAULT_LEVELS))
    parser.add_argument("--write", type=Path, help="save the checkpoint with the best level here")
    args = parser.parse_args(argv)
    if any(level <= 0 for level in args.levels):
        parser.error("levels must be > 0")
    generator = Generator.from_checkpoint(args.checkpoint) if args.checkpoint else Generator.default()
    current = generator.config.mesh.density_threshold
    levels = sorted({*args.levels, current})
    means = mean_iou_by_level(generator, levels)
    best = levels[max(range(len(levels)), key=means.__getitem__)]
    for level, iou in zip(levels, means, strict=True):
        notes = [n for n, hit in (("current", level == current), ("best", level == best)) if hit]
        print(f"level {level:6.3f}  train IoU {iou:.4f}  {', '.join(notes)}")
    if args.write:
        out = generator.save_with_mesh(args.write, density_threshold=best)
        print(f"wrote {out} with mesh.density_threshold = {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
