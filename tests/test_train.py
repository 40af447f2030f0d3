"""The amortized SDS trainer: sampling, conditioning, end-to-end runs, resume, stops and bad configs.

Runs use a tiny field at 16×16 px with 16 samples per ray, a hash-seeded toy text encoder and a toy
analytic prior (its clean-image prediction is a flat colour decoded from the text vector), so nothing is
downloaded and a step costs a fraction of a second.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import threading

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from att3d.cameras import make_cameras
from att3d.checkpoint import load_checkpoint, load_tensors
from att3d.commands.app import app
from att3d.config import ConfigError, TrainConfig, load_config
from att3d.field import AmortizedField
from att3d.priors.base import DiffusionPrior, PriorCondition, eps_from_sample, guided
from att3d.priors.view_prompts import VIEW_SUFFIXES
from att3d.train import (
    TRAIN_STATE_FILE,
    LevelMask,
    TrainingDiverged,
    TrainingError,
    build_field,
    build_prompt_bank,
    check_train_config,
    choose_shading,
    latest_checkpoint,
    list_checkpoints,
    mix_rows,
    prior_condition,
    sample_prompt_weights,
    shard_indices,
    train,
)

TEXT_DIM = 8


class ToyEncoder:
    """Deterministic unit vectors seeded by the prompt's hash."""

    id = "toy-encoder"
    dim = TEXT_DIM

    def encode(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            seed = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)


class ToyPrior(DiffusionPrior):
    """Predicts a flat image of colour ``tanh(10 text[:3])`` (near-saturated); records its conditions."""

    space = "pixel"
    view_conditioned = True

    def __init__(self, size: int = 16) -> None:
        self.image_size = size
        self.num_train_timesteps = 1000
        self.alphas_cumprod = torch.cumprod(1.0 - torch.linspace(1e-4, 0.02, 1000), dim=0)
        self.encoder = ToyEncoder()
        self.conditions: list[PriorCondition] = []

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.encoder.encode(prompts)

    def unconditional_text(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, TEXT_DIM)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0

    def noise_pred(self, x_t, t, cond, uncond, guidance_scale):
        self.conditions.append(cond)

        def flat(text: torch.Tensor) -> torch.Tensor:
            return torch.tanh(10 * text[:, :3])[:, :, None, None].expand_as(x_t)

        x0 = guided(flat(uncond.text), flat(cond.text), guidance_scale)
        return eps_from_sample(x_t, x0, self.alphas_cumprod[t])


TINY = [
    f"model.field.text_dim={TEXT_DIM}",
    "model.field.num_bases=4",
    "model.field.hidden_dim=16",
    "model.field.hidden_layers=1",
    "model.field.encoding.levels=4",
    "model.field.encoding.log2_table_size=10",
    "model.field.encoding.base_resolution=8",
    "model.render.image_size=16",
    "model.render.samples_per_ray=16",
    "prompts.prompts=[a red cube, a blue cone, a green ball]",
    "prompts_per_step=2",
    "device=cpu",
    "log_every=0",
    "preview_every=0",
    "progress_bar=false",
    "sds.guidance_scale=1",
]


def tiny_config(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, overrides=[*TINY, *overrides])


def run_train(config: TrainConfig, out, **kwargs):
    return train(config, out, prior=kwargs.pop("prior", ToyPrior()), text_encoder=ToyEncoder(), **kwargs)


def weights_of(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).tensors


# --------------------------------------------------------------------------------------------------
# Sampling and conditioning
# --------------------------------------------------------------------------------------------------


def test_prompt_weights_lie_on_the_simplex_and_mix_the_right_number_of_prompts():
    config = tiny_config("interp_prob=0.5", "interp_prompts=3")
    rng = np.random.Generator(np.random.PCG64(0))
    weights = sample_prompt_weights(4000, [0, 2], 5, config, rng)
    assert weights.shape == (4000, 5)
    assert (weights >= 0).all()
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)
    nonzero = (weights > 0).sum(axis=1)
    assert set(np.unique(nonzero)) == {1, 3}
    assert abs((nonzero == 3).mean() - 0.5) < 0.03
    plain = weights[nonzero == 1]
    assert set(np.flatnonzero(plain.sum(axis=0))) == {0, 2}  # plain prompts come from the shard only
    # Dirichlet(1) on 3 prompts: each weight has mean 1/3.
    mixed = weights[nonzero == 3]
    assert abs(mixed[mixed > 0].mean() - 1 / 3) < 0.01


