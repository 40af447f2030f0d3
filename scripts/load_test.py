"""Load test for a running ``att3d serve``: N concurrent clients, each sending M generate requests, or a
burst of N requests at once, optionally with every core kept busy by other processes.

Prints the status-code mix, latency percentiles (p50/p95/p99, of all answers and of the 200s), throughput,
the load average before and after, and the server's resident memory (``process_resident_memory_bytes`` from
``/metrics``) before, after warm-up and at the end. Examples::

    att3d serve --port 8000 &
    python scripts/load_test.py --clients 8 --requests 5 --resolution 32
    # a burst of 200 requests at once; the same while a busy process runs on every core (the hog runs on
    # this machine: run it beside the server to measure CPU contention):
    python scripts/load_test.py --burst 200 --resolution 64
    python scripts/load_test.py --burst 200 --resolution 64 --cpu-hog
    # memory over many sequential generations (start the server with ATT3D_CACHE_BYTES=0 so the result
    # cache does not count as growth); growth is reported from the sample after the warm-up requests:
    python scripts/load_test.py --clients 1 --requests 1000 --resolution 16 --rss-every 100 --warmup 100

Under overload the server should answer only 200, 429 and 503 (refused at once, with ``Retry-After``): a 504
means a request was admitted and then missed its deadline.

Prompts are distinct per request (``--prompts distinct``, every request is a cache miss) or all the same
(``--prompts same``: after the first, every request is a cache hit, which measures the HTTP path alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import httpx

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("cube", "sphere", "cone", "torus", "cylinder", "pyramid", "capsule")


@dataclass
class Report:
    """What one run measured."""

    clients: int
    requests_per_client: int
    resolution: int
    prompts: str
    burst: int = 0
    cpu_hogs: int = 0
    total: int = 0
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    throughput_rps: float = 0.0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    ok_p50_ms: float = math.nan
    ok_p95_ms: float = math.nan
    ok_p99_ms: float = math.nan
    mean_generation_ms: float = math.nan
    cache_hits: int = 0
    retry_after_s: dict[str, float] = field(default_factory=dict)
    """Mean ``Retry-After`` of the 429s and 503s."""
    load_before: list[float] = field(default_factory=list)
    load_after: list[float] = field(default_factory=list)
    rss_before_mb: float = math.nan
    rss_warm_mb: float = math.nan
    """After the first ``--warmup`` requests: the baseline of ``rss_growth_after_warmup_pct``."""
    rss_after_mb: float = math.nan
    rss_growth_pct: float = math.nan
    rss_growth_after_warmup_pct: float = math.nan
    rss_trace_mb: list[float] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(q / 100.0 * len(ordered)), 1)
    return ordered[rank - 1]


def prompt_for(index: int, mode: str) -> str:
    """A distinct, plausible prompt per index (or one fixed prompt for ``same``)."""
    if mode == "same":
        return "a red cube"
    colour = COLOURS[index % len(COLOURS)]
    shape = SHAPES[(index // len(COLOURS)) % len(SHAPES)]
    return f"a {colour} {shape} number {index}"


async def server_rss_mb(client: httpx.AsyncClient) -> float:
    response = await client.get("/metrics")
    response.raise_for_status()
    match = re.search(r"^process_resident_memory_bytes ([0-9.e+]+)$", response.text, re.MULTILINE)
    if match is None:
        raise RuntimeError("the server's /metrics has no process_resident_memory_bytes (not Linux?)")
    return float(match.group(1)) / 2**20


def start_cpu_hogs(count: int) -> list[subprocess.Popen]:
    """``count`` processes that spin until killed (CPU contention for the server beside them)."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def stop_cpu_hogs(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


