"""Generator: checkpoint round trip, blends, interpolation walks, resolution checks, the two mesh paths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from att3d.checkpoint import CheckpointError
from att3d.config import ConfigError, MeshConfig
from att3d.generate import Generator, check_resolution, interpolation_weights
from att3d.mesh import NoSurfaceError

from conftest import assert_same_mesh, tiny_model_config


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


def test_resolution_range() -> None:
    assert check_resolution(16) == 16 and check_resolution(512) == 512
    for bad in (15, 513, 64.0, True):
        with pytest.raises(ValueError, match=r"resolution must be an integer in \[16, 512\]"):
            check_resolution(bad)


def test_foreign_weights_are_rejected(tiny_checkpoint, tmp_path) -> None:
    """A valid checkpoint whose tensors do not fit the config fails with a clear message."""
    from att3d.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(tiny_checkpoint)
    tensors = dict(ckpt.tensors)
    tensors.pop("head.mlp.0.weight")
    path = save_checkpoint(tmp_path / "broken", tensors, ckpt.config, ckpt.text_encoder, ckpt.prompts)
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        Generator.from_checkpoint(path)


def lumpy_generator() -> Generator:
    """A seeded generator whose density output is amplified, so the hash grid shapes a lumpy surface
    (a bare density blob would be too easy for the coarse-to-fine query)."""
    generator = Generator.seeded(tiny_model_config(), seed=0)
    with torch.no_grad():
        generator.field.head.mlp[-1].weight[0] *= 40.0
        generator.field.head.mlp[-1].bias[0] = 0.0
    return generator


@pytest.fixture
def dense_calls(monkeypatch) -> list[int]:
    """One entry per call of the dense reference path (``extract_mesh``) made by ``Generator.mesh``."""
    import att3d.generate

    calls = []
    original = att3d.generate.extract_mesh
    monkeypatch.setattr(att3d.generate, "extract_mesh", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def test_coarse_to_fine_mesh_equals_the_dense_one(dense_calls) -> None:
    generator = lumpy_generator()
    embedding = generator.embed(["a red cube"])[0]
    config = MeshConfig(resolution=40, coarse_resolution=16, marching_cubes="torch")
    fast = generator.mesh(embedding, config)
    assert dense_calls == []
    dense = generator.mesh(embedding, dataclasses.replace(config, grid_query="dense"))
    assert dense_calls == [1]
    assert len(dense.vertices) > 2000  # a lumpy surface, not the bare blob
    assert_same_mesh(fast, dense)


@pytest.mark.parametrize("change", [{"texture": "uv", "texture_size": 16}, {"marching_cubes": "skimage"}])
def test_uv_textures_and_skimage_take_the_dense_path(dense_calls, change) -> None:
    generator = Generator.seeded(tiny_model_config(), seed=0)
    config = MeshConfig(resolution=24, coarse_resolution=12, **change)
    assert len(generator.generate("a red cube", config).faces) > 0
    assert dense_calls == [1]


@pytest.mark.parametrize("grid_query", ["coarse_to_fine", "dense"])
def test_no_surface_names_the_threshold_on_both_paths(grid_query) -> None:
    generator = Generator.seeded(tiny_model_config(), seed=0)
    config = MeshConfig(resolution=24, coarse_resolution=12, density_threshold=1e6, grid_query=grid_query)
    with pytest.raises(NoSurfaceError, match=r"^no surface found: .*mesh\.density_threshold"):
        generator.generate("a red cube", config)


def test_unknown_grid_query_is_rejected() -> None:
    generator = Generator.seeded(tiny_model_config(), seed=0)
    with pytest.raises(ConfigError, match=r"mesh\.grid_query must be one of .*got 'sparse'"):
        generator.generate("a red cube", MeshConfig(resolution=24, grid_query="sparse"))
