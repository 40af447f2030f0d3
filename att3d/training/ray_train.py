"""Training on a Ray cluster: :func:`att3d.training.loop.train` run by Ray Train in ``config.workers``
processes.

:func:`train` has the signature of :func:`att3d.training.loop.train` (the job runner interface,
``ATT3D_JOB_RUNNER=att3d.training.ray_train:train``). It starts a ``TorchTrainer`` with
``ScalingConfig(num_workers=config.workers, use_gpu=...)``; Ray Train creates the process group (gloo on CPU,
NCCL on GPU) and sets torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) before each worker
calls :func:`att3d.training.loop.train`, whose :func:`~att3d.training.distributed.init_distributed` reuses
that group: the code path is the one ``torchrun`` runs (prompt shards, DDP around the field, rank 0 alone
writes checkpoints, into ``out_dir`` in the trainer's own layout, so ``resume`` works as it does locally).

The calling process and the workers share one small actor, the run's channel: rank 0 reports progress and
its result through it, and every worker polls it for the stop flag the caller sets when ``cancel`` is set
(every rank then stops at the same step and rank 0 saves a checkpoint). Every worker must see ``out_dir``
at the same path (one machine, or a shared filesystem). Ray is imported only when :func:`train` runs.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from att3d.config import TrainConfig, from_dict, to_dict
from att3d.training.callbacks import ProgressCallback
from att3d.training.errors import TrainingError
from att3d.training.loop import TrainResult

POLL_S = 0.25
"""How often the caller relays progress and the stop flag, and how often workers look at the stop flag."""
PROGRESS_EVERY_S = 0.25
"""Rank 0 reports progress at most this often (and always the last step)."""


class _Channel:
    """State shared by the caller and the workers of one run (a Ray actor with no CPU of its own)."""

    def __init__(self) -> None:
        self.stop = False
        self.progress: tuple[int, int, float] | None = None
        self.result: dict[str, Any] | None = None

    def request_stop(self) -> None:
        self.stop = True

    def stopped(self) -> bool:
        return self.stop

    def report(self, step: int, total: int, loss: float) -> None:
        self.progress = (step, total, loss)

    def latest(self) -> tuple[int, int, float] | None:
        return self.progress

    def finish(self, result: dict[str, Any]) -> None:
        self.result = result

    def outcome(self) -> dict[str, Any] | None:
        return self.result


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress_callback: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``out_dir`` on Ray Train, in ``config.workers``
    processes.

    Joins the Ray cluster of the calling process (``RAY_ADDRESS``, as inside a Ray job), else starts a local
    one. A failure of any worker raises :class:`TrainingError` with the worker's exception.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        _init_ray()
    out_dir = Path(out_dir).resolve()  # workers do not start in this process's folder
    cancel = cancel if cancel is not None else threading.Event()
    use_gpu = config.device.startswith("cuda") or (
        config.device == "auto" and ray.cluster_resources().get("GPU", 0) >= 1
    )
    channel = ray.remote(num_cpus=0)(_Channel).remote()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "config": to_dict(config),
            "out_dir": str(out_dir),
            "resume": resume,
            "use_gpu": use_gpu,
            "channel": channel,
        },
        scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=f"{out_dir.name}-{int(time.time() * 1000)}",  # one Ray Train run per attempt
            storage_path=str(out_dir / "ray-train"),
            failure_config=FailureConfig(max_failures=0),  # a failed step is the job's outcome, as locally
        ),
    )
    done = threading.Event()
    relay = threading.Thread(
        target=_relay, args=(channel, cancel, progress_callback, done), name="att3d-ray-relay", daemon=True
    )
    relay.start()
    try:
        trainer.fit()
        result = ray.get(channel.outcome.remote())
    except Exception as err:
        raise TrainingError(f"Ray Train failed: {_worker_failure(err)}") from None
    finally:
        done.set()
        relay.join()
        ray.kill(channel)
    if result is None:
        raise TrainingError("Ray Train ended without a result from rank 0")
    checkpoint = Path(result["checkpoint"]) if result["checkpoint"] else None
    return TrainResult(result["status"], result["step"], checkpoint, result["loss"], result["signal"])


def _init_ray() -> None:
    """Join (or start) a cluster, keeping this process's SIGTERM handler: ``ray.init`` installs one that
    exits at once, where a job process must stop at a step boundary and save (``cancel``)."""
    import ray

    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    ray.init()
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _relay(
    channel: Any, cancel: threading.Event, progress: ProgressCallback | None, done: threading.Event
) -> None:
    """In the caller: pass ``cancel`` on to the workers, and rank 0's progress on to ``progress``."""
    import ray

    stop_sent = False
    last = None
    while True:
        finished = done.wait(POLL_S)
        if cancel.is_set() and not stop_sent:
            ray.get(channel.request_stop.remote())
            stop_sent = True
        latest = ray.get(channel.latest.remote())
        if latest is not None and latest != last and progress is not None:
            progress(*latest)
            last = latest
        if finished:
            return


def _worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the plain trainer in the process group Ray Train set up."""
    import ray
    import ray.train
    import ray.train.torch

    from att3d.training.loop import train as train_loop

    data = loop_config["config"]
    if loop_config["use_gpu"]:  # this worker's own GPU, as Ray Train assigned it
        data = {**data, "device": str(ray.train.torch.get_device())}
    config = from_dict(TrainConfig, data)
    channel = loop_config["channel"]
    rank = ray.train.get_context().get_world_rank()
    cancel = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            if ray.get(channel.stopped.remote()):
                cancel.set()
                return

    last_report = 0.0

    def report(step: int, total: int, loss: float) -> None:
        nonlocal last_report
        if step >= total or time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            channel.report.remote(step, total, loss)  # not waited for: never slows a step down

    watcher = threading.Thread(target=watch, name="att3d-ray-stop-watch", daemon=True)
    watcher.start()
    try:
        result = train_loop(
            config,
            loop_config["out_dir"],
            resume=loop_config["resume"],
            progress_callback=report if rank == 0 else None,
            cancel=cancel,
        )
    finally:
        done.set()
    if rank == 0:
        checkpoint = str(result.checkpoint) if result.checkpoint is not None else None
        outcome = {"status": result.status, "step": result.step, "checkpoint": checkpoint}
        ray.get(channel.finish.remote({**outcome, "loss": result.loss, "signal": result.signal}))


def _worker_failure(err: Exception) -> str:
    """The first failing worker's exception from Ray Train's error (its own message otherwise)."""
    failures = getattr(err, "worker_failures", None) or {}
    cause: BaseException = next(iter(failures.values()), None) or err
    while getattr(cause, "cause", None) is not None:  # Ray wraps a worker's exception in its own
        cause = cause.cause
    message = " ".join(str(cause).split()) or type(cause).__name__
    return f"{type(cause).__name__}: {message}"
