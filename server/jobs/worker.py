"""One training job in its own process: ``python -m server.jobs.worker --db DB --job ID --runner MOD:FN``.

The scheduler (``server.jobs.scheduler.JobManager``) has already moved the job to ``running``. This process
loads the job's ``TrainConfig`` from the database, calls the runner with a progress callback (step, loss and
progress go to SQLite) and a cancel flag, and records how it ended. The cancel flag is set by a watcher
thread when the job's ``cancel_requested`` column is set (``DELETE /v1/jobs/{id}``) or when the server that
started this process dies; SIGTERM reaches the trainer directly (it saves a checkpoint and returns).

The store may become unusable while the job trains (the file deleted or overwritten): training and its
checkpoints never depend on it. Failed store writes are logged once per kind, and the outcome is written to
the run folder (``result.json``) before the store, so the server records it once the store is back.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from att3d.config import TrainConfig, from_dict
from att3d.training.run_folder import latest_checkpoint
from server.jobs.processes import process_start_time
from server.jobs.recovery import FaultLog, clear_result, write_job_record, write_result
from server.jobs.refine_requests import REFINE, job_kind
from server.jobs.store import JobStore, JobStoreUnavailable

logger = logging.getLogger("server.jobs.worker")

POLL_S = 0.25
"""How often the watcher checks the cancel flag and the parent process."""
PROGRESS_EVERY_S = 0.25
"""Progress rows are written at most this often (and always for the last step)."""

ProgressCallback = Callable[[int, int, float], None]
"""``(step, total_steps, loss)``, called after every optimizer step."""


class RunResult(Protocol):
    """What a runner returns (``att3d.training.loop.TrainResult`` has these attributes)."""

    status: str
    """``completed``, ``cancelled`` (the cancel flag) or ``interrupted`` (a signal)."""
    step: int
    checkpoint: Path | None
    loss: float


class Runner(Protocol):
    """Trains ``config`` into ``out_dir``; the job process calls it once per attempt.

    Contract: checkpoints go to ``out_dir/checkpoints/step_XXXXXXX``
    (``att3d.training.run_folder.checkpoint_dir``);
    ``resume=True`` continues from the latest of them; ``progress_callback`` is called after each step;
    setting ``cancel`` makes it save a checkpoint and return with status ``cancelled`` at the next step.
    """

    def __call__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        resume: bool,
        progress_callback: ProgressCallback,
        cancel: threading.Event,
    ) -> RunResult: ...


def load_runner(spec: str) -> Runner:
    """Import ``module:function``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"runner must look like 'module:function', got {spec!r}")
    runner = getattr(importlib.import_module(module_name), attr, None)
    if not callable(runner):
        raise ValueError(f"runner {spec!r} is not a callable")
    return runner


class _Watcher(threading.Thread):
    """Sets ``cancel`` when the job's cancel flag is set in the database or the parent process dies."""

    def __init__(self, store: JobStore, job_id: str, cancel: threading.Event, faults: FaultLog) -> None:
        super().__init__(name="att3d-job-watcher", daemon=True)
        self.store = store
        self.faults = faults
        self.job_id = job_id
        self.cancel = cancel
        self.parent = os.getppid()
        self.parent_gone = threading.Event()
        self.cancel_requested = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(POLL_S):
            if os.getppid() != self.parent:  # re-parented: the server died
                self.parent_gone.set()
                self.cancel.set()
            try:
                if self.store.cancel_requested(self.job_id):
                    self.cancel_requested.set()
                    self.cancel.set()
            except JobStoreUnavailable as err:  # a locked or vanished database must not kill the training
                self.faults.failed(err)


REFINE_RUNNER = "server.jobs.refine_runner:run_refine"
"""The default runner of refine jobs (``ServerSettings.refine_runner``)."""