async def run(args: argparse.Namespace) -> Report:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    connections = max(args.clients, args.burst) + 2
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    report = Report(args.clients, args.requests, args.resolution, args.prompts, args.burst, args.cpu_hog)
    latencies: list[float] = []
    ok_latencies: list[float] = []
    generation_ms: list[float] = []
    statuses: Counter[str] = Counter()
    retry_after: dict[str, list[float]] = {}
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:
        ready = await client.get("/readyz")
        if ready.status_code != 200:
            raise SystemExit(f"server not ready: {ready.status_code} {ready.text}")
        report.rss_before_mb = await server_rss_mb(client)
        done = 0

        async def one_request(index: int) -> None:
            nonlocal done
            body = {"prompt": prompt_for(index, args.prompts), "resolution": args.resolution}
            started = time.perf_counter()
            try:
                response = await client.post("/v1/generate", json=body)
                status = str(response.status_code)
            except httpx.HTTPError as err:
                status = type(err).__name__
                response = None
            latencies.append((time.perf_counter() - started) * 1000.0)
            statuses[status] += 1
            if response is not None and response.status_code == 200:
                ok_latencies.append(latencies[-1])
                generation_ms.append(float(response.headers["x-generation-ms"]))
                report.cache_hits += response.headers.get("x-cache") == "hit"
            elif response is not None and "retry-after" in response.headers:
                retry_after.setdefault(status, []).append(float(response.headers["retry-after"]))
            done += 1
            if done == args.warmup:
                report.rss_warm_mb = await server_rss_mb(client)
            if args.rss_every and done % args.rss_every == 0:
                report.rss_trace_mb.append(round(await server_rss_mb(client), 1))
                print(f"  {done} requests: server RSS {report.rss_trace_mb[-1]:.1f} MiB", flush=True)

        async def one_client(client_index: int) -> None:
            for i in range(args.requests):
                await one_request(args.offset + client_index * args.requests + i)

        hogs = start_cpu_hogs(args.cpu_hog)
        try:
            if hogs:
                await asyncio.sleep(1.0)  # let the hogs take the cores before the first request
            report.load_before = [round(x, 2) for x in os.getloadavg()]
            started = time.perf_counter()
            if args.burst:
                await asyncio.gather(*(one_request(args.offset + i) for i in range(args.burst)))
            else:
                await asyncio.gather(*(one_client(c) for c in range(args.clients)))
            report.wall_s = time.perf_counter() - started
            report.load_after = [round(x, 2) for x in os.getloadavg()]
        finally:
            stop_cpu_hogs(hogs)
        report.rss_after_mb = await server_rss_mb(client)

    report.total = sum(statuses.values())
    report.ok = statuses.get("200", 0)
    report.statuses = dict(sorted(statuses.items()))
    report.errors = {k: v for k, v in report.statuses.items() if k != "200"}
    report.retry_after_s = {k: round(statistics.fmean(v), 1) for k, v in sorted(retry_after.items())}
    report.throughput_rps = report.total / report.wall_s if report.wall_s > 0 else math.nan
    report.p50_ms, report.p95_ms, report.p99_ms = (percentile(latencies, q) for q in (50, 95, 99))
    report.ok_p50_ms, report.ok_p95_ms, report.ok_p99_ms = (percentile(ok_latencies, q) for q in (50, 95, 99))
    report.mean_generation_ms = statistics.fmean(generation_ms) if generation_ms else math.nan
    report.rss_growth_pct = 100.0 * (report.rss_after_mb / report.rss_before_mb - 1.0)
    report.rss_growth_after_warmup_pct = 100.0 * (report.rss_after_mb / report.rss_warm_mb - 1.0)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the server")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=5, help="requests per client, one after another")
    parser.add_argument("--resolution", type=int, default=32, help="marching-cubes resolution requested")
    parser.add_argument("--prompts", choices=("distinct", "same"), default="distinct")
    parser.add_argument("--offset", type=int, default=0, help="first prompt index (new prompts per run)")
    parser.add_argument("--timeout", type=float, default=600.0, help="client timeout per request (s)")
    parser.add_argument("--burst", type=int, default=0, help="send N requests at once (instead of clients)")
    parser.add_argument(
        "--cpu-hog",
        type=int,
        nargs="?",
        const=os.cpu_count() or 1,
        default=0,
        help="keep K busy processes running during the test (default with the flag: one per core)",
    )
    parser.add_argument("--rss-every", type=int, default=0, help="sample the server's RSS every K requests")
    parser.add_argument(
        "--warmup", type=int, default=0, help="RSS growth is also reported from the sample after K requests"
    )
    parser.add_argument("--api-key", default="", help="sent as X-API-Key")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if args.clients < 1 or args.requests < 1 or args.burst < 0 or args.cpu_hog < 0 or args.warmup < 0:
        parser.error("--clients and --requests must be >= 1; --burst, --cpu-hog and --warmup >= 0")

    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
        return
    shape = (
        f"burst of {report.burst}"
        if report.burst
        else f"{report.clients} clients x {report.requests_per_client} requests"
    )
    hog = f", {report.cpu_hogs} CPU hogs" if report.cpu_hogs else ""
    late = report.statuses.get("504", 0)
    print(
        f"{shape}, resolution {report.resolution}, {report.prompts} prompts{hog}\n"
        f"  load avg   {report.load_before} before, {report.load_after} after\n"
        f"  requests   {report.total} ({report.ok} ok, cache hits {report.cache_hits})\n"
        f"  statuses   {report.statuses} (Retry-After mean s: {report.retry_after_s or 'none'})"
        f"{f'; {late} admitted then timed out (504)' if late else ''}\n"
        f"  latency    p50 {report.p50_ms:.0f} ms, p95 {report.p95_ms:.0f} ms, p99 {report.p99_ms:.0f} ms; "
        f"200s only: p50 {report.ok_p50_ms:.0f}, p95 {report.ok_p95_ms:.0f}, p99 {report.ok_p99_ms:.0f} ms "
        f"(server generation mean {report.mean_generation_ms:.0f} ms)\n"
        f"  throughput {report.throughput_rps:.2f} requests/s over {report.wall_s:.1f} s\n"
        f"  server RSS {report.rss_before_mb:.1f} MiB before, {report.rss_after_mb:.1f} MiB after "
        f"({report.rss_growth_pct:+.1f} %)"
        + (
            f"; {report.rss_warm_mb:.1f} MiB after {args.warmup} warm-up requests "
            f"({report.rss_growth_after_warmup_pct:+.1f} % since)"
            if args.warmup
            else ""
        )
    )


if __name__ == "__main__":
    main()
