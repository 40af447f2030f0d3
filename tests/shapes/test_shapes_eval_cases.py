"""Evaluation cases: split cases and JSON Lines case files, with bad lines named by file and line."""

from __future__ import annotations

import pytest

from att3d.shapes.eval_cases import CaseFileError, read_cases, split_cases
from att3d.shapes.language import tokens, training_wordings
from att3d.shapes.splits import load_splits
from att3d.shapes.world import ShapeObject, parse_prompt


def test_split_cases() -> None:
    splits = load_splits()
    train = split_cases("train")
    assert [c.prompt for c in train] == [o.canonical_prompt for o in splits.train]
    assert {c.split for c in train} == {"train"}
    heldout = split_cases("heldout", all_phrasings=True)
    assert "a ball that is red" in [c.prompt for c in heldout]
    assert len(heldout) == sum(len(o.prompts) for o in splits.heldout)
    assert len(split_cases("all")) == len(splits.train) + len(splits.heldout)
    with pytest.raises(
        ValueError, match="split must be one of train, heldout, all, wording, heldout-wording"
    ):
        split_cases("test")


def test_wording_split_cases() -> None:
    """Train objects in held-out wording: 3 per object, deterministic, each parsing to its object and
    holding out (in turn) a colour word, a noun and a template that no training wording uses."""
    splits = load_splits()
    cases = split_cases("wording")
    assert cases == split_cases("wording")
    assert len(cases) == 3 * len(splits.train)
    assert [c.obj for c in cases[::3]] == list(splits.train)
    assert {c.split for c in cases} == {"wording"}
    for case in cases:
        assert parse_prompt(case.prompt) == case.obj, case.prompt
    trained = {t for obj in splits.train for t in training_wordings(obj, 30, 0, splits.wording)}
    assert not trained & {c.prompt for c in cases}
    red_cube = [c.prompt.lower() for c in cases if c.obj == ShapeObject("cube", "red")]
    assert {"ruby", "vermilion"} & set(tokens(red_cube[0]))  # a held-out colour word
    assert {"dice", "crate"} & set(tokens(red_cube[1]))  # a held-out noun
    assert {"photo", "colour", "image", "there"} & set(tokens(red_cube[2]))  # a held-out template
    held = split_cases("heldout-wording")
    assert [c.obj for c in held[::3]] == list(splits.heldout)
    assert {c.split for c in held} == {"heldout-wording"}
    with pytest.raises(ValueError, match="all_phrasings applies to the object splits, not to 'wording'"):
        split_cases("wording", all_phrasings=True)


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