def test_concentrated_dirichlet_gives_even_mixes_and_zero_probability_none():
    rng = np.random.Generator(np.random.PCG64(1))
    even = sample_prompt_weights(
        200, [0, 1], 2, tiny_config("interp_prob=1", "interp_concentration=1000"), rng
    )
    np.testing.assert_allclose(even, 0.5, atol=0.06)
    plain = sample_prompt_weights(200, [0, 1, 2], 3, tiny_config("interp_prob=0"), rng)
    assert ((plain > 0).sum(axis=1) == 1).all()


def test_field_and_prior_get_the_same_mix():
    encoder = ToyEncoder()
    prior = ToyPrior()
    prompts = ["a red cube", "a blue cone", "a green ball"]
    bank = build_prompt_bank(prompts, encoder, prior, torch.device("cpu"))
    weights = torch.tensor([[0.25, 0.75, 0.0], [0.0, 0.0, 1.0]])
    table = encoder.encode(prompts)
    expected = torch.stack([0.25 * table[0] + 0.75 * table[1], table[2]])
    torch.testing.assert_close(mix_rows(weights, bank.embeddings), expected)

    cameras = make_cameras([0, 10, 20, 30], [0, 90, 180, 270])
    cond, uncond = prior_condition(bank, weights, cameras, views=2)
    torch.testing.assert_close(cond.text, expected.repeat_interleave(2, dim=0))  # prompt-major
    assert cond.cameras is cameras and uncond.cameras is cameras
    torch.testing.assert_close(uncond.text, torch.zeros(4, TEXT_DIM))


def test_text_only_priors_get_view_suffixed_conditioning():
    class TextOnlyPrior(ToyPrior):
        """Token-sequence conditioning [N, L=2, D], like the hub priors."""

        view_conditioned = False

        def encode_text(self, prompts):
            return self.encoder.encode(prompts)[:, None, :].repeat(1, 2, 1)

    prior = TextOnlyPrior()
    bank = build_prompt_bank(["a red cube", "a blue cone"], ToyEncoder(), prior, torch.device("cpu"))
    assert bank.view_suffixes and bank.prior_text.shape == (2, len(VIEW_SUFFIXES), 2, TEXT_DIM)
    cameras = make_cameras([0, 0, 80], [0, 180, 0])  # front, back, overhead
    weights = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    # One view per prompt here, so camera i belongs to prompt i.
    cond, _ = prior_condition(bank, weights, cameras, views=1)
    enc = ToyEncoder()
    front = 0.5 * enc.encode(["a red cube, front view"]) + 0.5 * enc.encode(["a blue cone, front view"])
    back = 0.5 * enc.encode(["a red cube, back view"]) + 0.5 * enc.encode(["a blue cone, back view"])
    overhead = enc.encode(["a red cube, overhead view"])
    expected = torch.cat([front, back, overhead])[:, None, :].repeat(1, 2, 1)
    torch.testing.assert_close(cond.text, expected)
    assert cond.cameras is cameras


def test_shading_schedule():
    rng = np.random.Generator(np.random.PCG64(0))
    config = tiny_config("albedo_steps=5", "shading_probs=[0.0, 0.25, 0.75]")
    assert {choose_shading(s, config, rng) for s in range(5)} == {"albedo"}
    later = [choose_shading(100, config, rng) for _ in range(2000)]
    assert set(later) == {"diffuse", "textureless"}
    assert abs(later.count("textureless") / 2000 - 0.75) < 0.04


