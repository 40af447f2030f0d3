"""The Ray Train job runner on this machine: the tiny training job with 1 and with 2 gloo workers.

    python scripts/bench_ray_train.py [--steps 40] [--repeats 1]

Starts a one-node cluster (``ray start --head --block``, every port on 127.0.0.1, its own temp folder), then
runs :func:`att3d.training.ray_train.train` on the tiny model of ``configs/tiny_test.yaml`` (plain albedo
renders, one prompt per worker and step, four prompts) with ``workers=1`` and ``workers=2``, alternately,
each into a fresh run folder. Reports the wall time of a call (Ray Train's worker start-up, the text
encoder and the prior included) and the steady throughput between the 5th and the last step (steps/s,
and prompts/s = steps/s x workers), read from the progress callback.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from att3d.config import TrainConfig, apply_overrides, from_dict
from att3d.training.ray_train import train

TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny_test.yaml"
PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(temp: str, cpus: int) -> subprocess.Popen[bytes]:
    gcs = _free_port()
    os.environ.update(
        RAY_ADDRESS=f"127.0.0.1:{gcs}",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # Ray binds its services to 127.0.0.1 only
    )
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", f"--port={gcs}"]
    command += ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", f"--num-cpus={cpus}", "--num-gpus=0"]
    command += ["--include-dashboard=false", f"--dashboard-agent-listen-port={_free_port()}"]
    log = open(Path(temp) / "ray-start.log", "wb")  # noqa: SIM115 (lives as long as the cluster)
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def config(steps: int, workers: int) -> TrainConfig:
    data = {"model": yaml.safe_load(TINY.read_text())["model"]}
    overrides = [
        f"steps={steps}",
        f"workers={workers}",
        "device=cpu",
        "prompts_per_step=1",
        "albedo_steps=100000",
    ]
    overrides += [
        "interp_prob=0",
        "log_every=0",
        "preview_every=0",
        "checkpoint_every=0",
        "progress_bar=false",
    ]
    overrides += [f"prompts.prompts=[{', '.join(PROMPTS)}]"]
    return from_dict(TrainConfig, apply_overrides(data, overrides))


def run_once(steps: int, workers: int, out: Path) -> dict[str, float]:
    seen: dict[int, float] = {}
    started = time.perf_counter()
    result = train(
        config(steps, workers),
        out,
        progress_callback=lambda step, total, loss: seen.setdefault(step, time.perf_counter()),
    )
    wall = time.perf_counter() - started
    assert result.status == "completed" and result.step == steps, result
    first = min(s for s in seen if s >= 5)
    last = max(seen)
    rate = (last - first) / (seen[last] - seen[first])
    return {"wall_s": wall, "steps_per_s": rate, "prompts_per_s": rate * workers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    temp = tempfile.mkdtemp(prefix="att3d-ray-", dir="/tmp")
    head = start_cluster(temp, cpus=4)
    try:
        import ray

        for _ in range(120):  # the cluster takes seconds to tens of seconds to come up here
            try:
                ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
                break
            except ConnectionError:
                time.sleep(1.0)
        results: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        for repeat in range(args.repeats):
            for workers in (1, 2):
                results[workers].append(run_once(args.steps, workers, Path(temp) / f"run-{workers}-{repeat}"))
        for workers, runs in results.items():
            for run in runs:
                steady = f"{run['steps_per_s']:.2f} steps/s  {run['prompts_per_s']:.2f} prompts/s"
                print(f"workers={workers}  wall {run['wall_s']:.1f} s  steady {steady}")
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
