"""Preview -> refine: per-prompt score distillation that starts from the amortized generator's output.

ATT3D's amortized field answers a prompt in one forward pass (the *preview*). A user who wants more asks
for a *refine*: the prompt's grid is materialized once (``AmortizedField.materialize`` -> ``PromptField``),
then that single field is optimized with SDS against the model's prior, exactly as one prompt of training
would be (same cameras, renderer, SDS and prior conditioning from ``att3d.training``), but with a schedule
suited to a warm start (``att3d.refine_config``): the timestep range stays low (the coarse shape is already
there; large ``t`` would re-draw it) and the head, when it is trained at all, moves ten times slower than in
training. The shared head is copied, so a refine never touches the generator; it is frozen by default.

:func:`refine_field` is the loop for any ``PromptField`` (a fresh one is per-prompt SDS from scratch, the
baseline of ``scripts/bench_refine.py``); :func:`refine` starts it from a generator and a prompt.
Checkpoints (``att3d.refine_state``) make a refine resumable, and a stop request (the cancel flag, SIGINT,
SIGTERM) ends it at a step boundary after saving, as in training.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import trimesh

from att3d.cameras import sample_cameras
from att3d.config import CameraSamplingConfig, MeshConfig, ModelConfig
from att3d.field import FieldHead, PromptField
from att3d.priors.base import DiffusionPrior
from att3d.refine_config import REFINE_STEPS_RANGE, RefineConfig, from_scratch_config
from att3d.render import render
from att3d.sds import sds_loss
from att3d.training.callbacks import CallbackLocation, TrainingCallback, close_callbacks, run_callbacks
from att3d.training.conditioning import PromptBank, prior_condition, prior_is_view_conditioned
from att3d.training.run_folder import lock_run_folder

ProgressCallback = Callable[[int, int, float], None]
"""``progress_callback(step, total_steps, loss)`` after every step."""
PreviewCallback = Callable[[int, PromptField], None]
"""``preview_callback(step, field)`` every ``preview_every`` steps (the field in eval mode, no grad)."""


@dataclass
class RefineResult:
    """How a refine ended (the attributes ``server.jobs.worker.RunResult`` reads, plus the field)."""

    field: PromptField
    """The refined field (eval mode)."""
    status: str
    """``completed``, ``cancelled`` (the cancel flag) or ``interrupted`` (SIGINT/SIGTERM)."""
    step: int
    """Steps done in total (including those before a resume)."""
    loss: float
    """Loss of the last step (NaN when no step ran)."""
    checkpoint: Path | None = None
    """The checkpoint written last (``None`` without ``out_dir``)."""
    seconds: float = 0.0
    """Wall time of the steps run by this call."""


@dataclass
class RefineTarget:
    """What is refined: the prompt, its field and the model settings it renders and saves with."""

    prompt: str
    field: PromptField
    model: ModelConfig
    encoder_id: str = ""
    """The generator's text encoder (recorded in checkpoints)."""
    prior_prompt: str | None = None
    """What the prior is conditioned on (default: ``prompt``)."""
    cameras: CameraSamplingConfig | None = None
    """Camera ranges (default: training's)."""


def fresh_prompt_field(model: ModelConfig, seed: int = 0) -> PromptField:
    """An untrained single-prompt field (training's initialization): the from-scratch baseline."""
    from att3d.encoding import HashGridEncoding

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grid = HashGridEncoding(model.field.encoding, bases=1)
        head = FieldHead(model.field)
    return PromptField(model.field, [t.detach() for t in grid.tables], head)


def warm_field(generator, prompt: str) -> PromptField:  # generator: att3d.generate.Generator
    """The generator's field for ``prompt`` with a copy of its head (a refine must not move the model's)."""
    with torch.no_grad():
        field = generator.prompt_field(generator.embed([prompt])[0])
    field.head = copy.deepcopy(field.head)
    return field


def refine(
    generator,  # att3d.generate.Generator
    prompt: str,
    config: RefineConfig | None = None,
    prior: DiffusionPrior | None = None,
    prior_name: str = "shapes",
    **kwargs,
) -> RefineResult:
    """Refine ``prompt`` starting from ``generator``'s output; ``kwargs`` go to :func:`refine_field`."""
    if prior is None:
        from att3d.priors.registry import load_prior

        prior = load_prior(prior_name, device=generator.device)
    config = config or RefineConfig()
    prior_prompt = known_prior_prompt(generator, prior, prompt) if config.prior_text == "nearest" else None
    target = RefineTarget(
        prompt, warm_field(generator, prompt), generator.config, generator.encoder.id, prior_prompt
    )
    return refine_field(target, prior, config, **kwargs)


