"""``att3d info``: a short summary of a checkpoint or a run's newest one; ``--json`` for the manifest."""

from __future__ import annotations

import json
import re
import shutil

import torch
from typer.testing import CliRunner

from att3d.commands.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_info_prints_a_short_summary(tiny_checkpoint) -> None:
    from att3d.generate import Generator

    result = run("info", str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 12
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in lines)  # "key   value"
    assert fields["model hash"] == Generator.from_checkpoint(tiny_checkpoint).model_hash  # as served
    assert fields["prompts"] == '2: "a red cube", "a blue sphere"'
    assert fields["text encoder"] == "all-MiniLM-L6-v2 (minilm, 384-d)"
    assert "MLP 2 x " in fields["field"]

    state = Generator.from_checkpoint(tiny_checkpoint).field.state_dict()
    parameters = sum(p.numel() for p in state.values())
    assert fields["parameters"].startswith(f"{parameters:,} in ")
    assert "model.safetensors" in fields["files"] and "manifest.json" in fields["files"]


def test_info_json_prints_the_manifest(tiny_checkpoint) -> None:
    result = run("info", str(tiny_checkpoint), "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["format"] == "att3d-checkpoint"
    assert manifest["prompts"] == ["a red cube", "a blue sphere"]


def test_info_of_a_run_folder_shows_its_newest_checkpoint(tiny_checkpoint, tmp_path) -> None:
    from att3d.checkpoint import save_tensors_atomic
    from att3d.training.run_folder import TRAIN_STATE_FILE, checkpoint_dir

    result = run("info", str(tmp_path))
    assert result.exit_code == 2 and "error:" in result.output  # no checkpoint yet
    (tmp_path / "checkpoints").mkdir()
    result = run("info", str(tmp_path))
    assert result.exit_code == 2
    assert result.output == f"error: run folder {tmp_path} holds no complete, verified checkpoint\n"
    for step in (5, 12):
        shutil.copytree(tiny_checkpoint, checkpoint_dir(tmp_path, step))
        save_tensors_atomic(checkpoint_dir(tmp_path, step) / TRAIN_STATE_FILE, {"x": torch.zeros(1)})
    result = run("info", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith("step_0000012")
