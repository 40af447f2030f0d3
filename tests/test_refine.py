"""``att3d.refine``: per-prompt SDS from the amortized output, on the tiny generator and the toy prior."""

from __future__ import annotations

import threading

import pytest
import torch
from server_fakes import tiny_generator
from training.training_toys import ToyPrior

from att3d.cameras import orbit_cameras
from att3d.config import ConfigError
from att3d.refine import (
    RefineConfig,
    RefineTarget,
    fresh_prompt_field,
    from_scratch_config,
    known_prior_prompt,
    mesh_refined,
    refine,
    refine_field,
    warm_field,
)
from att3d.render import render

PROMPT = "a red cube"
FAST = {"views": 2, "samples": 12, "grid_lr": 1e-1, "shading": "albedo"}
"""Tiny renders and a larger step than the default, so a few steps move the field measurably."""


@pytest.fixture(scope="module")
def generator():
    return tiny_generator()


def _target(generator) -> RefineTarget:
    return RefineTarget(PROMPT, warm_field(generator, PROMPT), generator.config)


def _distance_to_prior(field, prior: ToyPrior, target: RefineTarget) -> float:
    """Mean distance of the object's albedo in renders (opaque pixels) to the toy prior's flat colour."""
    colour = (torch.tanh(10 * prior.encode_text([PROMPT])[0, :3]) + 1) / 2
    field.eval()
    with torch.no_grad():
        out = render(
            lambda p: tuple(x[None] for x in field(p[0])),
            orbit_cameras(4, elevation=20.0, distance=2.8, fovy=40.0),
            target.model.render,
            shading="albedo",
            perturb=False,
            image_size=16,
        )
    inside = out.opacity[:, 0] > 0.5
    assert inside.sum() > 20  # the seeded tiny field is a blob in the middle of the views
    return float((out.rgb.permute(0, 2, 3, 1)[inside] - colour).abs().mean())


def _tables(field) -> list[torch.Tensor]:
    return [t.detach().clone() for t in field.grid.tables]


