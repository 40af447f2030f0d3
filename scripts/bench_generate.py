"""CPU time of prompt -> GLB with the bundled model, per stage, new code against the previous one.

    python scripts/bench_generate.py [--resolutions 64 128] [--repeats 5] [--checkpoint DIR]
                                     [--grid-query coarse_to_fine|dense] [--threads N] [--cpu-time]
                                     [--implementations kernel torch old]

Times ``Generator.generate`` + GLB serialization (median of N runs, model loaded once, the text embedding
cached after the first call as in the service) and, on the coarse-to-fine path, splits it into stages:
coarse pass, fine query (of which the active-sample mask), colour query, marching cubes, floaters and
normals, and the rest (trimesh, GLB export, embedding lookup, grid mixing). Every run is repeated in the
same process for each of ``--implementations``, alternating so machine noise hits all alike: ``kernel``
(the grid lookup in ``att3d.hashgrid_cpu``'s numba kernel), ``torch`` (the PyTorch lookup) and ``old``
(the implementations before issue #16: ``att3d.encoding.reference_encode_levels``, the 8-gather
active-sample mask, the out-of-place head, the union-find floater search and the copy-and-transform
``y_up``). Times are wall time, or with ``--cpu-time`` the process's CPU time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import statistics
import time
import typing
from pathlib import Path

import torch
import torch.nn.functional as F

from att3d import encoding
from att3d.config import GridQuery
from att3d.field import FieldHead, trunc_exp
from att3d.generate import Generator
from att3d.meshing import coarse_to_fine, components, export, query
from att3d.meshing.export import mesh_to_bytes
from att3d.meshing.grid import BlockRefinement

STAGES = (
    "coarse pass",
    "fine query",
    "  of which mask",
    "colour query",
    "marching cubes",
    "floaters, normals",
    "trimesh, GLB, other",
)


class StageClock:
    """Exclusive wall time per stage of functions wrapped with :meth:`wrap` (a nested stage's time is
    not counted again in the stage that called it)."""

    def __init__(self, now=time.perf_counter) -> None:
        self.now = now
        self.times: dict[str, float] = collections.defaultdict(float)
        self._stack: list[list] = []

    @contextlib.contextmanager
    def stage(self, name: str):
        start = self.now()
        self._stack.append([name, 0.0])
        try:
            yield
        finally:
            _, nested = self._stack.pop()
            elapsed = self.now() - start
            self.times[name] += elapsed - nested
            if self._stack:
                self._stack[-1][1] += elapsed

    def wrap(self, owner: object, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)


def eight_gather_samples(state: BlockRefinement) -> torch.Tensor:
    """``BlockRefinement.samples`` before issue #16: one full-grid gather per block pick."""
    mask = torch.zeros_like(state.queried)
    for pick in range(8):
        ix, iy, iz = (state.blocks[axis][pick >> axis & 1] for axis in range(3))
        mask |= state.active[ix[:, None, None], iy[None, :, None], iz[None, None, :]]
    return mask


def out_of_place_head(self: FieldHead, features: torch.Tensor, points: torch.Tensor):
    """``FieldHead.forward`` before issue #16."""
    raw = self.mlp(features)
    density_raw = raw[..., 0] + self.config.density_bias + self.blob(points)
    density = (
        trunc_exp(density_raw) if self.config.density_activation == "trunc_exp" else F.softplus(density_raw)
    )
    return density, torch.sigmoid(raw[..., 1:])


def copy_and_turn(mesh):
    """``export.y_up`` before issue #16's second pass: copy, transform, normals recomputed on export."""
    turned = mesh.copy()
    turned.apply_transform(export.Y_UP_FROM_Z_UP)
    return turned


NEW = (encoding.encode_levels, BlockRefinement.samples, FieldHead.forward)
NEW_HOST = (components._host_labels, export.y_up)
# name: (encoding, active-sample mask, head), BatchFieldQuery implementation, (floater labels, y_up)
IMPLEMENTATIONS = {
    "kernel": (NEW, "numba", NEW_HOST),
    "torch": (NEW, "torch", NEW_HOST),
    "old": (
        (encoding.reference_encode_levels, eight_gather_samples, out_of_place_head),
        "torch",
        (components.component_labels, copy_and_turn),
    ),
}


def use(implementation: str) -> None:
    (encode, samples, head), backend, (labels, turn) = IMPLEMENTATIONS[implementation]
    encoding.encode_levels = encode
    BlockRefinement.samples = samples
    FieldHead.forward = head
    coarse_to_fine.BatchFieldQuery = functools.partial(query.BatchFieldQuery, implementation=backend)
    components._host_labels = labels
    export.y_up = turn


