"""Reporting during training as callbacks, each run by the loop after the steps it is due at.

Modelled on nerfstudio's ``TrainingCallback``: a callable, how often (``every_n_steps``) and where in the
run (after a step, or once after the last). The loop knows nothing of progress bars, TensorBoard,
previews, checkpoints or evaluation; :func:`build_callbacks` lists them in the order they run after a
step. Only rank 0 reports; saving a checkpoint is collective, so every rank runs that callback.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from att3d.cameras import Cameras, orbit_cameras
from att3d.field import AmortizedField
from att3d.images import save_png
from att3d.render import render
from att3d.training.setup import TrainRun, build_text_encoder
from att3d.training.state import save_training_checkpoint

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""``progress_callback(step, total_steps, loss)``, called on rank 0 after every optimizer step."""
Evaluator = Callable[[AmortizedField, int], dict[str, float]]
"""``evaluator(field, step) -> {metric: value}``, called on rank 0 every ``eval_every`` steps."""


class CallbackLocation(enum.Enum):
    """Where in a run a callback runs."""

    AFTER_STEP = "after_step"
    """After each optimizer step it is due at (``step`` counts the steps done)."""
    AFTER_TRAIN = "after_train"
    """Once after the loop ends (completed, cancelled or interrupted; not when a step raised)."""


@dataclass
class TrainingCallback:
    """One thing done during training, and when."""

    func: Callable[[int, dict[str, float]], None]
    """``func(step, scalars)``: steps done, and the last step's logged values (means over ranks)."""
    every_n_steps: int = 1
    """``AFTER_STEP``: run when ``step`` is a multiple of this (0: never). Unused ``AFTER_TRAIN``."""
    where: CallbackLocation = CallbackLocation.AFTER_STEP
    close: Callable[[], None] | None = None
    """Releases what ``func`` holds (a progress bar, a TensorBoard file); called however the run ends."""

    def run(self, where: CallbackLocation, step: int, scalars: dict[str, float]) -> None:
        """Call ``func`` if this callback belongs at ``where`` and is due at ``step``."""
        if where is not self.where:
            return
        if where is CallbackLocation.AFTER_STEP and not due(step, self.every_n_steps):
            return
        self.func(step, scalars)


def due(step: int, every: int) -> bool:
    """Whether an every-``every``-steps action happens at ``step`` (``every`` 0: never)."""
    return every > 0 and step % every == 0


def run_callbacks(
    callbacks: list[TrainingCallback], where: CallbackLocation, step: int, scalars: dict[str, float]
) -> None:
    """Each callback in list order (the order is part of the behaviour: checkpoint before preview)."""
    for callback in callbacks:
        callback.run(where, step, scalars)


def close_callbacks(callbacks: list[TrainingCallback]) -> None:
    for callback in callbacks:
        if callback.close is not None:
            callback.close()


# --------------------------------------------------------------------------------------------------
# The callbacks
# --------------------------------------------------------------------------------------------------


class CheckpointSaver:
    """Saves training checkpoints and remembers the last one (the run's result names it).

    ``periodic`` skips the final step: ``final`` saves it after the loop, together with a stop's step.
    """

    def __init__(self, run: TrainRun, existing: Path | None) -> None:
        self.run = run
        self.last_saved = existing
        """The newest checkpoint written or resumed from (``None`` on ranks other than 0)."""
        self.saved_step = run.step if existing is not None else -1

    def periodic(self, step: int, scalars: dict[str, float]) -> None:
        if step < self.run.config.steps:
            self.last_saved, self.saved_step = save_training_checkpoint(self.run), step

    def final(self, step: int, scalars: dict[str, float]) -> None:
        if self.saved_step != step:
            self.last_saved = save_training_checkpoint(self.run)


