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


def test_cli_refuses_a_run_folder_another_trainer_holds_with_exit_code_2(tmp_path):
    import os

    from att3d.training.run_folder import lock_run_folder

    config = tmp_path / "c.yaml"
    config.write_text("device: cpu\n")
    run_dir = tmp_path / "run"
    with lock_run_folder(run_dir):
        result = CliRunner().invoke(app, ["train", str(config), "--out", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert f"error: run folder {run_dir} is in use by another trainer (pid {os.getpid()})" in result.output


def test_cli_prints_progress_lines_when_not_on_a_terminal(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "configs" / "tiny_test.yaml"
    args = ["train", str(config), "steps=4", "log_every=2", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)  # output captured: not a terminal
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/4", "4/4"], result.output
    assert all("steps/s" in line and "ETA" in line for line in lines)
