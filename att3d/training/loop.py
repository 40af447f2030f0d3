"""The training loop: amortized score distillation of one generator over a whole prompt set (ATT3D).

:func:`train` joins the process group (the ``TrainConfig`` checked its values when it was built), sets
the run up (``setup``), resumes it (``state``), then alternates
:func:`att3d.training.step.forward_backward` and ``optimizer.step()`` until ``config.steps``. Everything
else that happens during a run (progress, TensorBoard, previews, checkpoints, evaluation) is a callback
(``callbacks``) run after the steps it is due at. A stop request (the cancel flag, SIGINT or SIGTERM) ends
the loop at a step boundary; the last checkpoint is saved then.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as dist
import yaml

from att3d.atomic import atomic_write
from att3d.config import TrainConfig, to_dict
from att3d.priors.base import DiffusionPrior
from att3d.sds import t_max_at
from att3d.text import TextEncoder
from att3d.training.callbacks import (
    CallbackLocation,
    CheckpointSaver,
    Evaluator,
    ProgressCallback,
    build_callbacks,
    close_callbacks,
    default_evaluator,
    run_callbacks,
)
from att3d.training.distributed import DistInfo, any_rank, init_distributed, reduce_scalars, wrap_ddp
from att3d.training.errors import TrainingDiverged, TrainingError
from att3d.training.run_folder import latest_checkpoint, lock_run_folder
from att3d.training.setup import setup_run
from att3d.training.state import load_training_checkpoint, warm_start
from att3d.training.step import forward_backward

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a call to :func:`train` ended."""

    status: str
    """``completed``, ``cancelled`` (cancel flag) or ``interrupted`` (SIGINT/SIGTERM)."""
    step: int
    """Optimizer steps done in total (including those before a resume)."""
    checkpoint: Path | None
    """The checkpoint written last (on rank 0; ``None`` elsewhere)."""
    loss: float
    """Loss of the last step (NaN when no step ran)."""
    signal: int | None = None
    """The signal that interrupted training, if any."""


@contextlib.contextmanager
def stop_on_signals(event: threading.Event) -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM set ``event`` (training then saves and exits) instead of killing.

    A second signal raises ``KeyboardInterrupt`` at once (an impatient Ctrl-C; saves are atomic, so the
    newest complete checkpoint survives). Yields the list of received signal numbers. Only the main
    thread can install handlers; elsewhere (e.g. a service's worker thread) this does nothing and the
    cancel flag is the way to stop.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: object) -> None:
        received.append(signum)
        if event.is_set():
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): stopping without saving")
        logger.warning("%s received: saving a checkpoint after this step", signal.Signals(signum).name)
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    prior: DiffusionPrior | None = None,
    text_encoder: TextEncoder | None = None,
    evaluator: Evaluator | None = None,
    progress_callback: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in ``out_dir`` until ``config.steps``.

    ``prior``/``text_encoder`` replace the ones named in the config (tests, services that keep a prior
    loaded). Setting ``cancel`` stops at the next step boundary after saving a checkpoint; so do SIGINT and
    SIGTERM when called from the main thread. A NaN/Inf loss raises :class:`TrainingDiverged` without
    saving, so the newest checkpoint stays the last good one.
    """
    out_dir = Path(out_dir)
    info = init_distributed(config.device)
    try:
        with _hold_run_folder(out_dir, info):
            return _train(
                config, out_dir, info, resume, prior, text_encoder, evaluator, progress_callback, cancel
            )
    finally:
        if info.owns_group:
            dist.destroy_process_group()


@contextlib.contextmanager
def _hold_run_folder(out_dir: Path, info: DistInfo) -> Iterator[None]:
    """Rank 0 locks the run folder for the run's life (the other ranks share it by design); if it cannot,
    every rank stops together rather than waiting in a collective for rank 0."""
    with contextlib.ExitStack() as stack:
        failure: Exception | None = None
        if info.is_main:
            try:
                stack.enter_context(lock_run_folder(out_dir))
            except (TrainingError, OSError) as err:
                failure = err
        if any_rank(info, failure is not None):
            raise failure or TrainingError(f"rank 0 could not lock the run folder {out_dir}")
        yield


def _train(
    config: TrainConfig,
    out_dir: Path,
    info: DistInfo,
    resume: bool,
    prior: DiffusionPrior | None,
    text_encoder: TextEncoder | None,
    evaluator: Evaluator | None,
    progress_callback: ProgressCallback | None,
    cancel: threading.Event | None,
) -> TrainResult:
    latest = latest_checkpoint(out_dir)
    existing = latest[1] if latest is not None else None
    if existing is not None and not resume:
        raise TrainingError(
            f"{out_dir} already holds checkpoints ({existing.name}); pass --resume or a new --out"
        )
    run = setup_run(config, out_dir, info, prior, text_encoder)
    if resume and existing is not None:
        load_training_checkpoint(run, existing)
        logger.info("resumed from %s at step %d", existing, run.step)
    elif config.init_from:
        warm_start(run, config.init_from)
        logger.info("weights from %s (a warm start: fresh optimizer and step)", config.init_from)
    elif resume:
        logger.info("no checkpoint in %s; starting from scratch", out_dir)
    run.model = wrap_ddp(run.field, info)
    if info.is_main:
        atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(yaml.safe_dump(to_dict(config))))
    if evaluator is None and config.eval_every > 0 and info.is_main:
        evaluator = default_evaluator(run)

    cancel = cancel if cancel is not None else threading.Event()
    signalled = threading.Event()
    checkpoints = CheckpointSaver(run, existing)
    callbacks = build_callbacks(run, checkpoints, evaluator, progress_callback)
    scalars: dict[str, float] = {}
    loss = math.nan
    status = "completed"
    try:
        with stop_on_signals(signalled) as received:
            while run.step < config.steps:
                if any_rank(info, cancel.is_set() or signalled.is_set()):
                    status = "interrupted" if signalled.is_set() or received else "cancelled"
                    break
                started = time.perf_counter()
                out = forward_backward(run, run.step)
                scalars = reduce_scalars(info, out.scalars())
                loss = scalars["loss/total"]
                if not math.isfinite(loss):
                    last = checkpoints.last_saved
                    where = f"; last good checkpoint: {last}" if last else "; no checkpoint was saved"
                    raise TrainingDiverged(
                        f"loss is {loss} at step {run.step} (sds {scalars['loss/sds']:.4g}, "
                        f"shading {out.shading}); training stopped{where}"
                    )
                run.optimizer.step()
                run.step += 1
                scalars["sds/t_max"] = t_max_at(config.sds, run.step - 1)
                scalars["train/steps_per_s"] = 1.0 / max(time.perf_counter() - started, 1e-9)
                if run.level_mask is not None:
                    scalars["train/active_levels"] = float(run.level_mask.active)
                run_callbacks(callbacks, CallbackLocation.AFTER_STEP, run.step, scalars)
        run_callbacks(callbacks, CallbackLocation.AFTER_TRAIN, run.step, scalars)
    finally:
        close_callbacks(callbacks)
        if run.level_mask is not None:
            run.level_mask.remove()
    return TrainResult(
        status=status,
        step=run.step,
        checkpoint=checkpoints.last_saved if info.is_main else None,
        loss=loss,
        signal=received[0] if received else None,
    )


__all__ = ["TrainResult", "TrainingDiverged", "TrainingError", "stop_on_signals", "train"]
