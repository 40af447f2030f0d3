"""CPU time of prompt -> GLB with the bundled model (median of N runs, model loaded once).

    python scripts/bench_generate.py [--resolutions 64 128] [--repeats 5] [--checkpoint DIR]
                                     [--grid-query coarse_to_fine|dense]

Times ``Generator.generate`` + GLB serialization, and the GLB serialization alone (median of the same
runs); the text embedding is cached after the first call, as it is in the service.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import typing
from pathlib import Path

from att3d.config import GridQuery
from att3d.generate import Generator
from att3d.meshing.export import mesh_to_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument(
        "--grid-query",
        choices=typing.get_args(GridQuery),
        default=None,
        help="MeshConfig.grid_query (default: the model's)",
    )
    args = parser.parse_args()
    start = time.perf_counter()
    generator = Generator.from_checkpoint(args.checkpoint) if args.checkpoint else Generator.default()
    print(
        f"model {generator.name} ({generator.model_hash[:12]}) loaded in {time.perf_counter() - start:.2f} s"
    )
    generator.embed([args.prompt])  # warm the text encoder and its cache
    print(f"grid query: {args.grid_query or generator.config.mesh.grid_query}")
    for resolution in args.resolutions:
        config = dataclasses.replace(generator.config.mesh, resolution=resolution)
        if args.grid_query:
            config = dataclasses.replace(config, grid_query=args.grid_query)
        times, export_times, size = [], [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            mesh = generator.generate(args.prompt, config)
            meshed = time.perf_counter()
            size = len(mesh_to_bytes(mesh, "glb"))
            times.append(time.perf_counter() - start)
            export_times.append(time.perf_counter() - meshed)
        print(
            f"resolution {resolution}^3: median {statistics.median(times) * 1000:.0f} ms "
            f"(min {min(times) * 1000:.0f}, max {max(times) * 1000:.0f}, n={args.repeats}), "
            f"of which GLB export {statistics.median(export_times) * 1000:.0f} ms; "
            f"GLB {size / 1024:.0f} KiB, {len(mesh.vertices)} vertices"
        )


if __name__ == "__main__":
    main()
