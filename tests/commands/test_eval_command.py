"""``att3d eval``: the report on a tiny checkpoint, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from att3d.commands.eval import eval_command

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(name="eval")(eval_command)


@app.callback()
def _group() -> None:
    """A group, so that the command is invoked by name as under ``att3d``."""


runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["eval", *args])


GOOD = '{"prompt": "a red cube", "shape": "cube", "color": "red"}'

LOW = ("--resolution", "16", "--views", "2", "--image-size", "16", "--points", "64", "--device", "cpu")


def test_eval_command_on_tiny_checkpoint(tiny_checkpoint, tmp_path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        '{"prompt": "a red ball", "shape": "sphere", "color": "red"}\n'
        '{"prompt": "a blue cube", "shape": "cube", "color": "blue"}\n'
    )
    out = tmp_path / "report" / "eval.json"
    result = run("-c", str(tiny_checkpoint), "--cases", str(cases), "--json", str(out), *LOW)
    assert result.exit_code == 0, result.output
    assert "a red ball" in result.stdout and "mean (all)" in result.stdout
    report = json.loads(out.read_text())
    assert set(report) == {"model", "source", "settings", "cases", "means"}
    assert report["model"]["checkpoint"] == str(tiny_checkpoint) and len(report["model"]["model_hash"]) == 64
    assert report["settings"]["views"] == 2 and report["settings"]["resolution"] == 16
    assert [(c["prompt"], c["shape"], c["color"], c["split"]) for c in report["cases"]] == [
        ("a red ball", "sphere", "red", "heldout"),
        ("a blue cube", "cube", "blue", "train"),
    ]
    for case in report["cases"]:
        assert 0.0 <= case["iou"] <= 1.0
        assert 0.0 <= case["color_distance"] <= 3**0.5
        assert case["color_correct"] == (case["nearest_color"] == case["color"])
        assert case["r_precision"] in (0.0, 0.5, 1.0) and len(case["view_labels"]) == 2
    overall = report["means"]["overall"]
    assert overall["cases"] == 2
    assert overall["iou"] == pytest.approx(sum(c["iou"] for c in report["cases"]) / 2)
    assert set(report["means"]["splits"]) == {"heldout", "train"}
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temp file left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give exactly one of --split"),
        (["--split", "heldout", "--cases", "{cases}"], "give exactly one of --split"),
        (["--split", "test"], "split must be one of train, heldout, all"),
        (["--cases", "{missing}"], "case file not found"),
        (["--cases", "{cases}"], "{cases}:2: unknown shape 'blob'"),
        (["--cases", "{cases}", "--all-phrasings"], "--all-phrasings applies to --split only"),
        (["--split", "train", "--views", "0"], "views must be an integer in [1, 64]"),
        (["--split", "train", "-c", "{missing}"], "checkpoint not found"),
    ],
)
def test_bad_input_one_line_exit_2_no_file(tmp_path, args, message) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(f'{GOOD}\n{{"prompt": "a blob", "shape": "blob", "color": "red"}}\n')
    out = tmp_path / "eval.json"
    names = {"cases": cases, "missing": tmp_path / "missing"}
    args = [a.format(**names) for a in args]
    result = run(*args, "--json", str(out))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message.format(**names) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.jsonl"]


def test_json_path_is_a_directory(tmp_path: Path) -> None:
    result = run("--split", "heldout", "--json", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.output
    afile = tmp_path / "file"
    afile.write_text("")
    result = run("--split", "heldout", "--json", str(afile / "eval.json"))
    assert result.exit_code == 2
    assert f"{afile} is not a directory" in result.output
