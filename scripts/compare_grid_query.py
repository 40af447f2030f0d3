"""Coarse-to-fine vs dense grid queries on every ShapesWorld prompt: same surface, and how much faster.

    python scripts/compare_grid_query.py [--resolution 128] [--checkpoint DIR] [--json out.json]

For each train and held-out prompt, meshes the bundled model (or ``--checkpoint``) with
``MeshConfig.grid_query=coarse_to_fine`` and ``dense`` through ``Generator.mesh`` and prints the vertex and
face counts, the largest distance between the sorted vertex coordinates (when the counts agree), the
relative volume difference and both times (mesh only, no export).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from att3d.atomic import write_json_atomic
from att3d.generate import Generator
from att3d.shapes.splits import load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the per-prompt rows here")
    args = parser.parse_args()
    generator = Generator.from_checkpoint(args.checkpoint) if args.checkpoint else Generator.default()
    splits = load_splits()
    prompts = [o.canonical_prompt for o in (*splits.train, *splits.heldout)]
    config = dataclasses.replace(generator.config.mesh, resolution=args.resolution)
    rows = []
    with torch.no_grad():
        for prompt, embedding in zip(prompts, generator.embed(prompts), strict=True):
            meshes, seconds = {}, {}
            for grid_query in ("coarse_to_fine", "dense"):
                start = time.perf_counter()
                meshes[grid_query] = generator.mesh(
                    embedding, dataclasses.replace(config, grid_query=grid_query)
                )
                seconds[grid_query] = time.perf_counter() - start
            fast, dense = meshes["coarse_to_fine"], meshes["dense"]
            same_counts = len(fast.vertices) == len(dense.vertices)
            row = {
                "prompt": prompt,
                "vertices": [len(fast.vertices), len(dense.vertices)],
                "faces": [len(fast.faces), len(dense.faces)],
                "max_vertex_distance": float(
                    np.abs(np.sort(fast.vertices, 0) - np.sort(dense.vertices, 0)).max()
                )
                if same_counts
                else None,
                "relative_volume_difference": abs(fast.volume - dense.volume) / abs(dense.volume),
                "seconds": [seconds["coarse_to_fine"], seconds["dense"]],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    equal = sum(r["vertices"][0] == r["vertices"][1] for r in rows)
    off_by = max(abs(r["vertices"][0] - r["vertices"][1]) for r in rows)
    distances = [r["max_vertex_distance"] for r in rows if r["max_vertex_distance"] is not None]
    print(
        f"{len(rows)} prompts at {args.resolution}^3: equal vertex counts {equal}/{len(rows)} "
        f"(largest difference {off_by}); matched vertices within {max(distances):.2g}; "
        f"volume within {max(r['relative_volume_difference'] for r in rows):.2g} relative; median time "
        f"coarse_to_fine {statistics.median(r['seconds'][0] for r in rows):.2f} s, "
        f"dense {statistics.median(r['seconds'][1] for r in rows):.2f} s"
    )
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
