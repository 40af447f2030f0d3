"""The settings of a refine (``att3d.refine``): one validated dataclass, each field documented and bounded.

The defaults are the warm-start schedule (low timesteps, training's grid learning rate, a frozen head);
:func:`from_scratch_config` is training's per-prompt schedule, the baseline a refine is measured against.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StrictBool, StrictInt, model_validator

from att3d.config import SDSConfig
from att3d.config_validation import (
    Fraction,
    KeyProblem,
    NonNegativeInt,
    NonNegativeNumber,
    PositiveNumber,
    config_dataclass,
)

REFINE_STEPS_RANGE = (1, 10_000)
"""Inclusive bounds of ``RefineConfig.steps`` (the CLI and the job API check against the same)."""


@config_dataclass("refine")
class RefineConfig:
    """Per-prompt SDS from a warm start (the defaults) or, with training's schedule, from scratch."""

    steps: Annotated[StrictInt, Field(ge=REFINE_STEPS_RANGE[0], le=REFINE_STEPS_RANGE[1])] = 64
    """Optimizer steps, 1..10000."""
    grid_lr: Annotated[PositiveNumber, Field(le=1.0)] = 1e-2
    """Adam learning rate of the prompt's hash grid (training's; 3e-3 moved a bad preview a third as far in
    24 steps, scripts/bench_refine.py)."""
    head_lr: Annotated[PositiveNumber, Field(le=1.0)] = 1e-4
    """Adam learning rate of the (copied) MLP head when ``freeze_head`` is false (training's is 1e-3: the
    head serves every shape the grid can take, so a warm start moves it gently)."""
    freeze_head: StrictBool = True
    """Keep the shared head fixed: only the prompt's grid moves (the head stays the one the grid was
    trained to feed)."""
    t_min: Fraction = 0.02
    """Smallest SDS timestep, as a fraction of the prior's schedule."""
    t_max: Fraction = 0.5
    """Largest SDS timestep after annealing (and from the start when ``t_anneal_steps`` is 0): a warm
    start keeps to low noise levels, which refine detail and colour rather than re-draw the shape."""
    t_max_start: Fraction = 0.5
    """Largest timestep at step 0 (from scratch: 0.98, annealed down to ``t_max``)."""
    t_anneal_steps: NonNegativeInt = 0
    """Steps over which the largest timestep goes from ``t_max_start`` to ``t_max`` (0: no annealing)."""
    guidance_scale: Annotated[PositiveNumber, Field(le=100.0)] = 7.5
    """Classifier-free guidance scale of the prior."""
    views: Annotated[StrictInt, Field(ge=1, le=16)] = 4
    """Views rendered per step (random cameras from the training ranges)."""
    samples: Annotated[StrictInt, Field(ge=0, le=256)] = 0
    """Samples per ray (0: the model's ``render.samples_per_ray``)."""
    prior_text: Literal["prompt", "nearest"] = "nearest"
    """What the prior is conditioned on: ``prompt`` (the words as given, as per-prompt SDS does) or
    ``nearest``: for a prompt outside the prior's closed vocabulary (``DiffusionPrior.known_prompts``), the
    prior prompt of the generator's nearest training prompt (``att3d.refine.known_prior_prompt``); known
    prompts, and every prompt of an open-vocabulary prior, stay as given. The bundled ShapesWorld prior
    reads an unknown word as little more than noise: with ``prompt``, 64 steps took "matte apricot ball"
    from IoU 0.89 to 0.50 and the 10 worst previews' mean down; ``nearest`` kept it at 0.86 and raised them
    (docs/BENCHMARKS.md, scripts/bench_refine.py)."""
    shading: Literal["diffuse", "albedo", "textureless"] = "diffuse"
    """Shading of the renders the prior sees."""
    opacity_entropy_weight: NonNegativeNumber = 0.0
    """Weight of the opacity-entropy regularizer (pushes pixels to fully empty or fully covered)."""
    seed: StrictInt = 0
    """Seed of the cameras, ray jitter, timesteps and noise (a resumed refine continues the stream)."""
    preview_every: NonNegativeInt = 0
    """Call the preview callback every this many steps (0: never)."""
    checkpoint_every: NonNegativeInt = 0
    """Save a resumable checkpoint every this many steps (0: only when the refine stops or ends)."""

    @model_validator(mode="after")
    def _t_range(self) -> RefineConfig:
        for name in ("t_max", "t_max_start"):
            if getattr(self, name) <= self.t_min:
                raise KeyProblem(name, f"must be > t_min ({self.t_min}), got {getattr(self, name)}")
        return self

    def sds(self) -> SDSConfig:
        """The SDS settings of this refine (``att3d.sds``)."""
        return SDSConfig(
            guidance_scale=self.guidance_scale,
            t_min=self.t_min,
            t_max_start=self.t_max_start,
            t_max_end=self.t_max,
            t_anneal_steps=self.t_anneal_steps,
        )


def from_scratch_config(steps: int, **overrides: object) -> RefineConfig:
    """Training's per-prompt schedule (full t range annealed over half the run, training's learning rates,
    a trainable head): per-prompt DreamFusion, the baseline a refine is measured against."""
    values: dict[str, object] = {
        "steps": steps,
        "grid_lr": 1e-2,
        "head_lr": 1e-3,
        "freeze_head": False,
        "t_max_start": 0.98,
        "t_max": 0.5,
        "t_anneal_steps": max(1, steps // 2),
    }
    return RefineConfig(**(values | overrides))  # type: ignore[arg-type]
