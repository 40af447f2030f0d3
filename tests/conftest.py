"""Shared fixtures (a tiny generator checkpoint that loads in milliseconds) and mesh comparison."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# Tests never touch the network; the text cache goes to a per-session temp dir unless one is given.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def tiny_model_config():
    from att3d.config import EncodingConfig, FieldConfig, MeshConfig, ModelConfig

    encoding = EncodingConfig(levels=4, log2_table_size=12, base_resolution=8, growth_factor=1.6)
    return ModelConfig(
        field=FieldConfig(encoding=encoding, num_bases=4, hidden_dim=16),
        mesh=MeshConfig(resolution=32, coarse_resolution=16),
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded (untrained) tiny generator saved as a real checkpoint."""
    from att3d.generate import Generator

    generator = Generator.seeded(tiny_model_config(), seed=0)
    generator.prompts = ["a red cube", "a blue sphere"]
    return generator.save(tmp_path_factory.mktemp("ckpt") / "tiny")


def assert_same_mesh(mesh, ref, atol: float = 1e-5) -> None:
    """Two ``trimesh.Trimesh`` with the same surface: counts, vertices, colours (any vertex order), volume."""
    assert len(mesh.vertices) == len(ref.vertices) and len(mesh.faces) == len(ref.faces)
    np.testing.assert_allclose(np.sort(mesh.vertices, axis=0), np.sort(ref.vertices, axis=0), atol=atol)
    order, ref_order = np.lexsort(mesh.vertices.T), np.lexsort(ref.vertices.T)
    colors = mesh.visual.vertex_colors[order].astype(int)
    np.testing.assert_allclose(colors, ref.visual.vertex_colors[ref_order], atol=1)
    assert mesh.volume == pytest.approx(ref.volume, rel=1e-5)
