"""The att3d CLI: every bad input to generate, interpolate and info gives one line + exit 2, no file."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from att3d.commands.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "", "-o", "{out}.glb"], "prompt is empty"),
        (["generate", "   ", "-o", "{out}.glb"], "whitespace"),
        (["generate", "x" * 1001, "-o", "{out}.glb"], "too long"),
        (["generate", "a red cube", "-o", "{out}.stl"], "unsupported output extension '.stl'"),
        (["generate", "a red cube", "-o", "{out}"], "unsupported output extension '(none)'"),
        (
            ["generate", "a red cube", "-o", "{out}.glb", "-r", "8"],
            "resolution must be an integer in [16, 512]",
        ),
        (["generate", "a red cube", "-o", "{out}.glb", "-r", "513"], "resolution must be"),
        (["generate", "a red cube", "-o", "{out}.glb", "--texture", "pbr"], "--texture must be one of"),
        (["generate", "a red cube", "-o", "{out}.glb", "-c", "{missing}"], "checkpoint not found"),
        (["interpolate", "a", "b", "-o", "{out}.glb"], "exactly one of --alpha or --frames"),
        (["interpolate", "a", "b", "-o", "{out}.glb", "--alpha", "2"], "--alpha must be in [0, 1]"),
        (["interpolate", "a", "b", "-o", "{out}.glb", "--frames", "1"], "frames must be >= 2"),
        (["info", "{missing}"], "checkpoint not found"),
    ],
)
def test_bad_input_one_line_exit_2_no_file(tmp_path, args, message) -> None:
    out = tmp_path / "out"
    args = [a.format(out=out, missing=tmp_path / "missing") for a in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []
