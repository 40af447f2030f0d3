"""Generator: checkpoint round trip, blends, interpolation walks, resolution checks (the mesh paths it picks
between: tests/meshing/test_meshing_mesher.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from att3d.checkpoint import CheckpointError
from att3d.config import MeshConfig
from att3d.generate import Generator, interpolation_weights

from conftest import tiny_model_config


def test_checkpoint_round_trip_gives_identical_mesh(tiny_checkpoint) -> None:
    original = Generator.seeded(tiny_model_config(), seed=0)
    loaded = Generator.from_checkpoint(tiny_checkpoint)
    assert loaded.prompts == ["a red cube", "a blue sphere"]
    assert loaded.name == "default"
    assert len(loaded.model_hash) == 64
    config = MeshConfig(resolution=24, coarse_resolution=12)
    a = original.generate("a red cube", config)
    b = loaded.generate("a red cube", config)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-6)
    np.testing.assert_array_equal(a.visual.vertex_colors, b.visual.vertex_colors)


def test_seeded_default_is_deterministic() -> None:
    a = Generator.seeded(tiny_model_config(), seed=3)
    b = Generator.seeded(tiny_model_config(), seed=3)
    c = Generator.seeded(tiny_model_config(), seed=4)
    assert a.model_hash == b.model_hash != c.model_hash


def test_model_hash_covers_the_config(tiny_checkpoint, tmp_path) -> None:
    # Same weights, another mesh iso-level: meshes differ, so caches keyed by model_hash must too.
    original = Generator.from_checkpoint(tiny_checkpoint)
    other = Generator.from_checkpoint(tiny_checkpoint)
    other.config = dataclasses.replace(
        other.config, mesh=dataclasses.replace(other.config.mesh, density_threshold=4.5)
    )
    reloaded = Generator.from_checkpoint(other.save(tmp_path / "iso"))
    assert reloaded.config.mesh.density_threshold == 4.5
    assert reloaded.model_hash != original.model_hash
    assert Generator.from_checkpoint(original.save(tmp_path / "same")).model_hash == original.model_hash


def test_blend_is_the_weighted_embedding(tiny_checkpoint) -> None:
    gen = Generator.from_checkpoint(tiny_checkpoint)
    emb = gen.embed(["a red cube", "a blue sphere"])
    torch.testing.assert_close(
        gen.blend(["a red cube", "a blue sphere"], [0.25, 0.75]), 0.25 * emb[0] + 0.75 * emb[1]
    )
    torch.testing.assert_close(gen.blend(["a red cube", "a blue sphere"], [1.0, 0.0]), emb[0])


@pytest.mark.parametrize(
    ("weights", "message"),
    [([0.5], "got 1 weights for 2 prompts"), ([0.5, 0.6], "must sum to 1"), ([1.5, -0.5], ">= 0")],
)
def test_bad_blend_weights(tiny_checkpoint, weights, message) -> None:
    gen = Generator.from_checkpoint(tiny_checkpoint)
    with pytest.raises(ValueError, match=message):
        gen.blend(["a red cube", "a blue sphere"], weights)


def test_interpolation_walk_endpoints_and_sums() -> None:
    walk = interpolation_weights(3, 5)
    assert walk[0] == [1.0, 0.0, 0.0] and walk[-1] == [0.0, 0.0, 1.0]
    assert walk[2] == [0.0, 1.0, 0.0]
    assert all(abs(sum(w) - 1.0) < 1e-9 for w in walk)
    with pytest.raises(ValueError, match="frames"):
        interpolation_weights(2, 1)


def test_foreign_weights_are_rejected(tiny_checkpoint, tmp_path) -> None:
    """A valid checkpoint whose tensors do not fit the config fails with a clear message."""
    from att3d.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    tensors = dict(ckpt.tensors)
    tensors.pop("head.mlp.0.weight")
    path = save_checkpoint(tmp_path / "broken", tensors, ckpt.config, ckpt.text_encoder, ckpt.prompts)
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        Generator.from_checkpoint(path)
