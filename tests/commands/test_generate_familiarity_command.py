"""``att3d generate`` warns on stderr about a prompt unfamiliar to the model, and writes the mesh anyway."""

from __future__ import annotations

import pytest
import trimesh
from server_fakes import HashEncoder, tiny_generator
from typer.testing import CliRunner

from att3d.commands.app import app

TRAINING = ["a red cube", "a blue sphere"]


@pytest.fixture(autouse=True)
def text_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny generator on the hashing encoder: training prompts have similarity 1, others about 0."""
    return tiny_generator(prompts=TRAINING).save(tmp_path_factory.mktemp("ckpt") / "hash")


def run(checkpoint, prompt: str, out):
    return CliRunner().invoke(app, ["generate", prompt, "-o", str(out), "-c", str(checkpoint), "-r", "16"])


def test_unfamiliar_prompt_warns_on_stderr_and_writes_the_mesh(checkpoint, tmp_path) -> None:
    out = tmp_path / "elephant.ply"
    result = run(checkpoint, "  an elephant ", out)
    assert result.exit_code == 0, result.output
    query, rows = HashEncoder().encode(["an elephant"])[0], HashEncoder().encode(TRAINING)
    similarity, nearest = max((float(row @ query), p) for p, row in zip(TRAINING, rows, strict=True))
    assert result.stderr == (
        f'warning: "an elephant" is unfamiliar to this model (similarity {similarity:.2f} to "{nearest}"; '
        "threshold 0.60); the mesh may not match it\n"
    )
    assert result.stdout.startswith(f"wrote {out} (")
    assert len(trimesh.load(out).vertices) > 0


def test_training_prompt_gives_no_warning(checkpoint, tmp_path) -> None:
    out = tmp_path / "cube.ply"
    result = run(checkpoint, "a red cube", out)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert out.is_file()


def test_prompt_read_otherwise_gets_a_note(checkpoint, tmp_path) -> None:
    out = tmp_path / "crimson.ply"
    result = run(checkpoint, "a crimson cube", out)
    assert result.exit_code == 0, result.output
    note, warning = result.stderr.splitlines()
    assert note == 'note: read as "a red cube" (words this model was not trained on replaced)'
    assert warning.startswith('warning: "a crimson cube" is unfamiliar to this model')
    assert out.is_file()
