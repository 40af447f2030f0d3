"""Throughput of the pure-PyTorch hash-grid encoding (points/s), forward and forward+backward.

    python scripts/bench_encoding.py [--points 262144] [--repeats 5] [--bases 1]

Prints the median over repeats for the default ``EncodingConfig`` (one table per level).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from att3d.config import EncodingConfig
from att3d.encoding import HashGridEncoding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=262144)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bases", type=int, default=1, help="feature vectors per entry (K basis grids)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EncodingConfig()
    encoding = HashGridEncoding(config, bases=args.bases)
    x = torch.rand(args.points, 3)
    forward, backward = [], []
    for _ in range(args.repeats + 1):  # the first run warms up allocators
        start = time.perf_counter()
        with torch.no_grad():
            encoding(x)
        forward.append(time.perf_counter() - start)
        start = time.perf_counter()
        encoding(x).square().mean().backward()
        backward.append(time.perf_counter() - start)
    fwd = args.points / statistics.median(forward[1:])
    fwd_bwd = args.points / statistics.median(backward[1:])
    print(
        f"levels={config.levels} F={config.features_per_level} log2T={config.log2_table_size} "
        f"bases={args.bases} "
        f"threads={torch.get_num_threads()}: forward {fwd / 1e6:.2f} M points/s, "
        f"forward+backward {fwd_bwd / 1e6:.2f} M points/s"
    )


if __name__ == "__main__":
    main()
