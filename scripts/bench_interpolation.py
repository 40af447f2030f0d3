"""How a model's blends between two ShapesWorld objects look, in numbers: a check that a training change
kept interpolation (``att3d interpolate``, ``POST /v1/interpolate``) working.

For each pair of training objects, the blend of their canonical prompts' embeddings at weights 0, 0.25,
0.5, 0.75 and 1 (``Generator.blend``) is queried on a grid; printed are the IoU of ``density > iso-level``
with each end object, the occupied volume and the mean albedo inside. A working blend moves from one end
to the other: its IoU with the first falls as its IoU with the second rises, and its colour moves between
theirs. Compare two checkpoints by running it on each.

    python scripts/bench_interpolation.py [--checkpoint DIR] [--resolution 48]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from att3d.generate import Generator
from att3d.shapes.metrics import grid_points, occupancy_iou, query_field
from att3d.shapes.world import parse_prompt

PAIRS = (
    ("a red cube", "a blue sphere"),
    ("a green torus", "a yellow cone"),
    ("a purple cylinder", "an orange capsule"),
    ("a gray pyramid", "a cyan sphere"),
)
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def blend_rows(generator: Generator, first: str, second: str, resolution: int) -> list[str]:
    """One line per blend weight of ``second``: IoU with each end, occupied volume, mean albedo inside."""
    points = grid_points(resolution, generator.config.field.bound).reshape(-1, 3)
    ends = [parse_prompt(first), parse_prompt(second)]
    if None in ends:
        raise ValueError(f"not a ShapesWorld prompt: {first!r} or {second!r}")
    truths = [obj.occupancy(points) for obj in ends]
    rows = []
    for weight in WEIGHTS:
        field = generator.prompt_field(generator.blend([first, second], [1.0 - weight, weight]))
        density, albedo = query_field(field, points.to(generator.device), 65536)
        occupied = density.cpu() > generator.config.mesh.density_threshold
        ious = [occupancy_iou(occupied, truth) for truth in truths]
        colour = albedo.cpu()[occupied].mean(dim=0) if occupied.any() else torch.zeros(3)
        volume = occupied.float().mean()
        rows.append(
            f"  weight {weight:4.2f}  IoU {ious[0]:.2f} / {ious[1]:.2f}  volume {volume:6.2%}"
            f"  albedo ({', '.join(f'{c:.2f}' for c in colour.tolist())})"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="checkpoint folder (default: the bundled model)")
    parser.add_argument("--resolution", type=int, default=48, help="grid points per axis")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    generator = Generator.from_checkpoint(args.checkpoint) if args.checkpoint else Generator.default()
    for first, second in PAIRS:
        print(f"{first} -> {second}")
        print("\n".join(blend_rows(generator, first, second, args.resolution)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