def test_a_few_steps_move_the_field_toward_the_prior_and_keep_shapes(generator):
    prior = ToyPrior(size=16)
    target = _target(generator)
    before, head_before = (
        _tables(target.field),
        {k: v.clone() for k, v in target.field.head.state_dict().items()},
    )
    distance_before = _distance_to_prior(target.field, prior, target)
    result = refine_field(target, prior, RefineConfig(steps=12, **FAST))
    assert result.status == "completed" and result.step == 12 and result.field is target.field
    after = _tables(result.field)
    assert [t.shape for t in after] == [t.shape for t in before]
    assert all(t.dtype == torch.float32 for t in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert _distance_to_prior(result.field, prior, target) < distance_before - 0.01
    # The head is frozen by default: unchanged, and no gradient was even computed for it.
    for key, value in result.field.head.state_dict().items():
        assert torch.equal(value, head_before[key]), key
    assert all(p.grad is None for p in result.field.head.parameters())
    # The generator's own field is untouched (the refined field owns copies of grid and head).
    again = warm_field(generator, PROMPT)
    assert all(torch.equal(a, b) for a, b in zip(_tables(again), before, strict=True))


def test_an_unfrozen_head_moves_faster_but_the_generators_does_not(generator):
    shared = {k: v.clone() for k, v in generator.field.head.state_dict().items()}
    prior, target = ToyPrior(size=16), _target(generator)
    distance_before = _distance_to_prior(target.field, prior, target)
    config = RefineConfig(steps=12, freeze_head=False, head_lr=1e-2, **FAST)
    result = refine_field(target, prior, config)
    assert _distance_to_prior(result.field, prior, target) < distance_before - 0.1
    moved = result.field.head.state_dict()
    assert any(not torch.equal(moved[k], shared[k]) for k in shared)
    assert all(torch.equal(v, shared[k]) for k, v in generator.field.head.state_dict().items())


def test_cancel_stops_at_a_step_boundary_and_resume_is_exact(generator, tmp_path):
    prior = ToyPrior(size=16)
    config = RefineConfig(steps=4, **FAST)
    straight = refine_field(_target(generator), prior, config, out_dir=tmp_path / "straight")
    assert straight.checkpoint is not None and straight.checkpoint.name == "step_0000004"

    cancel = threading.Event()

    def stop_after_two(step: int, total: int, loss: float) -> None:
        assert total == 4 and loss == loss  # finite
        if step == 2:
            cancel.set()

    run = tmp_path / "stopped"
    stopped = refine_field(
        _target(generator), prior, config, out_dir=run, progress_callback=stop_after_two, cancel=cancel
    )
    assert stopped.status == "cancelled" and stopped.step == 2
    assert stopped.checkpoint is not None and stopped.checkpoint.name == "step_0000002"
    resumed = refine_field(_target(generator), prior, config, out_dir=run, resume=True)
    assert resumed.status == "completed" and resumed.step == 4
    for a, b in zip(_tables(resumed.field), _tables(straight.field), strict=True):
        assert torch.equal(a, b)


def test_previews_come_every_n_steps_and_the_result_meshes(generator):
    seen: list[int] = []
    config = RefineConfig(steps=4, preview_every=2, **FAST)
    result = refine(
        generator, PROMPT, config, ToyPrior(size=16), preview_callback=lambda step, field: seen.append(step)
    )
    assert seen == [2, 4]
    mesh = mesh_refined(result.field, generator.config.mesh)
    assert len(mesh.faces) > 0 and mesh.visual.vertex_colors.shape[1] == 4


def test_config_bounds_name_the_field():
    with pytest.raises(ConfigError, match=r"refine\.steps"):
        RefineConfig(steps=0)
    with pytest.raises(ConfigError, match=r"refine\.steps"):
        RefineConfig(steps=10_001)
    with pytest.raises(ConfigError, match="t_max: must be > t_min"):
        RefineConfig(t_min=0.5, t_max=0.4)
    scratch = from_scratch_config(256)
    assert scratch.sds().t_max_start == 0.98 and scratch.t_anneal_steps == 128 and not scratch.freeze_head


def test_a_fresh_field_is_the_untrained_baseline(generator):
    field = fresh_prompt_field(generator.config, seed=1)
    assert [t.shape for t in field.grid.tables] == [
        t.shape for t in warm_field(generator, PROMPT).grid.tables
    ]
    assert max(float(t.abs().max()) for t in field.grid.tables) <= 1e-4  # training's initial scale


class ClosedVocabularyPrior(ToyPrior):
    """A toy prior that knows three prompts and records what it is conditioned on."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def known_prompts(self) -> list[str]:
        return ["a red cube", "a blue sphere", "a green cone"]

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        self.seen.extend(prompts)
        return super().encode_text(prompts)


def test_prior_text_nearest_conditions_a_closed_prior_on_a_prompt_it_knows(generator):
    closed = ClosedVocabularyPrior()
    assert known_prior_prompt(generator, ToyPrior(), "a shiny red cube") is None  # open vocabulary
    assert known_prior_prompt(generator, closed, "a green cone") is None  # known: kept as given
    nearest = generator.familiarity("a shiny red cube").nearest
    assert nearest in ("a red cube", "a blue sphere")  # the generator's training prompts
    assert known_prior_prompt(generator, closed, "a shiny red cube") == nearest

    config = RefineConfig(steps=1, prior_text="nearest", **FAST)
    refine(generator, "a shiny red cube", config, prior=closed)
    assert nearest in closed.seen and "a shiny red cube" not in closed.seen
    closed.seen.clear()
    refine(generator, "a shiny red cube", RefineConfig(steps=1, prior_text="prompt", **FAST), prior=closed)
    assert "a shiny red cube" in closed.seen
    assert RefineConfig().prior_text == "nearest"  # the default: as given only for an open vocabulary
    with pytest.raises(ConfigError, match=r"refine\.prior_text"):
        RefineConfig(prior_text="canonical")


def test_the_bundled_models_training_wordings_map_to_their_objects_prior_prompts():
    from att3d.generate import Generator
    from att3d.refine import training_prior_prompts
    from att3d.shapes.world import parse_prompt

    mapping = training_prior_prompts(Generator.default())
    assert len(mapping) == 1960  # 40 wordings of 49 objects (configs/shapes_default.yaml)
    for wording, prior_prompt in list(mapping.items())[::97]:
        assert parse_prompt(wording) == parse_prompt(prior_prompt) and prior_prompt.startswith("a")