def test_prompt_shards_cover_the_set_once():
    shards = [shard_indices(7, r, 3) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert shard_indices(1, 1, 2) == [0]  # fewer prompts than ranks: everyone trains on all


def test_level_mask_hides_fine_levels_until_their_step():
    config = tiny_config()
    field = build_field(config.model.field, seed=0, device=torch.device("cpu")).eval()
    mask = LevelMask(field, start_levels=1, level_steps=10)
    points = torch.rand(1, 64, 3) * 0.8 - 0.4
    embedding = torch.randn(1, TEXT_DIM)

    # A masked level's features are zero at the head's input, so the head weights reading them get no
    # gradient. (Its table still reaches the output through sigma_max of the spectral norm.)
    def head_input_grads(step: int) -> list[bool]:
        mask.set_step(step)
        field.zero_grad()
        field(points, embedding)[0].sum().backward()
        weight_grad = field.head.mlp[0].weight.grad.abs().sum(dim=0).view(4, -1).sum(dim=1)
        return (weight_grad > 0).tolist()

    assert head_input_grads(0) == [True, False, False, False]
    assert head_input_grads(15) == [True, True, False, False]
    assert head_input_grads(30) == [True, True, True, True]
    assert mask.active_at(25) == 3 and mask.active_at(1000) == 4
    mask.remove()
    assert head_input_grads(0) == [True] * 4


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


def test_training_runs_and_writes_a_loadable_checkpoint(tmp_path):
    progress = []
    evaluated = []
    config = tiny_config(
        "steps=3",
        "interp_prob=0.5",
        "albedo_steps=2",
        "checkpoint_every=2",
        "preview_every=3",
        "eval_every=3",
        "sparsity_weight=0.1",
        "opacity_entropy_weight=0.1",
        "progressive_levels=2",
        "level_steps=1",
    )
    prior = ToyPrior()
    result = run_train(
        config,
        tmp_path,
        prior=prior,
        progress_callback=lambda step, total, loss: progress.append((step, total, loss)),
        evaluator=lambda field, step: evaluated.append(step) or {"score": 0.5},
    )
    assert result.status == "completed" and result.step == 3
    assert [p[:2] for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(math.isfinite(p[2]) and p[2] > 0 for p in progress)
    assert evaluated == [3]
    assert (tmp_path / "eval.jsonl").read_text().strip() == '{"step": 3, "score": 0.5}'
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]
    assert (tmp_path / "config.yaml").is_file()

    from PIL import Image

    preview = Image.open(tmp_path / "previews" / "step_0000003.png")
    assert preview.size == (4 * 16, 3 * 16)  # 4 views × 3 prompts of 16 px

    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.prompts == ["a red cube", "a blue cone", "a green ball"]
    assert ckpt.text_encoder == "toy-encoder"
    assert ckpt.metadata["step"] == 3 and ckpt.metadata["train_config"]["steps"] == 3
    assert ckpt.config["field"]["text_dim"] == TEXT_DIM
    field = AmortizedField(config.model.field)
    field.load_state_dict(ckpt.tensors)  # strict: the checkpoint is exactly the field
    assert any(k.startswith("optim.") for k in load_tensors(result.checkpoint / TRAIN_STATE_FILE))

    # Every step conditioned the prior on 2 prompts × 1 view, with cameras.
    assert len(prior.conditions) == 3
    assert all(c.text.shape == (2, TEXT_DIM) and len(c.cameras) == 2 for c in prior.conditions)


def test_sds_pulls_the_field_towards_the_prior_colour(tmp_path):
    """The toy prior wants a flat image of one colour; a few steps must move the object's albedo there."""
    prompt = "a red cube"
    embedding = ToyEncoder().encode([prompt])
    target = (torch.tanh(10 * embedding[0, :3]) + 1) / 2  # the prior's colour in [0, 1]
    config = tiny_config(
        f"prompts.prompts=[{prompt}]",
        "prompts_per_step=1",
        "albedo_steps=100",
        "optim.grid_lr=0.05",
        "optim.network_lr=0.05",
        "steps=8",
        "checkpoint_every=1",
        "keep_checkpoints=10",
    )
    run_train(config, tmp_path)
    points = torch.rand(1, 256, 3, generator=torch.Generator().manual_seed(0)) * 0.5 - 0.25  # in the blob

    def albedo_error(step: int) -> float:
        field = AmortizedField(config.model.field)
        field.load_state_dict(weights_of(tmp_path / "checkpoints" / f"step_{step:07d}"))
        with torch.no_grad():
            albedo = field.eval()(points, embedding)[1][0]
        return (albedo - target).abs().mean().item()

    first, last = albedo_error(1), albedo_error(8)
    assert first > 0.3  # starts far from the target (sigmoid(0) = 0.5 grey)
    assert last < 0.25 * first


def test_cancel_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    config = tiny_config(
        "steps=4",
        "prompts_per_step=1",
        "interp_prob=0.5",
        "shading_probs=[0.0, 0.5, 0.5]",
        "model.render.image_size=8",  # exactness does not depend on size; normals make steps costly
    )
    straight = run_train(config, tmp_path / "straight")

    cancel = threading.Event()

    def stop_after_two(step: int, total: int, loss: float) -> None:
        if step == 2:
            cancel.set()

    stopped = run_train(config, tmp_path / "resumed", progress_callback=stop_after_two, cancel=cancel)
    assert stopped.status == "cancelled" and stopped.step == 2
    assert stopped.checkpoint.name == "step_0000002"

    resumed = run_train(config, tmp_path / "resumed", resume=True)
    assert resumed.status == "completed" and resumed.step == 4
    a, b = weights_of(straight.checkpoint), weights_of(resumed.checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    sa = load_tensors(straight.checkpoint / TRAIN_STATE_FILE)
    sb = load_tensors(resumed.checkpoint / TRAIN_STATE_FILE)
    for name in sa:
        if name.startswith("optim."):
            assert torch.equal(sa[name], sb[name]), name
    assert resumed.loss == straight.loss


def test_sigterm_saves_a_checkpoint_and_reports_the_signal(tmp_path):
    def send_sigterm(step: int, total: int, loss: float) -> None:
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    config = tiny_config("steps=5", "albedo_steps=10", "preview_every=4")
    result = run_train(config, tmp_path, progress_callback=send_sigterm)
    assert result.status == "interrupted" and result.signal == signal.SIGTERM
    assert result.step == 1
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1]
    assert (tmp_path / "previews" / "step_0000001.png").is_file()  # a last preview of where it stopped
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    class BreaksAtStepFour(ToyPrior):
        calls = 0

        def encode_images(self, images):
            self.calls += 1
            return images * (math.nan if self.calls == 4 else 2.0) - 1.0

    config = tiny_config(
        "steps=6", "checkpoint_every=1", "keep_checkpoints=2", "albedo_steps=10", "prompts_per_step=1"
    )
    with pytest.raises(
        TrainingDiverged, match=r"loss is nan at step 3 .*last good checkpoint: .*step_0000003"
    ):
        run_train(config, tmp_path, prior=BreaksAtStepFour())
    # Pruned to the newest two; nothing was written for the diverged step.
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 3]


