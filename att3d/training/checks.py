"""Training settings that cannot work, rejected before any model is built (the message names the key)."""

from __future__ import annotations

from att3d.config import ConfigError, TrainConfig


def check_train_config(config: TrainConfig) -> None:
    """Reject settings that cannot work, naming the key (before any model is built)."""

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")

    need(config.steps >= 1, "steps", f"must be >= 1, got {config.steps}")
    need(config.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1, got {config.prompts_per_step}")
    need(config.views_per_prompt >= 1, "views_per_prompt", f"must be >= 1, got {config.views_per_prompt}")
    need(config.albedo_steps >= 0, "albedo_steps", f"must be >= 0, got {config.albedo_steps}")
    probs = config.shading_probs
    need(
        min(probs) >= 0 and abs(sum(probs) - 1.0) < 1e-6,
        "shading_probs",
        f"must be 3 probabilities >= 0 (albedo, diffuse, textureless) summing to 1, got {list(probs)}",
    )
    need(0.0 <= config.interp_prob <= 1.0, "interp_prob", f"must be in [0, 1], got {config.interp_prob}")
    need(config.interp_prompts >= 2, "interp_prompts", f"must be >= 2, got {config.interp_prompts}")
    need(
        config.interp_concentration > 0,
        "interp_concentration",
        f"must be > 0, got {config.interp_concentration}",
    )
    levels = config.model.field.encoding.levels
    need(
        0 <= config.progressive_levels <= levels,
        "progressive_levels",
        f"must be in [0, {levels}] (0: off), got {config.progressive_levels}",
    )
    if 0 < config.progressive_levels < levels:
        need(config.level_steps >= 1, "level_steps", f"must be >= 1, got {config.level_steps}")
        # Masked levels are not trained; a model saved before they are all active would meet untrained
        # features at inference, where nothing is masked.
        all_active = (levels - config.progressive_levels) * config.level_steps
        need(
            all_active < config.steps,
            "progressive_levels",
            f"all {levels} levels become active only at step {all_active}, not before steps={config.steps}",
        )
    for key in ("sparsity_weight", "opacity_entropy_weight"):
        need(getattr(config, key) >= 0, key, f"must be >= 0, got {getattr(config, key)}")
    for key in ("log_every", "preview_every", "eval_every", "checkpoint_every"):
        need(getattr(config, key) >= 0, key, f"must be >= 0, got {getattr(config, key)}")
    need(config.keep_checkpoints >= 1, "keep_checkpoints", f"must be >= 1, got {config.keep_checkpoints}")
    need(config.preview_prompts >= 1, "preview_prompts", f"must be >= 1, got {config.preview_prompts}")
    need(config.preview_views >= 1, "preview_views", f"must be >= 1, got {config.preview_views}")
