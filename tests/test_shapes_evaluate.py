"""``att3d eval``: scores against ground truth, case files, the report, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from att3d.shapes.evaluate import (
    CaseFileError,
    EvalSettings,
    eval_cameras,
    eval_command,
    mean_scores,
    read_cases,
    reference_query,
    score_query,
    split_cases,
)
from att3d.shapes.world import ShapeObject, load_splits

FAST = EvalSettings(resolution=32, views=4, n_points=256)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(name="eval")(eval_command)


@app.callback()
def _group() -> None:
    """A group, so that the command is invoked by name as under ``att3d``."""


runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, ["eval", *args])


# ---- scoring a field -----------------------------------------------------------------------------


@pytest.mark.parametrize("obj", [ShapeObject("cube", "red"), ShapeObject("torus", "gray")])
def test_ground_truth_scores_one(obj) -> None:
    scores = score_query(reference_query(obj), obj, FAST)
    assert scores["iou"] > 0.99
    assert scores["color_distance"] < 1e-5
    assert scores["nearest_color"] == obj.color and scores["color_correct"] is True
    assert scores["r_precision"] == 1.0
    assert scores["view_labels"] == [f"{obj.color} {obj.shape}"] * FAST.views


def test_wrong_object_scores_low() -> None:
    # A blue sphere where a red cube was asked for: the sphere-cube IoU (~0.7 at 64³), wrong colour,
    # and no view is classified as a red cube.
    sphere = ShapeObject("sphere", "blue")
    scores = score_query(reference_query(sphere), ShapeObject("cube", "red"), FAST)
    assert 0.6 < scores["iou"] < 0.8
    assert scores["nearest_color"] == "blue" and scores["color_correct"] is False
    assert scores["color_distance"] == pytest.approx(((0.85 - 0.1) ** 2 + 0.1**2 + 0.8**2) ** 0.5, abs=1e-4)
    assert scores["r_precision"] == 0.0


def test_eval_cameras_orbit_plus_extra_elevations() -> None:
    cameras = eval_cameras(8)
    assert cameras.elevation.tolist() == [20.0] * 6 + [0.0, 45.0]
    assert cameras.azimuth[:6].tolist() == pytest.approx([0, 60, 120, 180, 240, 300])
    assert cameras.azimuth[6:].tolist() == pytest.approx([30, 210])
    assert cameras.distance.tolist() == pytest.approx([2.8] * 8)
    assert eval_cameras(2).elevation.tolist() == [20.0, 20.0]
    with pytest.raises(ValueError, match="views must be a positive integer"):
        eval_cameras(0)


def test_settings_validate() -> None:
    with pytest.raises(ValueError, match=r"views must be an integer in \[1, 64\], got 0"):
        EvalSettings(views=0)
    with pytest.raises(ValueError, match="resolution must be an integer"):
        EvalSettings(resolution=4)


# ---- cases ---------------------------------------------------------------------------------------


def test_split_cases() -> None:
    splits = load_splits()
    train = split_cases("train")
    assert [c.prompt for c in train] == [o.canonical_prompt for o in splits.train]
    assert {c.split for c in train} == {"train"}
    heldout = split_cases("heldout", all_phrasings=True)
    assert "a ball that is red" in [c.prompt for c in heldout]
    assert len(heldout) == sum(len(o.prompts) for o in splits.heldout)
    assert len(split_cases("all")) == len(splits.train) + len(splits.heldout)
    with pytest.raises(ValueError, match="split must be one of train, heldout, all"):
        split_cases("test")


def test_read_cases_labels_split(tmp_path) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text(
        '{"prompt": " a crimson ball ", "shape": "sphere", "color": "red"}\n\n'
        '{"prompt": "a blue box", "shape": "cube", "color": "blue"}\n'
    )
    cases = read_cases(path)
    assert [(c.prompt, c.obj, c.split) for c in cases] == [
        ("a crimson ball", ShapeObject("sphere", "red"), "heldout"),
        ("a blue box", ShapeObject("cube", "blue"), "train"),
    ]


GOOD = '{"prompt": "a red cube", "shape": "cube", "color": "red"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "a red cube", "shape": "cube"', "not valid JSON"),
        ('["a red cube", "cube", "red"]', "expected a JSON object, got an array"),
        ('{"prompt": "a red cube", "shape": "cube"}', "missing key(s) color"),
        (
            '{"prompt": "a red cube", "shape": "cube", "color": "red", "colour": "red"}',
            "unknown key(s) colour",
        ),
        ('{"prompt": "a red cube", "shape": "box", "color": "red"}', "unknown shape 'box'"),
        ('{"prompt": "a red cube", "shape": "cube", "color": "crimson"}', "unknown color 'crimson'"),
        ('{"prompt": "  ", "shape": "cube", "color": "red"}', "prompt contains only whitespace"),
        ('{"prompt": 3, "shape": "cube", "color": "red"}', "'prompt' must be a string, got a number"),
    ],
)
def test_bad_case_line_names_file_and_line(tmp_path, line, message) -> None:
    path = tmp_path / "cases.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")
    with pytest.raises(CaseFileError) as info:
        read_cases(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_empty_or_missing_case_file(tmp_path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(CaseFileError, match="no cases"):
        read_cases(empty)
    with pytest.raises(CaseFileError, match="case file not found"):
        read_cases(tmp_path / "missing.jsonl")


def test_mean_scores() -> None:
    def row(split: str, iou: float, correct: bool, rp: float) -> dict:
        return {
            "split": split,
            "iou": iou,
            "color_distance": iou / 2,
            "color_correct": correct,
            "r_precision": rp,
        }

    means = mean_scores(
        [row("train", 0.2, True, 1.0), row("train", 0.4, False, 0.5), row("heldout", 0.9, True, 0.0)]
    )
    assert means["splits"]["train"] == pytest.approx(
        {"cases": 2, "iou": 0.3, "color_distance": 0.15, "color_accuracy": 0.5, "r_precision": 0.75}
    )
    assert means["splits"]["heldout"]["cases"] == 1
    assert means["overall"] == pytest.approx(
        {"cases": 3, "iou": 0.5, "color_distance": 0.25, "color_accuracy": 2 / 3, "r_precision": 0.5}
    )


# ---- the command ---------------------------------------------------------------------------------

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
