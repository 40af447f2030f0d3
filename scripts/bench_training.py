"""Training throughput on this machine: frames/s of amortized SDS steps and where a step's time goes.

    python scripts/bench_training.py [--steps 20] [--warmup 3] [--config configs/shapes_default.yaml]
                                     [--variant central] [--variant forward] [override ...]

Builds the run of ``--config`` (default: the shipped recipe at its CPU settings: 4 prompts x 1 view,
32 samples per ray) with the bundled prior and text encoder, starts the field from the bundled model's
weights (so densities look like a trained model's, not an empty scene), and times ``--steps`` optimizer
steps per variant, all variants in one process (the machine's noise is larger than some differences).
A variant is a list of ``key=value`` overrides after a name: ``--variant forward
model.render.normals=forward``; the pseudo-override ``encoding=reference`` runs the hash-grid lookup as
implemented before issue #16 (``att3d.encoding.reference_encode_levels``). Stages: render (field queries
for the samples), normals (finite-difference probes, part of render), prior (the UNet), backward,
optimizer; a frame is one rendered view.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

import att3d.encoding
import att3d.render
import att3d.training.step
from att3d.config import TrainConfig, load_config
from att3d.generate import DEFAULT_MODEL_DIR
from att3d.training.distributed import DistInfo
from att3d.training.setup import setup_run
from att3d.training.state import warm_start
from att3d.training.step import forward_backward

CPU_SETTINGS = ["device=cpu", "prompts_per_step=4", "views_per_prompt=1", "model.render.samples_per_ray=32"]


@contextlib.contextmanager
def patched(owner: object, name: str, timings: dict[str, float], stage: str) -> Iterator[None]:
    """Replace ``owner.name`` by a wrapper that adds its wall time to ``timings[stage]``."""
    original: Callable = getattr(owner, name)

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings[stage] += time.perf_counter() - start

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def replaced(owner: object, name: str, value: object) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def bench_variant(config_path: Path, overrides: list[str], steps: int, warmup: int) -> dict[str, float]:
    reference = "encoding=reference" in overrides
    overrides = [o for o in overrides if o != "encoding=reference"]
    config = load_config(TrainConfig, config_path, [*CPU_SETTINGS, *overrides])
    info = DistInfo(0, 1, 0, torch.device("cpu"), False)
    run = setup_run(config, Path("/nonexistent"), info)
    warm_start(run, DEFAULT_MODEL_DIR)
    timings: dict[str, float] = defaultdict(float)
    with contextlib.ExitStack() as stack:
        if reference:
            stack.enter_context(
                replaced(att3d.encoding, "encode_levels", att3d.encoding.reference_encode_levels)
            )
        stack.enter_context(patched(att3d.training.step, "render", timings, "render"))
        stack.enter_context(patched(att3d.render, "density_normals", timings, "normals"))
        stack.enter_context(patched(run.prior, "noise_pred", timings, "prior"))
        stack.enter_context(patched(torch.autograd, "backward", timings, "backward"))
        stack.enter_context(patched(run.optimizer, "step", timings, "optimizer"))
        per_step = []
        for step in range(warmup + steps):
            if step == warmup:
                timings.clear()
            start = time.perf_counter()
            forward_backward(run, 2000 + step)  # past the albedo-only warm-up: shaded steps
            run.optimizer.step()
            if step >= warmup:
                per_step.append(time.perf_counter() - start)
    frames = config.prompts_per_step * config.views_per_prompt
    result = {stage: 1000 * total / steps for stage, total in timings.items()}
    result["step"] = 1000 * statistics.median(per_step)
    result["frames_per_s"] = frames / statistics.median(per_step)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/shapes_default.yaml"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--variant", nargs="+", action="append", metavar=("NAME", "OVERRIDE"), help="name then overrides"
    )
    parser.add_argument("overrides", nargs="*", help="key=value applied to every variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = args.variant or [["as-configured"]]
    print(f"{args.config} {' '.join(CPU_SETTINGS + args.overrides)}; {torch.get_num_threads()} threads")
    print(
        f"{'variant':<16}{'step ms':>9}{'frames/s':>10}{'render':>9}{'normals':>9}{'prior':>8}"
        f"{'backward':>10}{'optim':>8}"
    )
    for name, *overrides in variants:
        r = bench_variant(args.config, [*args.overrides, *overrides], args.steps, args.warmup)
        print(
            f"{name:<16}{r['step']:>9.0f}{r['frames_per_s']:>10.2f}{r.get('render', 0):>9.0f}"
            f"{r.get('normals', 0):>9.0f}{r.get('prior', 0):>8.0f}{r.get('backward', 0):>10.0f}"
            f"{r.get('optimizer', 0):>8.0f}"
        )


if __name__ == "__main__":
    main()
