"""Training settings that cannot work are rejected before any model is built, naming the key."""

from __future__ import annotations

import pytest
from training_toys import tiny_config

from att3d.config import ConfigError
from att3d.training.checks import check_train_config


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
