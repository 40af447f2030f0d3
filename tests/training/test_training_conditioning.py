"""What a training step is conditioned on: prompt weights, mixes, view suffixes, shading, shards, levels."""

from __future__ import annotations

import numpy as np
import torch
from training_toys import TEXT_DIM, ToyEncoder, ToyPrior, tiny_config

from att3d.cameras import make_cameras
from att3d.priors.view_prompts import VIEW_SUFFIXES
from att3d.training.conditioning import (
    LevelMask,
    build_prompt_bank,
    choose_shading,
    mix_rows,
    prior_condition,
    sample_prompt_weights,
)
from att3d.training.distributed import shard_indices
from att3d.training.setup import build_field


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


def test_prior_prompts_condition_the_prior_while_the_field_sees_the_free_wording():
    encoder, prior = ToyEncoder(), ToyPrior()
    prompts = ["a crimson box", "a scarlet cube", "a blue cone"]
    taught = ["a red cube", "a red cube", "a blue cone"]
    bank = build_prompt_bank(prompts, encoder, prior, torch.device("cpu"), prior_prompts=taught)
    torch.testing.assert_close(bank.embeddings, encoder.encode(prompts))
    torch.testing.assert_close(bank.prior_text, encoder.encode(taught))
    cond, _ = prior_condition(bank, torch.tensor([[0.5, 0.0, 0.5]]), make_cameras([0], [0]), views=1)
    torch.testing.assert_close(
        cond.text, 0.5 * encoder.encode(["a red cube"]) + 0.5 * encoder.encode(["a blue cone"])
    )


def test_prior_prompts_must_align_with_the_prompts():
    import pytest

    from att3d.prompts import PromptSet, PromptSetError

    with pytest.raises(ValueError, match="2 prior prompts for 3 prompts"):
        build_prompt_bank(
            ["a", "b", "c"], ToyEncoder(), ToyPrior(), torch.device("cpu"), prior_prompts=["a", "b"]
        )
    with pytest.raises(PromptSetError, match="prior_prompts has 1 entries for 2 training prompts"):
        PromptSet(train=("a", "b"), prior_prompts=("a",))
    assert PromptSet(train=("a", "b")).prior_text == ("a", "b")


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