# --------------------------------------------------------------------------------------------------
# Bad configs and bad resumes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["steps=0"], "steps: must be >= 1"),
        (["shading_probs=[0.5, 0.6, 0.0]"], "shading_probs: must be 3 probabilities"),
        (["interp_prob=1.5"], r"interp_prob: must be in \[0, 1\]"),
        (["interp_prompts=1"], "interp_prompts: must be >= 2"),
        (["progressive_levels=9"], r"progressive_levels: must be in \[0, 4\]"),
        (
            ["progressive_levels=2", "level_steps=50", "steps=60"],
            "all 4 levels become active only at step 100",
        ),
        (["keep_checkpoints=0"], "keep_checkpoints: must be >= 1"),
    ],
)
def test_bad_training_settings_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_train_config(tiny_config(*overrides))


def test_setup_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="prompt set is empty"):
        run_train(tiny_config("prompts.prompts=[]"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"prompt file not found: /missing/prompts.txt"):
        run_train(tiny_config("prompts.source=file", "prompts.path=/missing/prompts.txt"), tmp_path / "b")
    with pytest.raises(ConfigError, match="interpolants mix 2 prompts but the set has 1"):
        run_train(tiny_config("prompts.prompts=[a cube]", "interp_prob=0.5"), tmp_path / "c")
    with pytest.raises(
        ConfigError, match=r"model.field.text_dim is 16 but text encoder 'toy-encoder' gives 8-d"
    ):
        run_train(tiny_config("model.field.text_dim=16"), tmp_path / "d")


def test_existing_run_needs_resume_and_resume_checks_the_model(tmp_path):
    run_train(tiny_config("steps=1", "prompts_per_step=1", "albedo_steps=10"), tmp_path)
    with pytest.raises(TrainingError, match=r"already holds checkpoints .*pass --resume"):
        run_train(tiny_config("steps=2"), tmp_path)
    with pytest.raises(TrainingError, match=r"model config differs at 'model.field.num_bases'"):
        run_train(tiny_config("steps=2", "model.field.num_bases=2"), tmp_path, resume=True)
    with pytest.raises(TrainingError, match="training prompt set differs"):
        run_train(tiny_config("steps=2", "prompts.prompts=[a cube]"), tmp_path, resume=True)


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path):
    config = tiny_config("steps=2", "checkpoint_every=1", "prompts_per_step=1", "albedo_steps=10")
    run_train(config, tmp_path)
    with open(tmp_path / "checkpoints" / "step_0000002" / "model.safetensors", "ab") as f:
        f.write(b"garbage")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_0000001"
    resumed = run_train(config, tmp_path, resume=True)
    assert resumed.status == "completed" and resumed.step == 2


def test_cli_reports_bad_configs_with_exit_code_2(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("stpes: 10\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2
    assert "unknown config key: stpes" in result.output
    good = tmp_path / "good.yaml"
    good.write_text("prompts: {source: file, path: /missing/prompts.txt}\n")
    result = runner.invoke(app, ["train", str(good), "device=cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "prompt file not found: /missing/prompts.txt" in result.output
    result = runner.invoke(app, ["train", str(good), "steps"])
    assert result.exit_code == 2
    assert "override 'steps' is not of the form key=value" in result.output
