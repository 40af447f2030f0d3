"""``att3d train`` reports bad configs with exit code 2."""

from __future__ import annotations

from typer.testing import CliRunner

from att3d.commands.app import app


def test_cli_reports_bad_configs_with_exit_code_2(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.yaml"
    bad.write_text("stpes: 10\n")
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2
    assert "unknown config key: stpes" in result.output
    good = tmp_path / "good.yaml"
    good.write_text("prompts: {source: file, path: /missing/prompts.txt}\n")
    result = runner.invoke(app, ["train", str(good), "device=cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "prompt file not found: /missing/prompts.txt" in result.output
    result = runner.invoke(app, ["train", str(good), "steps"])
    assert result.exit_code == 2
    assert "override 'steps' is not of the form key=value" in result.output
