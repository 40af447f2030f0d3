"""Loading a prior by name, hub id or local folder, without downloading anything."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from tiny_hub_components import random_text, raw_unet, sd_scheduler, tiny_sd_unet, tiny_vae

from att3d.priors.deepfloyd import DeepFloydPrior
from att3d.priors.registry import load_prior
from att3d.priors.stable_diffusion import StableDiffusionPrior


def test_load_prior_names_dispatch_without_download(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, object]] = []

    def recorder(kind: str):
        return classmethod(lambda cls, path=None, device=None, **kw: seen.append((kind, path, device)))

    monkeypatch.setattr(StableDiffusionPrior, "from_pretrained", recorder("sd"))
    monkeypatch.setattr(DeepFloydPrior, "from_pretrained", recorder("if"))
    shapes = types.ModuleType("att3d.priors.shapes")
    shapes.ShapesPrior = type("ShapesPrior", (), {"from_pretrained": recorder("shapes")})
    monkeypatch.setitem(sys.modules, "att3d.priors.shapes", shapes)

    load_prior("stable-diffusion", device="cpu")
    load_prior("stable-diffusion:stabilityai/stable-diffusion-2-1")
    load_prior("deepfloyd-if", device="cuda:1")
    load_prior("shapes", device="cpu")
    assert seen == [
        ("sd", "stabilityai/stable-diffusion-2-1-base", "cpu"),
        ("sd", "stabilityai/stable-diffusion-2-1", None),
        ("if", "DeepFloyd/IF-I-XL-v1.0", "cuda:1"),
        ("shapes", None, "cpu"),
    ]


def test_load_prior_rejects_unknown_and_bad_folders(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown prior 'dalle'.*shapes, stable-diffusion, deepfloyd-if"):
        load_prior("dalle")
    with pytest.raises(ValueError, match=r"has no model_index\.json"):
        load_prior(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="_class_name 'FluxPipeline' is not a supported prior"):
        load_prior(tmp_path)


def test_load_prior_from_local_sd_folder(tmp_path) -> None:
    tiny_sd_unet().save_pretrained(tmp_path / "unet")
    tiny_vae().save_pretrained(tmp_path / "vae")
    sd_scheduler("v_prediction").save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    prior = load_prior(tmp_path, device="cpu", load_text_encoder=False, local_files_only=True)
    assert isinstance(prior, StableDiffusionPrior)
    assert prior.prediction_type == "v_prediction" and prior.image_size == 16
    assert prior.unet.dtype == torch.float32 and prior.text_encoder is None
    reference = tiny_sd_unet()
    x, t, text = torch.randn(1, 4, 8, 8), torch.tensor([3]), random_text(1, 0)
    torch.testing.assert_close(raw_unet(prior.unet, x, t, text), raw_unet(reference, x, t, text))
