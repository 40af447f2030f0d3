"""The bundled prompt splits and the split-file checks (``att3d.shapes.splits``)."""

from __future__ import annotations

import json

import pytest

from att3d.shapes import splits as splits_module
from att3d.shapes.language import COLOR_WORDS, SHAPE_WORDS, TEMPLATES
from att3d.shapes.splits import load_splits
from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, all_objects


def test_bundled_splits():
    splits = load_splits()
    assert splits.version == 2
    everything = set(all_objects())
    assert set(splits.prior) == everything
    assert not set(splits.train) & set(splits.heldout)
    assert set(splits.train) | set(splits.heldout) == everything
    # Pig64-style diagonal: every shape and colour is still trained on, each shape held out once.
    assert {o.shape for o in splits.train} == set(SHAPE_NAMES)
    assert {o.color for o in splits.train} == set(COLOR_NAMES)
    assert sorted(o.shape for o in splits.heldout) == sorted(SHAPE_NAMES)
    assert len({o.color for o in splits.heldout}) == len(splits.heldout)
    data = json.loads((splits_module.resources.files("att3d.shapes") / "splits.json").read_text())
    assert data["shapes"] == list(SHAPE_NAMES) and data["colors"] == list(COLOR_NAMES)
    # The wording split is the file's data: every colour and shape keeps training words and loses one.
    wording = splits.wording
    assert wording.heldout_words == tuple(data["wording"]["heldout_words"])
    assert wording.heldout_templates == ("photo", "colour-of", "image", "there-is")
    for words in (*COLOR_WORDS.values(), *SHAPE_WORDS.values()):
        assert len(wording.train_words(words)) >= 2
        assert len(wording.train_words(words)) < len(words), words
    assert wording.train_words(SHAPE_WORDS["torus"]) == ("torus", "ring", "donut")
    assert "plain" in wording.train_templates and len(wording.train_templates) == len(TEMPLATES) - 4


def _write(tmp_path, **changes):
    data = json.loads((splits_module.resources.files("att3d.shapes") / "splits.json").read_text())
    data.update(changes)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(data))
    return path


def test_load_splits_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="unsupported split version 1, expected 2"):
        load_splits(_write(tmp_path, version=1))
    with pytest.raises(ValueError, match=r"'colors' is .* but the world has"):
        load_splits(_write(tmp_path, colors=["red"]))
    with pytest.raises(ValueError, match="train and heldout overlap: a red cube"):
        load_splits(_write(tmp_path, heldout=[["cube", "red"]]))
    with pytest.raises(ValueError, match=r"train\[0\]: unknown shape 'blob'"):
        load_splits(_write(tmp_path, train=[["blob", "red"]]))
    with pytest.raises(ValueError, match=r"objects missing from 'prior': a red cube"):
        load_splits(_write(tmp_path, prior=[["sphere", "red"]], train=[["cube", "red"]], heldout=[]))
    with pytest.raises(ValueError, match="'train' lists an object twice"):
        load_splits(_write(tmp_path, train=[["cube", "red"], ["cube", "red"]]))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_splits(bad)


@pytest.mark.parametrize(
    ("wording", "message"),
    [
        (None, "'wording' must be an object with exactly the keys heldout_words, heldout_templates"),
        ({"heldout_words": []}, "'wording' must be an object with exactly the keys"),
        (
            {"heldout_words": "ruby", "heldout_templates": []},
            "wording.heldout_words must be a list of strings",
        ),
        ({"heldout_words": ["rubby"], "heldout_templates": []}, "wording: held-out word 'rubby' is not in"),
        ({"heldout_words": [], "heldout_templates": ["selfie"]}, "held-out template 'selfie' is not in"),
        ({"heldout_words": ["red"], "heldout_templates": []}, "'red' is canonical wording and cannot be"),
        ({"heldout_words": [], "heldout_templates": ["plain"]}, "'plain' is canonical wording"),
        ({"heldout_words": ["ruby", "ruby"], "heldout_templates": []}, "a held-out word is listed twice"),
        (
            {"heldout_words": ["crimson", "scarlet", "cherry", "ruby", "vermilion"], "heldout_templates": []},
            "'red' keeps fewer than 2 training words",
        ),
        (
            {"heldout_words": ["traffic cone", "spire", "party hat"], "heldout_templates": []},
            "'cone' keeps fewer than 2 training words",
        ),
        (
            {"heldout_words": [], "heldout_templates": ["the"]},
            "held-out template 'the' has no word of its own",
        ),
    ],
)
def test_load_splits_rejects_bad_wording(tmp_path, wording, message):
    with pytest.raises(ValueError, match=message) as info:
        load_splits(_write(tmp_path, wording=wording))
    assert str(info.value).startswith(f"{tmp_path / 'splits.json'}: ")
