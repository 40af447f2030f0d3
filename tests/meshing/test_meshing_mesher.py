"""The one mesher choice (``att3d.meshing.mesher``), through ``Generator.mesh``: coarse-to-fine by default,
dense for UV textures, scikit-image marching cubes and ``grid_query=dense``; the same surface either way."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from att3d.config import ConfigError, MeshConfig
from att3d.generate import Generator
from att3d.meshing.errors import NoSurfaceError

from conftest import assert_same_mesh, tiny_model_config


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
    import att3d.meshing.mesher

    calls = []
    original = att3d.meshing.mesher.extract_mesh
    monkeypatch.setattr(
        att3d.meshing.mesher, "extract_mesh", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
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
    with pytest.raises(ConfigError, match=r"mesh\.grid_query: must be one of .*got 'sparse'"):
        generator.generate("a red cube", MeshConfig(resolution=24, grid_query="sparse"))
