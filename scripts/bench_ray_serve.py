"""Throughput of the Ray Serve backend with 1 vs 2 generation replicas, and a replica-kill run, on a local
Ray cluster started by this script (everything on 127.0.0.1).

For each ``--configs`` entry ``RxC`` (R replicas of C CPUs each; Ray gives each replica C torch threads) the
application is deployed, warmed up, then ``--requests`` distinct prompts are sent by ``--clients`` concurrent
clients at a fixed ``--resolution`` with every result cache off (``ATT3D_CACHE_BYTES=0``): requests/s,
latency p50/p95 and how many each replica answered. The kill run (``--kill``) sends the same load to two
replicas and kills the one that answered the ``--kill-after``-th response: it reports the status mix, the
replica calls tried again (``att3d_replica_retries_total``) and the seconds from the kill until Serve has
two replicas RUNNING and the replacement has answered. Example (figures in docs/SCALING.md)::

    python scripts/bench_ray_serve.py --configs 1x1,1x2,2x1 --clients 4 --requests 32 --resolution 64 --kill
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black")
SHAPES = ("cube", "sphere", "cone", "torus", "cylinder", "pyramid", "capsule")


def prompts(count: int, tag: str) -> list[str]:
    """Distinct prompts (each one a cache miss everywhere)."""
    return [f"a {COLOURS[i % 8]} {SHAPES[(i // 8) % 7]} {tag}{i}" for i in range(count)]


async def load(url: str, texts: list[str], clients: int, resolution: int, on_answer=None) -> dict:
    """``clients`` concurrent senders over ``texts``; status mix, latencies, requests/s, per replica."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    answers: list[tuple[int, float, str | None]] = []

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            text = queue.get_nowait()
            started = time.perf_counter()
            response = await http.post(f"{url}/v1/generate", json={"prompt": text, "resolution": resolution})
            answers.append(
                (response.status_code, time.perf_counter() - started, response.headers.get("x-replica"))
            )
            if on_answer is not None:
                on_answer(len(answers), response)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=300) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ok = sorted(latency for status, latency, _ in answers if status == 200)
    return {
        "requests": len(answers),
        "statuses": dict(Counter(status for status, _, _ in answers)),
        "requests_per_s": round(len(ok) / elapsed, 2),
        "p50_s": round(statistics.median(ok), 3) if ok else None,
        "p95_s": round(ok[int(0.95 * (len(ok) - 1))], 3) if ok else None,
        "per_replica": dict(Counter(replica for _, _, replica in answers if replica)),
        "seconds": round(elapsed, 1),
    }


def deploy(url: str, data: Path, replicas: int, cpus: float) -> None:
    from ray import serve

    from server.ray_serve.deployments import bind
    from server.ray_serve.options import RayServeOptions
    from server.settings import ServerSettings

    settings = ServerSettings(data_dir=data, cache_bytes=0, max_resolution=256)
    # A clean start: a rolling update would need the old and the new replicas' CPUs at once.
    serve.delete("att3d")
    serve.run(
        bind(RayServeOptions(replicas=replicas, replica_cpus=cpus), settings), name="att3d", route_prefix="/"
    )
    while httpx.get(f"{url}/readyz").status_code != 200:
        time.sleep(0.5)


def retries(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^att3d_replica_retries_total (\S+)$", text, re.M).group(1))


def running_replicas() -> int:
    from ray import serve

    states = serve.status().applications["att3d"].deployments["Generation"].replica_states
    return states.get("RUNNING", 0) if len(states) == 1 else 0


def kill_run(url: str, args: argparse.Namespace) -> dict:
    import ray

    killed: dict[str, object] = {}

    def on_answer(count: int, response: httpx.Response) -> None:
        if count == args.kill_after and response.headers.get("x-replica"):
            victim = response.headers["x-replica"]
            names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
            (name,) = [n for n in names if n.endswith(f"#{victim}")]
            ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            killed.update(replica=victim, at=time.perf_counter())

    before = retries(url)
    result = asyncio.run(load(url, prompts(args.requests, "kill"), args.clients, args.resolution, on_answer))
    result["retried_calls"] = retries(url) - before
    if "at" not in killed:
        return {**result, "error": "no replica was killed"}
    # Back: two replicas RUNNING and a replica other than the two seen before has answered.
    seen = set(result["per_replica"])
    round_ = 0
    while True:
        round_ += 1
        answered = asyncio.run(load(url, prompts(4, f"back{round_}."), 4, 16))["per_replica"]
        if running_replicas() == 2 and set(answered) - seen:
            break
        time.sleep(0.5)
    result["replica_back_after_s"] = round(time.perf_counter() - killed["at"], 1)  # type: ignore[operator]
    result["killed"] = killed["replica"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", default="1x1,1x2,2x1", help="RxC: R replicas of C CPUs, comma-separated")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=32, help="timed requests per configuration")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests after each deployment")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--kill", action="store_true", help="add the replica-kill run (2 replicas)")
    parser.add_argument("--kill-after", type=int, default=8, help="kill after this many answers")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    configs = [tuple(float(x) for x in c.split("x")) for c in args.configs.split(",")]
    needed = max([r * c for r, c in configs] + [2.0])
    ray.init(address="local", num_cpus=int(max(needed, os.cpu_count() or 1)), include_dashboard=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "args": vars(args),
        "runs": [],
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for replicas, cpus in configs:
                deploy(url, Path(tmp), int(replicas), cpus)
                asyncio.run(
                    load(url, prompts(args.warmup, f"warm{replicas}x{cpus}."), args.clients, args.resolution)
                )
                result = asyncio.run(
                    load(url, prompts(args.requests, f"{replicas}x{cpus}."), args.clients, args.resolution)
                )
                report["runs"].append({"replicas": int(replicas), "replica_cpus": cpus, **result})
                print(json.dumps(report["runs"][-1]), flush=True)
            if args.kill:
                deploy(url, Path(tmp), 2, 1.0)
                asyncio.run(load(url, prompts(args.warmup, "warmkill."), args.clients, args.resolution))
                report["kill"] = kill_run(url, args)
                print(json.dumps(report["kill"]), flush=True)
    finally:
        report["load_average_after"] = os.getloadavg()
        serve.shutdown()
        ray.shutdown()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