def run_job(store: JobStore, job_id: str, runner_spec: str, refine_runner_spec: str = REFINE_RUNNER) -> str:
    """Run the job to its end and record the outcome; returns the state written.

    A training job's runner gets its ``TrainConfig``; a refine job's (``refine_runner_spec``, the same
    contract) gets its stored config (``server.jobs.refine_requests``).
    """
    row = store.get(job_id)
    if row is None or row["state"] != "running":
        logger.error("job %s is not running (%s); nothing to do", job_id, row and row["state"])
        return row["state"] if row else "missing"
    store.set_pid(job_id, os.getpid(), process_start_time(os.getpid()))
    run_dir = Path(row["run_dir"])
    try:
        clear_result(run_dir)
        write_job_record(run_dir, row)
    except OSError as err:
        logger.warning("cannot write the job's record in %s: %s", run_dir, err)
    cancel = threading.Event()
    faults = FaultLog(
        logger, f"job {job_id}: using the job store (training goes on; progress is not recorded)"
    )
    watcher = _Watcher(store, job_id, cancel, faults)
    if store.cancel_requested(job_id):  # cancelled between the scheduler's claim and this start
        cancel.set()
    # Until the trainer installs its own handlers (and after it restores ours), SIGTERM stops cooperatively.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: cancel.set())
    watcher.start()

    last_write = 0.0

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal last_write
        now = time.monotonic()
        if step >= total or now - last_write >= PROGRESS_EVERY_S:
            last_write = now
            try:
                store.progress(job_id, step, total, loss)
            except JobStoreUnavailable as err:
                faults.failed(err)
            else:
                faults.succeeded()

    try:
        stored = json.loads(row["config"])
        if job_kind(stored) == REFINE:
            config: Any = stored
            runner = load_runner(refine_runner_spec)
        else:
            config = from_dict(TrainConfig, stored)
            runner = load_runner(runner_spec)
        resume = latest_checkpoint(run_dir, check_weights=False) is not None
        logger.info("job %s: attempt %d, resume=%s", job_id, row["attempts"], resume)
        result: Any = runner(config, run_dir, resume=resume, progress_callback=progress, cancel=cancel)
    except Exception as err:
        logger.exception("job %s failed", job_id)
        message = " ".join(str(err).split()) or type(err).__name__
        latest = latest_checkpoint(run_dir, check_weights=False)
        state = "interrupted" if watcher.parent_gone.is_set() else "failed"
        error = f"{type(err).__name__}: {message}"
        _record(store, job_id, run_dir, state=state, error=error, checkpoint=_path(latest))
        return state
    finally:
        watcher.done.set()
        signal.signal(signal.SIGTERM, previous)

    checkpoint = (
        str(result.checkpoint)
        if result.checkpoint is not None
        else _path(latest_checkpoint(run_dir, check_weights=False))
    )
    if result.status == "completed":
        state, error = "succeeded", None
    elif watcher.cancel_requested.is_set() or _cancel_requested(store, job_id):
        state, error = "canceled", None
    else:
        why = "the server stopped" if watcher.parent_gone.is_set() else "the job process was asked to stop"
        state = "interrupted"
        error = f"{why} at step {result.step}; POST /v1/jobs/{job_id}/resume continues it"
    _record(
        store,
        job_id,
        run_dir,
        state=state,
        error=error,
        checkpoint=checkpoint,
        step=result.step,
        loss=result.loss,
    )
    logger.info("job %s: %s at step %d", job_id, state, result.step)
    return state


def _cancel_requested(store: JobStore, job_id: str) -> bool:
    try:
        return store.cancel_requested(job_id)
    except JobStoreUnavailable:
        return False


def _record(store: JobStore, job_id: str, run_dir: Path, **outcome: Any) -> None:
    """The outcome into the run folder, then into the store; a store that cannot take it is logged, and the
    server records the run folder's copy when it reaps this process (or when the store is back)."""
    try:
        write_result(run_dir, **outcome)
    except OSError as err:
        logger.warning("job %s: cannot write %s/result.json: %s", job_id, run_dir, err)
    try:
        recorded = store.finish(job_id, **outcome)
    except JobStoreUnavailable as err:
        logger.warning("job %s: %s; its outcome is in %s/result.json", job_id, err.reason, run_dir)
        return
    if not recorded:
        logger.warning(
            "job %s is no longer running in the job store; its outcome is in %s/result.json", job_id, run_dir
        )


def _path(latest: tuple[int, Path] | None) -> str | None:
    return str(latest[1]) if latest else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="the jobs database (jobs.sqlite)")
    parser.add_argument("--job", required=True, help="id of a job in state 'running'")
    parser.add_argument("--runner", default="att3d.training.loop:train", help="module:function that trains")
    parser.add_argument(
        "--refine-runner",
        default=REFINE_RUNNER,
        help="module:function that runs refine jobs",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state = run_job(JobStore(args.db, create=False), args.job, args.runner, args.refine_runner)
    except JobStoreUnavailable as err:  # before training started: the server reaps and records it
        logger.error("job %s cannot start: %s", args.job, err.reason)
        return 1
    return 0 if state in ("succeeded", "canceled", "interrupted") else 1


if __name__ == "__main__":
    sys.exit(main())
