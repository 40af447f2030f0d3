"""Stand-ins for the service tests: a hashing text encoder, a tiny generator, and a fake trainer.

Importing this module registers the ``test-hash`` text encoder, so a job process or server subprocess
started with ``PYTHONPATH=tests`` and this module imported (the fake runner lives here) can load checkpoints
of the tiny generator.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from att3d.config import ModelConfig, TrainConfig
from att3d.text import get_text_encoder, register_text_encoder

from conftest import tiny_model_config

TESTS_DIR = Path(__file__).resolve().parent
ENCODER = "test-hash"


class HashEncoder:
    """Deterministic unit vectors seeded by the prompt's sha256: no weights, identical in every process."""

    id = "test-hash-v1"
    dim = 384

    def encode(self, prompts: list[str]) -> torch.Tensor:
        rows = []
        for prompt in prompts:
            seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
            row = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
            rows.append(row / row.norm())
        return torch.stack(rows) if rows else torch.empty(0, self.dim)


register_text_encoder(ENCODER, HashEncoder, overwrite=True)


def tiny_config() -> ModelConfig:
    """The tests' tiny generator (conftest) with the hashing encoder, meshed at 24³ with small textures."""
    return tiny_model_config(f"text.encoder={ENCODER}", "mesh.resolution=24", "mesh.texture_size=64")


JOB_KEYS = (
    "field.encoding.levels",
    "field.encoding.log2_table_size",
    "field.encoding.base_resolution",
    "field.encoding.growth_factor",
    "field.num_bases",
    "field.hidden_dim",
    "text.encoder",
    "mesh.resolution",
    "mesh.coarse_resolution",
)
"""The settings of :func:`tiny_config` a job sets (the rest of the tiny generator is the job's default)."""


def tiny_config_overrides() -> dict[str, object]:
    """``POST /v1/jobs`` config entries that make a job train (and save) the tiny generator."""
    config = tiny_config()
    return {f"model.{key}": functools.reduce(getattr, key.split("."), config) for key in JOB_KEYS}


def tiny_generator(seed: int = 0, prompts: list[str] | None = None):  # -> Generator
    from att3d.generate import Generator

    generator = Generator.seeded(tiny_config(), seed=seed)
    generator.prompts = list(prompts or ["a red cube", "a blue sphere"])
    return generator


# --------------------------------------------------------------------------------------------------
# Fake trainer (the runner interface of server.jobs.worker)
# --------------------------------------------------------------------------------------------------

STEP_SECONDS_ENV = "ATT3D_FAKE_STEP_S"
"""Seconds each fake step sleeps (default 0.02): tests slow it down to catch a job mid-run."""
BREAK_FILE_ENV = "ATT3D_FAKE_BREAK_FILE"
"""``STEP:PATH``: before reporting step ``STEP`` the fake trainer overwrites ``PATH`` with garbage (a job
store destroyed mid-run)."""
GARBAGE = b"this is not an SQLite database\n" * 64


@dataclass
class FakeResult:
    status: str
    step: int
    checkpoint: Path | None
    loss: float


def _save(config: TrainConfig, out_dir: Path, step: int) -> Path:
    from att3d.checkpoint import save_tensors_atomic
    from att3d.generate import Generator
    from att3d.training.run_folder import TRAIN_STATE_FILE, checkpoint_dir

    prompts = config.prompts.prompts or ["a fake prompt"]
    generator = Generator.seeded(replace(config.model), seed=step)
    generator.prompts = list(prompts)
    generator.metadata = {"step": step, "fake": True}
    path = generator.save(checkpoint_dir(out_dir, step))
    # The trainer's layout: a checkpoint counts once its train state is written (last).
    save_tensors_atomic(path / TRAIN_STATE_FILE, {"step": torch.tensor([step])}, {})
    return path


def fake_train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool,
    progress_callback,
    cancel: threading.Event,
) -> FakeResult:
    """Counts steps, sleeps, saves a tiny checkpoint every ``checkpoint_every`` steps, honours ``cancel``."""
    from att3d.training.run_folder import list_checkpoints

    out_dir = Path(out_dir)
    delay = float(os.environ.get(STEP_SECONDS_ENV, "0.02"))
    break_at, _, break_path = os.environ.get(BREAK_FILE_ENV, "").partition(":")
    step, last = 0, None
    if resume:
        found = list_checkpoints(out_dir)
        if found:
            step, last = found[-1]
    while step < config.steps:
        if cancel.is_set():
            last = _save(config, out_dir, step) if step > 0 else last
            return FakeResult("cancelled", step, last, 1.0 / max(step, 1))
        time.sleep(delay)
        step += 1
        if break_path and step == int(break_at):
            Path(break_path).write_bytes(GARBAGE)
        progress_callback(step, config.steps, 1.0 / step)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            last = _save(config, out_dir, step)
    last = _save(config, out_dir, step)
    return FakeResult("completed", step, last, 1.0 / max(step, 1))


