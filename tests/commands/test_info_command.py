"""``att3d info``: a checkpoint's manifest as JSON."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from att3d.commands.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_info_prints_manifest(tiny_checkpoint) -> None:
    result = run("info", str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["format"] == "att3d-checkpoint"
    assert manifest["prompts"] == ["a red cube", "a blue sphere"]
