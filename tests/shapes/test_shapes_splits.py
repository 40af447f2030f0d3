"""The bundled prompt splits and the split-file checks (``att3d.shapes.splits``)."""

from __future__ import annotations

import json

import pytest

from att3d.shapes import splits as splits_module
from att3d.shapes.splits import load_splits
from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, all_objects


def test_bundled_splits():
    splits = load_splits()
    assert splits.version == 1
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


def _write(tmp_path, **changes):
    data = json.loads((splits_module.resources.files("att3d.shapes") / "splits.json").read_text())
    data.update(changes)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(data))
    return path


def test_load_splits_rejects_bad_files(tmp_path):
    with pytest.raises(ValueError, match="unsupported split version 2, expected 1"):
        load_splits(_write(tmp_path, version=2))
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
