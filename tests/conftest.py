"""Shared fixtures: the tiny model of every test (from configs/tiny_test.yaml), a tiny generator checkpoint
that loads in milliseconds, and mesh comparison."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

# Tests never touch the network; the text cache goes to a per-session temp dir unless one is given.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


TINY_TEST_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny_test.yaml"
"""The one definition of the tiny model (its ``model`` section) that tests and quick benchmarks start from."""

TINY_GENERATOR = (
    "field.encoding.log2_table_size=12",
    "field.encoding.growth_factor=1.6",
    "field.hidden_layers=2",
    "mesh.resolution=32",
    "mesh.coarse_resolution=16",
)
"""How the mesh, CLI and server tests' generator differs from the shared tiny field: every mesh those tests
compare (surfaces at 16-32³, component counts, batch against one-by-one) was built with these values."""


def tiny_model_section() -> dict:
    """``model`` of configs/tiny_test.yaml as plain data (field, render)."""
    return yaml.safe_load(TINY_TEST_CONFIG.read_text())["model"]


def tiny_train_config(*overrides: str):  # -> TrainConfig
    """``TrainConfig`` defaults with the shared tiny model, then ``overrides`` (``key=value``)."""
    from att3d.config import TrainConfig, apply_overrides, from_dict

    return from_dict(TrainConfig, apply_overrides({"model": tiny_model_section()}, list(overrides)))


def tiny_model_config(*overrides: str):  # -> ModelConfig
    """The tiny generator: the shared field with :data:`TINY_GENERATOR`, then ``overrides`` (``field.…``).

    Render settings stay at their defaults: a generator never renders, and they are saved in its checkpoints.
    """
    from att3d.config import ModelConfig, apply_overrides, from_dict

    data = {"field": tiny_model_section()["field"]}
    return from_dict(ModelConfig, apply_overrides(data, [*TINY_GENERATOR, *overrides]))


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


# The server tests' app: one per test module (module scope), on a tiny seeded generator. A module that needs
# other settings defines its own ``client``.


@pytest.fixture(scope="module")
def generator():
    """The tiny seeded generator the server tests' app serves as ``default``."""
    from server_fakes import tiny_generator

    return tiny_generator(prompts=["a red cube", "a blue sphere", "a green cone"])


@pytest.fixture(scope="module")
def client(tmp_path_factory, generator):
    """A started test client of the app (default settings of ``server_fakes.settings_for``)."""
    from server_fakes import isolated_environment, settings_for, started_client

    tmp = tmp_path_factory.mktemp("api")
    with isolated_environment(tmp), started_client(settings_for(tmp), {"default": generator}) as client:
        yield client
