"""Cost of one result-cache operation: the in-process LRU against Redis (``ATT3D_CACHE_URL``), per body size.

Starts a throwaway ``redis-server`` on a free loopback port (or uses ``--url``), then times, alternating the
two backends in one process so that machine noise hits both alike: ``get`` of a stored result (a hit),
``put``, and a claim + release (what every miss adds with Redis). Prints the median and p95 in microseconds.

    python scripts/bench_result_cache.py --sizes 262144 2097152 --repeats 300
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from server.cache.redis_cache import RedisResultCache
from server.result_cache import GenerationResult, ResultCache, ResultStore


def _start_redis(directory: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(command, cwd=directory, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def _time(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1e6


def _one_round(cache: ResultStore, key: str, result: GenerationResult) -> dict[str, float]:
    """Microseconds of a put, a get (a hit) and a claim + release of ``key``."""
    return {
        "put": _time(lambda: cache.put(key, result)),
        "get": _time(lambda: cache.get(key)),
        "claim+release": _time(lambda: (cache.claim(key + "c"), cache.release(key + "c"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="", help="an existing Redis (default: start one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[262144, 2097152], help="body bytes")
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    process = None
    with tempfile.TemporaryDirectory() as directory:
        url = args.url
        if not url:
            if shutil.which("redis-server") is None:
                raise SystemExit("redis-server is not installed; pass --url")
            process, url = _start_redis(directory)
        budget = 1 << 30
        redis_cache = RedisResultCache(url, budget, prefix="bench:")
        backends: dict[str, ResultStore] = {"lru": ResultCache(budget), "redis": redis_cache}
        try:
            for size in args.sizes:
                result = GenerationResult(b"\x01" * size, "model/gltf-binary", "m", "h" * 64, 1.0)
                times: dict[tuple[str, str], list[float]] = {}
                for i in range(args.repeats):
                    for name, cache in backends.items():
                        for op, seconds in _one_round(cache, f"{size}-{i}", result).items():
                            times.setdefault((name, op), []).append(seconds)
                for (name, op), values in times.items():
                    values.sort()
                    p95 = values[int(0.95 * (len(values) - 1))]
                    median = statistics.median(values)
                    print(f"{size:>9} B  {name:5} {op:13} median {median:9.1f} us  p95 {p95:9.1f} us")
        finally:
            redis_cache.close()
            if process is not None:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    main()