def fake_refine(
    config: dict, out_dir: str | Path, *, resume: bool, progress_callback, cancel: threading.Event
) -> FakeResult:
    """A refine job's runner without the refine: counts steps (``STEP_SECONDS_ENV``), writes a preview GLB
    every ``preview_every`` steps and a checkpoint every ``checkpoint_every``, the result when completed
    (a box whose size encodes the step count), honours ``cancel`` and resumes from its checkpoints."""
    import trimesh

    from att3d.meshing.export import mesh_to_bytes
    from att3d.training.run_folder import TRAIN_STATE_FILE, checkpoint_dir, list_checkpoints

    out_dir = Path(out_dir)
    refine = config["refine"]
    delay = float(os.environ.get(STEP_SECONDS_ENV, "0.02"))
    found = list_checkpoints(out_dir) if resume else []
    step, last = found[-1] if found else (0, None)

    def box(step: int, fmt: str) -> bytes:
        return mesh_to_bytes(trimesh.creation.box(extents=[0.1 + 0.01 * step] * 3), fmt)

    def save(step: int) -> Path:
        from att3d.checkpoint import save_checkpoint, save_tensors_atomic

        meta = {"kind": "refine", "step": step}
        path = save_checkpoint(checkpoint_dir(out_dir, step), {"x": torch.zeros(1)}, {}, "fake", [], meta)
        save_tensors_atomic(path / TRAIN_STATE_FILE, {"step": torch.tensor([step])})
        return path

    while step < refine["steps"]:
        if cancel.is_set():
            return FakeResult("cancelled", step, save(step), 1.0)
        time.sleep(delay)
        step += 1
        progress_callback(step, refine["steps"], 1.0 / step)
        if refine["preview_every"] and step % refine["preview_every"] == 0:
            (out_dir / "preview.glb").write_bytes(box(step, "glb"))
        if refine["checkpoint_every"] and step % refine["checkpoint_every"] == 0:
            last = save(step)
    (out_dir / f"result.{config['format']}").write_bytes(box(step, config["format"]))
    return FakeResult("completed", step, last, 1.0 / step)


def real_refine(config: dict, out_dir: str | Path, **kwargs) -> object:
    """The real refine runner, from this module so the job process knows the ``test-hash`` encoder."""
    from server.jobs.refine_runner import run_refine

    return run_refine(config, out_dir, **kwargs)


def failing_train(config, out_dir, *, resume, progress_callback, cancel) -> FakeResult:
    """A runner that fails at once, as a trainer with a bad config would."""
    raise RuntimeError("fake trainer failure: the prior exploded")


def make_encoder():
    """The cached test encoder (as a Generator would build it)."""
    return get_text_encoder(ENCODER)


def job_request(steps: int = 6, **config) -> dict:
    """A ``POST /v1/jobs`` body training the tiny generator on two prompts (a checkpoint every 2 steps)."""
    return {
        "prompts": ["a red cube", "a blue sphere"],
        "config": {"steps": steps, "checkpoint_every": 2, **tiny_config_overrides(), **config},
    }


def wait_for_job(client, job_id: str, until, timeout_s: float = 90.0) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until ``until(status)`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if until(status):
            return status
        assert time.monotonic() < deadline, f"job never reached the expected state: {status}"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Running the app in tests
# --------------------------------------------------------------------------------------------------


def settings_for(tmp_path: Path, **overrides):  # -> ServerSettings
    """Settings for a test app: small limits, data in ``tmp_path``, the fake trainer."""
    from server.settings import ServerSettings

    values = {
        "data_dir": tmp_path / "data",
        "max_resolution": 32,
        "max_frames": 4,
        "job_runner": "server_fakes:fake_train",
        "refine_runner": "server_fakes:fake_refine",
        "job_cancel_grace_s": 10.0,
    }
    values.update(overrides)
    return ServerSettings(**values)


@contextlib.contextmanager
def started_client(settings, models) -> Iterator:  # -> Iterator[TestClient]
    """A started app (lifespan run) whose models are loaded and warmed up."""
    from fastapi.testclient import TestClient

    from server.app import create_app

    app = create_app(settings, models)
    with TestClient(app) as client:
        assert app.state.engine.wait_ready(60), app.state.engine.load_error
        yield client


@contextlib.contextmanager
def isolated_environment(tmp_path: Path) -> Iterator[None]:
    """Text cache in ``tmp_path``, and ``tests/`` importable by job processes (for the fake trainer)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))
        path = os.environ.get("PYTHONPATH", "")
        patch.setenv("PYTHONPATH", f"{TESTS_DIR}{os.pathsep}{path}" if path else str(TESTS_DIR))
        yield


_VALIDATED: set[str] = set()


def assert_valid_glb(data: bytes) -> None:
    """The Khronos validator reports no error (each distinct GLB is validated once per session)."""
    from gltf_validator import assert_valid_glb as check

    digest = hashlib.sha256(data).hexdigest()
    if digest not in _VALIDATED:
        check(data)
        _VALIDATED.add(digest)
