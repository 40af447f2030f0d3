"""View-dependent prompt suffixes and the per-string embedding cache of the text-only (hub) priors."""

from __future__ import annotations

import pytest
import torch
from tiny_hub_components import (
    TEXT_DIM,
    TOKENS,
    CharTokenizer,
    sd_scheduler,
    tiny_clip,
    tiny_sd_unet,
    tiny_vae,
)

from att3d.cameras import make_cameras
from att3d.priors.stable_diffusion import StableDiffusionPrior
from att3d.priors.view_prompts import (
    BACK,
    FRONT,
    OVERHEAD,
    SIDE,
    VIEW_SUFFIXES,
    condition_for,
    encode_view_prompts,
    view_index,
)


def test_view_index_by_elevation_and_azimuth() -> None:
    elevation = [0, 10, 0, 0, 0, 0, 0, 30, 70, 59]
    azimuth = [0, 44, 45, 90, -90, 136, -170, 350, 180, 180]
    expected = [FRONT, FRONT, SIDE, SIDE, SIDE, BACK, BACK, FRONT, OVERHEAD, BACK]
    assert view_index(make_cameras(elevation, azimuth)).tolist() == expected
    assert VIEW_SUFFIXES[BACK] == ", back view" and VIEW_SUFFIXES[OVERHEAD] == ", overhead view"


def test_condition_for_gathers_per_camera_view() -> None:
    cameras = make_cameras([0, 0, 80], [180, 0, 0])
    by_view = torch.arange(len(VIEW_SUFFIXES), dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 3)
    cond = condition_for(by_view, cameras)
    assert cond.text.shape == (3, 2, 3) and cond.cameras is cameras
    assert cond.text[:, 0, 0].tolist() == [BACK, FRONT, OVERHEAD]
    per_image = torch.stack([by_view, by_view + 10, by_view + 20])  # [B, V, L, D]
    assert condition_for(per_image, cameras).text[:, 0, 0].tolist() == [BACK, 10 + FRONT, 20 + OVERHEAD]
    with pytest.raises(ValueError, match=r"must be \[4, L, D\] or \[3, 4, L, D\]"):
        condition_for(per_image[:2], cameras)


def test_encode_text_caches_per_prompt_and_suffix() -> None:
    clip = tiny_clip()
    prior = StableDiffusionPrior(
        tiny_sd_unet(), tiny_vae(), sd_scheduler(), CharTokenizer(), clip, negative_prompt="blurry"
    )
    calls: list[int] = []
    clip.register_forward_hook(lambda _m, args, _o: calls.append(args[0].shape[0]))
    by_view = encode_view_prompts(prior.encode_text, ["a cube", "a cone"])
    assert by_view.shape == (2, len(VIEW_SUFFIXES), TOKENS, TEXT_DIM)
    assert calls == [8]
    again = encode_view_prompts(prior.encode_text, ["a cube"])
    assert calls == [8]  # all four (prompt, suffix) strings were cached
    torch.testing.assert_close(again[0], by_view[0])
    with torch.no_grad():
        direct = clip(CharTokenizer()(["a cone, side view"], "max_length", TOKENS, True, "pt").input_ids)[0]
    torch.testing.assert_close(by_view[1, SIDE], direct[0])
    negative = prior.unconditional_text(3)
    assert negative.shape == (3, TOKENS, TEXT_DIM)
    torch.testing.assert_close(negative[2], prior.encode_text(["blurry"])[0])
    prior.release_text_encoder()
    assert prior.text_encoder is None
    torch.testing.assert_close(prior.unconditional_text(1)[0], negative[0])
    with pytest.raises(RuntimeError, match=r"no text encoder is loaded.*'a sphere'"):
        prior.encode_text(["a sphere"])