class TensorBoardLog:
    """Scalars into ``<run>/tb`` (TensorBoard's writer is a slow import: only made when logging)."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def write(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)

    def close(self) -> None:
        self.writer.close()


def progress_bar(run: TrainRun) -> TrainingCallback:
    """A terminal progress bar showing the loss; where stderr is no terminal (a log file, a pipe, a job),
    where tqdm would show nothing, plain lines instead (:func:`progress_lines`)."""
    if not sys.stderr.isatty():
        return progress_lines(run, sys.stderr)
    from tqdm.auto import tqdm

    bar = tqdm(total=run.config.steps, initial=run.step, unit="step", dynamic_ncols=True, disable=None)

    def update(step: int, scalars: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{scalars['loss/total']:.4g}", refresh=False)

    return TrainingCallback(update, close=bar.close)


def progress_lines(run: TrainRun, stream: TextIO) -> TrainingCallback:
    """``step 40/2000  loss 0.1234  3.2 steps/s  12.8 frames/s  ETA 10m10s`` every ``log_every`` steps
    (1/20 of the run when 0), rates averaged since the run (re)started."""
    config = run.config
    frames = config.prompts_per_step * config.views_per_prompt * run.dist.world_size  # rendered per step
    first, started = run.step, time.perf_counter()

    def report(step: int, scalars: dict[str, float]) -> None:
        rate = (step - first) / max(time.perf_counter() - started, 1e-9)
        eta = _duration((config.steps - step) / rate) if rate > 0 else "?"
        print(
            f"step {step}/{config.steps}  loss {scalars['loss/total']:.4g}  {rate:.3g} steps/s  "
            f"{rate * frames:.3g} frames/s  ETA {eta}",
            file=stream,
            flush=True,
        )

    return TrainingCallback(report, config.log_every or max(1, config.steps // 20))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def preview_path(run: TrainRun, step: int) -> Path:
    return run.out_dir / "previews" / f"step_{step:07d}.png"


def save_preview(run: TrainRun, step: int) -> None:
    save_png(render_preview(run), preview_path(run, step))


@torch.no_grad()
def render_preview(run: TrainRun) -> np.ndarray:
    """A ``uint8 [rows*S, cols*S, 3]`` grid: the first prompts (rows) × an orbit of views (columns)."""
    config = run.config
    rows = min(config.preview_prompts, len(run.bank.prompts))
    cols = config.preview_views
    distance = sum(config.cameras.distance) / 2
    fovy = sum(config.cameras.fovy) / 2
    cameras = Cameras.cat([orbit_cameras(cols, elevation=20.0, distance=distance, fovy=fovy)] * rows)
    embeddings = run.bank.embeddings[:rows]
    # Eval mode: a preview must not advance the spectral-norm estimates (training would not be reproducible).
    run.field.eval()
    try:
        out = render(
            lambda points: run.field(points, embeddings),
            cameras.to(run.dist.device),
            config.model.render,
            num_prompts=rows,
            shading="diffuse",
            perturb=False,
            bound=config.model.field.bound,
        )
    finally:
        run.field.train()
    size = out.rgb.shape[-1]
    grid = out.rgb.clamp(0, 1).reshape(rows, cols, 3, size, size).permute(0, 3, 1, 4, 2)
    return (grid.reshape(rows * size, cols * size, 3) * 255).round().byte().cpu().numpy()


def default_evaluator(run: TrainRun) -> Evaluator | None:
    """``att3d.shapes.metrics.evaluate`` on the held-out prompts, when that module and prompts exist."""
    if not run.prompt_set.heldout or importlib.util.find_spec("att3d.shapes.metrics") is None:
        return None
    from att3d.shapes import metrics

    evaluate = getattr(metrics, "evaluate", None)
    if evaluate is None:
        return None
    prompts = list(run.prompt_set.heldout)
    encoder = build_text_encoder(run.config)

    def evaluator(field: AmortizedField, step: int) -> dict[str, float]:
        embeddings = encoder.encode(prompts).to(run.dist.device)
        return evaluate(field, prompts=prompts, embeddings=embeddings, config=run.config.model)

    return evaluator


def evaluation(run: TrainRun, evaluator: Evaluator, tensorboard: TensorBoardLog | None) -> TrainingCallback:
    """Run ``evaluator`` (field in eval mode), log its metrics to TensorBoard and ``eval.jsonl``."""

    def evaluate(step: int, scalars: dict[str, float]) -> None:
        run.field.eval()  # no spectral-norm updates during evaluation
        try:
            metrics = {k: float(v) for k, v in evaluator(run.field, step).items()}
        finally:
            run.field.train()
        if tensorboard is not None:
            tensorboard.write(step, metrics, "eval")
        line = json.dumps({"step": step, **metrics})
        with open(run.out_dir / "eval.jsonl", "a") as f:
            f.write(line + "\n")

    return TrainingCallback(evaluate, every_n_steps=run.config.eval_every)


def build_callbacks(
    run: TrainRun,
    checkpoints: CheckpointSaver,
    evaluator: Evaluator | None,
    progress_callback: ProgressCallback | None,
) -> list[TrainingCallback]:
    """Everything done besides the steps, in the order it runs; ranks other than 0 only checkpoint."""
    config = run.config
    if not run.dist.is_main:
        return [
            TrainingCallback(checkpoints.periodic, config.checkpoint_every),
            TrainingCallback(checkpoints.final, where=CallbackLocation.AFTER_TRAIN),
        ]
    callbacks = []
    tensorboard = TensorBoardLog(run.out_dir / "tb") if config.log_every > 0 else None
    if config.progress_bar:
        callbacks.append(progress_bar(run))
    if tensorboard is not None:
        callbacks.append(TrainingCallback(tensorboard.write, config.log_every, close=tensorboard.close))
    if progress_callback is not None:
        report = progress_callback  # non-None here, for the closure
        failures: set[str] = set()

        def progress(step: int, scalars: dict[str, float]) -> None:
            # Reporting (e.g. a job store gone or full) never stops training or skips a checkpoint.
            try:
                report(step, config.steps, scalars["loss/total"])
            except Exception as err:
                kind = f"{type(err).__name__}: {err}"
                if kind not in failures:  # once per kind, not at every step
                    failures.add(kind)
                    logger.warning("progress callback failed at step %d (%s); training goes on", step, kind)

        callbacks.append(TrainingCallback(progress))
    callbacks.append(TrainingCallback(checkpoints.periodic, config.checkpoint_every))
    callbacks.append(TrainingCallback(lambda step, _: save_preview(run, step), config.preview_every))
    if evaluator is not None:
        callbacks.append(evaluation(run, evaluator, tensorboard))
    callbacks.append(TrainingCallback(checkpoints.final, where=CallbackLocation.AFTER_TRAIN))
    if config.preview_every > 0:

        def final_preview(step: int, scalars: dict[str, float]) -> None:
            if not due(step, config.preview_every):  # a last look at where the run stopped
                save_preview(run, step)

        callbacks.append(TrainingCallback(final_preview, where=CallbackLocation.AFTER_TRAIN))
    return callbacks