def known_prior_prompt(generator, prior: DiffusionPrior, prompt: str) -> str | None:
    """A prompt the prior knows for ``prompt`` (``RefineConfig.prior_text="nearest"``): ``None`` (use the
    prompt) for an open-vocabulary prior or a prompt the prior was trained on; else the prior prompt of the
    generator's nearest training prompt (the generator learned from many more wordings than the prior:
    "matte apricot ball" -> "an orange sphere", where the prior's own nearest phrasing is a cyan ball),
    or without training prompts, the prior's nearest known prompt by its text conditioning."""
    known = prior.known_prompts()
    if known is None or prompt in known:
        return None
    familiarity = generator.familiarity(prompt)
    if familiarity is not None:
        return training_prior_prompts(generator).get(familiarity.nearest, familiarity.nearest)
    with torch.no_grad():
        query = F.normalize(prior.encode_text([prompt]).flatten(1).float(), dim=1)
        table = F.normalize(prior.encode_text(known).flatten(1).float(), dim=1)
    return known[int((table @ query[0]).argmax())]


def training_prior_prompts(generator) -> dict[str, str]:
    """Training prompt -> the prompt the prior was taught with for it (``PromptSet.prior_prompts``),
    rebuilt from the checkpoint's training config; empty when they are the same prompts or the set cannot
    be rebuilt here."""
    from att3d.config import ConfigError, PromptSetConfig
    from att3d.prompts import load_prompt_set

    prompts = (generator.metadata or {}).get("train_config", {}).get("prompts")
    if not isinstance(prompts, dict) or prompts.get("source") != "shapes":
        return {}  # only ShapesWorld sets teach the prior other words than the training prompts
    try:
        prompt_set = load_prompt_set(PromptSetConfig(**prompts))
    except (ConfigError, TypeError, ValueError):
        return {}
    if prompt_set.prior_prompts is None:
        return {}
    return dict(zip(prompt_set.train, prompt_set.prior_prompts, strict=True))


def mesh_refined(field: PromptField, mesh_config: MeshConfig, device: torch.device | str = "cpu"):
    """The refined field's mesh: the dense meshing path, which takes a ``PromptField`` as it is."""
    from att3d.meshing.dense import extract_mesh

    field.eval()
    with torch.no_grad():
        mesh: trimesh.Trimesh = extract_mesh(field, mesh_config, field.config.bound, device)
    return mesh


def prior_bank(prior: DiffusionPrior, prior_prompt: str, device: torch.device) -> PromptBank:
    """The prior's conditioning for one prompt, in the prompt-bank form ``prior_condition`` reads."""
    from att3d.priors.view_prompts import encode_view_prompts

    view_suffixes = not prior_is_view_conditioned(prior)
    with torch.no_grad():
        text = (
            encode_view_prompts(prior.encode_text, [prior_prompt])
            if view_suffixes
            else prior.encode_text([prior_prompt])
        )
        uncond = prior.unconditional_text(1)
    empty = torch.zeros(1, 0, device=device)
    return PromptBank([prior_prompt], empty, text.to(device), uncond.to(device), view_suffixes)


def trainable_parameters(field: PromptField, config: RefineConfig) -> list[dict]:
    """Adam parameter groups: the grid always, the head unless frozen (frozen: no gradient at all)."""
    field.grid.requires_grad_(True)
    field.head.requires_grad_(not config.freeze_head)
    groups = [{"params": list(field.grid.parameters()), "lr": config.grid_lr, "name": "grid"}]
    if not config.freeze_head:
        groups.append({"params": list(field.head.parameters()), "lr": config.head_lr, "name": "head"})
    return groups


@dataclass
class _Loop:
    """The state of a refine between steps (what a checkpoint holds)."""

    target: RefineTarget
    config: RefineConfig
    optimizer: torch.optim.Adam
    generator: torch.Generator
    step: int = 0


def refine_field(
    target: RefineTarget,
    prior: DiffusionPrior,
    config: RefineConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    progress_callback: ProgressCallback | None = None,
    preview_callback: PreviewCallback | None = None,
    cancel: threading.Event | None = None,
    progress: bool = False,
) -> RefineResult:
    """Run ``config.steps`` SDS steps on ``target.field`` (in place) and return it.

    ``out_dir``: checkpoints go to ``out_dir/checkpoints`` (locked while running); ``resume`` continues
    from the newest one. ``progress``: a progress bar on a terminal, log lines on stderr otherwise.
    Setting ``cancel`` (or SIGINT/SIGTERM in the main thread) stops at the next step boundary.
    """
    from att3d.refine_state import load_refine_checkpoint, newest_refine_checkpoint, save_refine_checkpoint
    from att3d.training.loop import stop_on_signals

    field = target.field
    device = next(field.grid.parameters()).device
    loop = _Loop(
        target,
        config,
        torch.optim.Adam(trainable_parameters(field, config), betas=(0.9, 0.99), eps=1e-15),
        torch.Generator().manual_seed(config.seed),
    )
    out = Path(out_dir) if out_dir is not None else None
    cancel = cancel if cancel is not None else threading.Event()
    signalled = threading.Event()
    status, loss, started = "completed", math.nan, time.perf_counter()
    with contextlib.ExitStack() as stack:
        checkpoint = None
        if out is not None:
            stack.enter_context(lock_run_folder(out))  # before reading: one writer of the folder at a time
            if resume and (found := newest_refine_checkpoint(out)) is not None:
                load_refine_checkpoint(loop, found)
                checkpoint = found
        callbacks = _callbacks(loop, progress, progress_callback, preview_callback)
        stack.callback(close_callbacks, callbacks)
        step_fn = _step_function(loop, prior, device)
        received = stack.enter_context(stop_on_signals(signalled))
        while loop.step < config.steps:
            if cancel.is_set() or signalled.is_set():
                status = "interrupted" if signalled.is_set() or received else "cancelled"
                break
            loss = step_fn()
            loop.step += 1
            every = config.checkpoint_every
            if out is not None and every and loop.step % every == 0:
                checkpoint = save_refine_checkpoint(loop, out)
            run_callbacks(callbacks, CallbackLocation.AFTER_STEP, loop.step, {"loss/total": loss})
        if out is not None and (checkpoint is None or not checkpoint.name.endswith(f"{loop.step:07d}")):
            checkpoint = save_refine_checkpoint(loop, out)
    field.eval().requires_grad_(False)
    seconds = time.perf_counter() - started
    return RefineResult(field, status, loop.step, loss, checkpoint, seconds)


