"""The trainer end to end: checkpoints, previews, evaluation, resume, stops, divergence, setup errors."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file
from training_toys import TEXT_DIM, ToyEncoder, ToyPrior, run_train, tiny_config, weights_of

from att3d.checkpoint import load_checkpoint, load_tensors
from att3d.config import ConfigError
from att3d.field import AmortizedField
from att3d.training.errors import TrainingDiverged, TrainingError
from att3d.training.run_folder import TRAIN_STATE_FILE, latest_checkpoint, list_checkpoints


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


@pytest.mark.parametrize(
    "extra",
    [[], ["occupancy.enabled=true", "occupancy.update_every=2", "occupancy.resolution=8"]],
    ids=["plain", "occupancy-grid"],
)
def test_cancel_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, extra):
    config = tiny_config(
        "steps=4",
        "prompts_per_step=1",
        "interp_prob=0.5",
        "shading_probs=[0.0, 0.5, 0.5]",
        "model.render.image_size=8",  # exactness does not depend on size; normals make steps costly
        *extra,
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
        if name.startswith(("optim.", "occupancy.")):
            assert torch.equal(sa[name], sb[name]), name
    assert ("occupancy.values" in sa) == bool(extra)
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


def test_resume_compares_a_manifest_written_before_a_field_was_added():
    from att3d.config import ModelConfig, to_dict
    from att3d.training.state import stored_model_config

    current = to_dict(ModelConfig())
    older = to_dict(ModelConfig())
    del older["text"]["unknown_words"]  # what a manifest written before that field holds
    assert stored_model_config(older) == current
    assert stored_model_config({"field": {"num_bases": "many"}}) == {"field": {"num_bases": "many"}}


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path):
    config = tiny_config("steps=2", "checkpoint_every=1", "prompts_per_step=1", "albedo_steps=10")
    run_train(config, tmp_path)
    with open(tmp_path / "checkpoints" / "step_0000002" / "model.safetensors", "ab") as f:
        f.write(b"garbage")
    assert latest_checkpoint(tmp_path) == (1, tmp_path / "checkpoints" / "step_0000001")
    resumed = run_train(config, tmp_path, resume=True)
    assert resumed.status == "completed" and resumed.step == 2


def test_resume_refuses_weights_the_config_does_not_describe(tmp_path):
    # A checkpoint rewritten with other shapes and a matching checksum: refused by name, not a traceback.
    config = tiny_config("steps=1", "prompts_per_step=1", "albedo_steps=10")
    run_train(config, tmp_path)
    ckpt = tmp_path / "checkpoints" / "step_0000001"
    tensors = load_file(ckpt / "model.safetensors")
    tensors["head.mlp.0.weight"] = torch.zeros(3, 14)
    save_file(tensors, ckpt / "model.safetensors")
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["weights_sha256"] = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(TrainingError, match=r"cannot resume: .*'head\.mlp\.0\.weight' is \[3, 14\]"):
        run_train(tiny_config("steps=2", "prompts_per_step=1", "albedo_steps=10"), tmp_path, resume=True)


def test_init_from_starts_a_new_prompt_set_from_another_runs_weights(tmp_path):
    first = run_train(tiny_config("steps=1", "prompts_per_step=1", "albedo_steps=10"), tmp_path / "a")
    source = first.checkpoint
    warm = tiny_config(
        "steps=1",
        "prompts_per_step=1",
        "albedo_steps=0",
        "albedo_smoothness_weight=1.0",
        "model.render.normals=forward",
        "prompts.prompts=[a crimson box, a navy ball]",
        f"init_from={source}",
        "optim.grid_lr=0",
        "optim.network_lr=0",
    )
    result = run_train(warm, tmp_path / "b")
    assert result.status == "completed" and result.step == 1
    # With zero learning rates the warm-started weights are the source's, under a new prompt set.
    before, after = (
        load_file(source / "model.safetensors"),
        load_file(result.checkpoint / "model.safetensors"),
    )
    for name in before:
        if not name.endswith(("_sn_u", "._u", "._v")):  # spectral norm's power iteration moves every step
            torch.testing.assert_close(after[name], before[name], msg=name)
    assert load_checkpoint(result.checkpoint).prompts == ["a crimson box", "a navy ball"]

    with pytest.raises(
        TrainingError, match=r"init_from: .* another field config \(differs at 'model.field.num_bases'\)"
    ):
        run_train(tiny_config("steps=1", "model.field.num_bases=2", f"init_from={source}"), tmp_path / "c")
    with pytest.raises(TrainingError, match=r"init_from: .*nowhere"):
        run_train(tiny_config("steps=1", f"init_from={tmp_path / 'nowhere'}"), tmp_path / "d")