def install_clock(clock: StageClock) -> None:
    mesher = coarse_to_fine.CoarseToFineMesher
    clock.wrap(mesher, "_fine_grids", "coarse pass")
    clock.wrap(mesher, "_fine_volumes", "fine query")
    clock.wrap(mesher, "_surface", "floaters, normals")
    clock.wrap(mesher, "_split", "trimesh, GLB, other")
    clock.wrap(coarse_to_fine, "marching_cubes", "marching cubes")
    # Inside _surface the only query is the colour one.
    original_query = coarse_to_fine.query_chunked

    def query_chunked(*args, **kwargs):
        name = "colour query" if clock._stack and clock._stack[-1][0] == "floaters, normals" else None
        if name is None:
            return original_query(*args, **kwargs)
        with clock.stage(name):
            return original_query(*args, **kwargs)

    coarse_to_fine.query_chunked = query_chunked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--prompt", default="a red cube")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the process's CPU time instead of wall time (steadier on a shared machine; with "
        "--threads 1 it equals wall time on a quiet one)",
    )
    parser.add_argument(
        "--implementations",
        nargs="+",
        choices=list(IMPLEMENTATIONS),
        default=list(IMPLEMENTATIONS),
        help="variants to alternate: kernel (numba grid lookup), torch (PyTorch lookup), old (before #16)",
    )
    parser.add_argument(
        "--grid-query",
        choices=typing.get_args(GridQuery),
        default=None,
        help="MeshConfig.grid_query (default: the model's)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    generator = Generator.from_checkpoint(args.checkpoint) if args.checkpoint else Generator.default()
    print(
        f"model {generator.name} ({generator.model_hash[:12]}) loaded in "
        f"{time.perf_counter() - start:.2f} s; torch threads {torch.get_num_threads()}"
    )
    generator.embed([args.prompt])  # warm the text encoder and its cache
    print(f"grid query: {args.grid_query or generator.config.mesh.grid_query}")
    clock = StageClock(time.process_time if args.cpu_time else time.perf_counter)
    install_clock(clock)
    implementations = args.implementations
    for resolution in args.resolutions:
        config = dataclasses.replace(generator.config.mesh, resolution=resolution)
        if args.grid_query:
            config = dataclasses.replace(config, grid_query=args.grid_query)
        totals = {name: [] for name in implementations}
        stages = {name: collections.defaultdict(list) for name in implementations}
        meshes = {}
        for repeat in range(args.repeats + 1):  # the first round warms up allocators and caches
            for name in implementations:
                use(name)
                # The mask is built inside the fine query; its time is reported apart and added back.
                clock.wrap(BlockRefinement, "samples", "  of which mask")
                clock.times.clear()
                start = clock.now()
                with clock.stage("trimesh, GLB, other"):
                    mesh = generator.generate(args.prompt, config)
                    size = len(mesh_to_bytes(mesh, "glb"))
                if repeat:
                    totals[name].append(clock.now() - start)
                    clock.times["fine query"] += clock.times["  of which mask"]
                    for stage in STAGES:
                        stages[name][stage].append(clock.times.get(stage, 0.0))
                meshes[name] = (mesh, size)
        print(f"\nresolution {resolution}^3 (median of {args.repeats}, ms):")
        print(f"  {'stage':<20}" + "".join(f"{name:>9}" for name in implementations))
        for stage in STAGES:
            row = "".join(
                f"{statistics.median(stages[name][stage]) * 1000:>9.0f}" for name in implementations
            )
            print(f"  {stage:<20}{row}")
        row = "".join(f"{statistics.median(totals[name]) * 1000:>9.0f}" for name in implementations)
        print(f"  {'total':<20}{row}")
        first = implementations[0]
        mesh, size = meshes[first]
        print(f"  GLB {size / 1024:.0f} KiB, {len(mesh.vertices)} vertices, {len(mesh.faces)} faces")
        for name in implementations[1:]:
            other = meshes[name][0]
            same = (
                mesh.vertices.shape == other.vertices.shape
                and (mesh.vertices == other.vertices).all()
                and mesh.faces.shape == other.faces.shape
                and (mesh.faces == other.faces).all()
            )
            speedup = statistics.median(totals[name]) / statistics.median(totals[first])
            print(f"  {name}/{first} total {speedup:.2f}x; meshes identical: {bool(same)}")


if __name__ == "__main__":
    main()