def _step_function(loop: _Loop, prior: DiffusionPrior, device: torch.device) -> Callable[[], float]:
    """One optimizer step: draw cameras, render, SDS (+ regularizer), backward, Adam."""
    from att3d.training.errors import TrainingDiverged

    target, config = loop.target, loop.config
    field = target.field
    render_config = target.model.render
    if config.samples:
        render_config = dataclasses.replace(render_config, samples_per_ray=config.samples)
    cameras_config = target.cameras or CameraSamplingConfig()
    bank = prior_bank(prior, target.prior_prompt or target.prompt, device)
    weights = torch.ones(1, 1, device=device)
    sds_config = config.sds()

    def field_fn(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [1, M, 3]
        density, albedo = field(points[0])
        return density[None], albedo[None]

    def step() -> float:
        field.train()
        cameras = sample_cameras(config.views, cameras_config, generator=loop.generator).to(device)
        out = render(
            field_fn,
            cameras,
            render_config,
            num_prompts=1,
            shading=config.shading,
            generator=loop.generator,
            bound=target.model.field.bound,
        )
        cond, uncond = prior_condition(bank, weights, cameras, config.views)
        sds = sds_loss(prior, out.rgb, cond, uncond, sds_config, loop.step, generator=loop.generator)
        loss = sds.loss
        if config.opacity_entropy_weight > 0:
            o = out.opacity.clamp(1e-5, 1.0 - 1e-5)
            loss = loss + config.opacity_entropy_weight * -(o * o.log() + (1 - o) * (1 - o).log()).mean()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TrainingDiverged(f"refine loss is {value} at step {loop.step}")
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loop.optimizer.step()
        return value

    return step


def _callbacks(
    loop: _Loop,
    progress: bool,
    progress_callback: ProgressCallback | None,
    preview_callback: PreviewCallback | None,
) -> list[TrainingCallback]:
    """Reporting, as training's callbacks: a bar or log lines, the caller's progress and previews."""
    total = loop.config.steps
    callbacks: list[TrainingCallback] = []
    if progress:
        callbacks.append(_progress_display(total, loop.step))
    if progress_callback is not None:
        report = progress_callback
        callbacks.append(TrainingCallback(lambda step, scalars: report(step, total, scalars["loss/total"])))
    if preview_callback is not None and loop.config.preview_every > 0:
        preview = preview_callback

        def show(step: int, scalars: dict[str, float]) -> None:
            loop.target.field.eval()
            with torch.no_grad():
                preview(step, loop.target.field)

        callbacks.append(TrainingCallback(show, loop.config.preview_every))
    return callbacks


def _progress_display(total: int, first: int) -> TrainingCallback:
    """tqdm on a terminal; elsewhere ``refine step 16/64  loss 0.1234  2.1 steps/s`` about 20 times a run."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=first, unit="step", dynamic_ncols=True, desc="refine")

        def update(step: int, scalars: dict[str, float]) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{scalars['loss/total']:.4g}", refresh=False)

        return TrainingCallback(update, close=bar.close)
    started = time.perf_counter()

    def line(step: int, scalars: dict[str, float]) -> None:
        rate = (step - first) / max(time.perf_counter() - started, 1e-9)
        print(
            f"refine step {step}/{total}  loss {scalars['loss/total']:.4g}  {rate:.3g} steps/s",
            file=sys.stderr,
            flush=True,
        )

    return TrainingCallback(line, max(1, total // 20))


__all__ = [
    "REFINE_STEPS_RANGE",
    "RefineConfig",
    "RefineResult",
    "RefineTarget",
    "fresh_prompt_field",
    "from_scratch_config",
    "mesh_refined",
    "refine",
    "refine_field",
    "warm_field",
]
