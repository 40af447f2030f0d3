"""Throughput of the pure-PyTorch hash-grid encoding (points/s), new code against the previous one.

    python scripts/bench_encoding.py [--points 262144] [--repeats 5] [--prompts 4] [--bases 16]
                                     [--few-points 8192] [--threads N]

Three calls of the default ``EncodingConfig``, each timed with ``att3d.encoding.encode_levels`` and with
``reference_encode_levels`` (the implementation before issue #16) alternately in this process:

- ``query``: one grid (``F`` features per entry), no autograd, as meshing queries it;
- ``train mixed``: ``--prompts`` grids stacked, tables requiring grad, forward and forward+backward: the
  training render call (many points per prompt, ``AmortizedField`` mixes the tables first);
- ``train bases``: one table of ``--bases`` feature vectors per entry, ``--few-points`` points,
  forward+backward: the few-points call (``AmortizedField`` interpolates the K bases, then mixes).

Prints the median and the best of the repeats (the best is steadier on a loaded machine).
Times are wall time, or with ``--cpu-time`` the process's CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from att3d.config import EncodingConfig
from att3d.encoding import encode_levels, level_resolutions, level_table_sizes, reference_encode_levels

IMPLEMENTATIONS = {"new": encode_levels, "old": reference_encode_levels}


def cases(points: int, prompts: int, bases: int, few_points: int) -> dict[str, tuple[Callable, bool]]:
    """Name -> (call(encode) running one pass, whether it runs backward)."""
    config = EncodingConfig()
    resolutions, sizes = level_resolutions(config), level_table_sizes(config)
    f = config.features_per_level
    x = torch.rand(points, 3)
    prompt = torch.arange(prompts).repeat_interleave(points // prompts)
    one = [torch.randn(s, f) for s in sizes]
    stacked = [torch.randn(prompts * s, f, requires_grad=True) for s in sizes]
    wide = [torch.randn(s, bases * f, requires_grad=True) for s in sizes]
    few = x[:few_points]

    def query(encode):
        with torch.no_grad():
            encode(one, x, resolutions, sizes)

    def mixed_forward(encode):
        with torch.no_grad():
            encode(stacked, x[: len(prompt)], resolutions, sizes, prompt)

    def mixed_backward(encode):
        encode(stacked, x[: len(prompt)], resolutions, sizes, prompt).square().mean().backward()

    def bases_backward(encode):
        encode(wide, few, resolutions, sizes).square().mean().backward()

    return {
        "query (forward)": (query, len(x)),
        f"train mixed, {prompts} prompts (forward)": (mixed_forward, len(prompt)),
        f"train mixed, {prompts} prompts (fwd+bwd)": (mixed_backward, len(prompt)),
        f"train bases, K={bases} (fwd+bwd)": (bases_backward, len(few)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4, help="stacked grids of the training call")
    parser.add_argument("--bases", type=int, default=16, help="K basis grids of the few-points call")
    parser.add_argument(
        "--few-points", type=int, default=8192, help="points of the K-bases call (used below T/8 per prompt)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the process's CPU time instead of wall time (steadier on a shared machine; with "
        "--threads 1 it equals wall time on a quiet one)",
    )
    args = parser.parse_args()
    now = time.process_time if args.cpu_time else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EncodingConfig()
    print(
        f"levels={config.levels} F={config.features_per_level} log2T={config.log2_table_size} "
        f"points={args.points} threads={torch.get_num_threads()}; M points/s, median (best) of {args.repeats}"
    )
    print(f"  {'call':<36}{'new':>16}{'old':>16}{'new/old':>9}")
    for name, (run, points) in cases(args.points, args.prompts, args.bases, args.few_points).items():
        times: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
        for repeat in range(args.repeats + 1):  # the first round warms up allocators
            for impl, encode in IMPLEMENTATIONS.items():
                start = now()
                run(encode)
                if repeat:
                    times[impl].append(now() - start)
        rate = {impl: points / statistics.median(t) / 1e6 for impl, t in times.items()}
        best = {impl: points / min(t) / 1e6 for impl, t in times.items()}
        cells = "".join(f"{rate[impl]:>9.2f} ({best[impl]:.2f})" for impl in IMPLEMENTATIONS)
        print(f"  {name:<36}{cells}{rate['new'] / rate['old']:>8.2f}x")


if __name__ == "__main__":
    main()
