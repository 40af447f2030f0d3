"""Checkpoints: round trip, every kind of damaged or foreign input, and crashes during a save."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch

from att3d import checkpoint as ckpt_module
from att3d.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_tensors,
    read_manifest,
    save_checkpoint,
    save_tensors_atomic,
)

CONFIG = {"field": {"num_bases": 4, "encoding": {"levels": 2}}, "render": {"background": [1.0, 1.0, 1.0]}}
PROMPTS = ["a red cube", "a blue sphere"]


def make_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "grid.table": torch.randn(16, 8, generator=g),
        "mlp.0.weight": torch.randn(4, 3, generator=g).to(torch.float16).T,  # non-contiguous
        "step": torch.tensor([seed], dtype=torch.int64),
    }


def save(path: Path, seed: int = 0) -> Path:
    return save_checkpoint(path, make_tensors(seed), CONFIG, "all-MiniLM-L6-v2", PROMPTS, {"step": seed})


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def assert_tensors_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert torch.equal(actual[name], value), name


def rewrite_manifest(directory: Path, **changes) -> None:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.update(changes)
    (directory / "manifest.json").write_text(json.dumps(manifest))


def expect_error(path: Path, message: str, target: Path | None = None) -> CheckpointError:
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(target or path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text
    return info.value


# --------------------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    path = save(tmp_path / "ckpt", seed=3)
    assert path == tmp_path / "ckpt"
    assert listing(path) == ["manifest.json", "model.safetensors"]
    assert listing(tmp_path) == ["ckpt"]  # no temp directory left

    loaded = load_checkpoint(path)
    assert_tensors_equal(loaded.tensors, make_tensors(3))
    assert loaded.config == CONFIG
    assert loaded.text_encoder == "all-MiniLM-L6-v2"
    assert loaded.prompts == PROMPTS
    assert loaded.metadata == {"step": 3}
    assert loaded.path == path
    assert loaded.weights_sha256 == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "att3d-checkpoint"
    assert manifest["format_version"] == 1
    assert manifest["weights_sha256"] == loaded.weights_sha256
    created = datetime.fromisoformat(manifest["created"])
    assert created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 60

    assert read_manifest(path) == manifest
    assert read_manifest(path / "manifest.json") == manifest
    assert_tensors_equal(load_checkpoint(path / "manifest.json").tensors, make_tensors(3))


def test_overwrite_replaces_the_checkpoint_cleanly(tmp_path):
    save(tmp_path / "ckpt", seed=1)
    save_tensors_atomic(tmp_path / "ckpt" / "optimizer.safetensors", {"m": torch.ones(2)})
    save(tmp_path / "ckpt", seed=2)
    assert_tensors_equal(load_checkpoint(tmp_path / "ckpt").tensors, make_tensors(2))
    assert listing(tmp_path) == ["ckpt"]  # no backup, no temp directory
    assert listing(tmp_path / "ckpt") == ["manifest.json", "model.safetensors"]  # stale extras gone


def test_save_tensors_atomic_round_trip(tmp_path):
    path = save_tensors_atomic(tmp_path / "opt.safetensors", {"m": torch.arange(3.0)}, {"step": "7"})
    assert torch.equal(load_tensors(path)["m"], torch.arange(3.0))
    assert listing(tmp_path) == ["opt.safetensors"]
    with pytest.raises(CheckpointError, match="metadata must map strings to strings"):
        save_tensors_atomic(tmp_path / "x.safetensors", {"m": torch.ones(1)}, {"step": 7})


def test_save_tensors_atomic_failure_keeps_old_file(tmp_path, monkeypatch):
    path = save_tensors_atomic(tmp_path / "opt.safetensors", {"m": torch.zeros(2)})

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_tensors_atomic(path, {"m": torch.ones(2)})
    assert torch.equal(load_tensors(path)["m"], torch.zeros(2))
    assert listing(tmp_path) == ["opt.safetensors"]


def test_save_rejects_bad_input(tmp_path):
    with pytest.raises(CheckpointError, match="'w' is a list, not a tensor"):
        save_checkpoint(tmp_path / "c", {"w": [1.0]}, CONFIG, "enc", PROMPTS)
    with pytest.raises(CheckpointError, match="prompts must be a list of strings"):
        save_checkpoint(tmp_path / "c", make_tensors(), CONFIG, "enc", ["ok", 3])
    with pytest.raises(CheckpointError, match="not JSON-serializable"):
        save_checkpoint(tmp_path / "c", make_tensors(), {"bad": {1, 2}}, "enc", PROMPTS)
    assert listing(tmp_path) == []  # the failed save left no temp directory


def test_save_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not an att3d checkpoint; refusing to overwrite"):
        save(tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------------------------
# Damaged and foreign input
# --------------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    expect_error(tmp_path / "nope", "checkpoint not found")


def test_path_is_some_other_file(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"x")
    expect_error(tmp_path / "weights.pt", "not a checkpoint")


def test_missing_manifest(tmp_path):
    path = save(tmp_path / "ckpt")
    (path / "manifest.json").unlink()
    expect_error(path, "manifest.json is missing")
    with pytest.raises(CheckpointError, match=r"manifest\.json is missing"):
        read_manifest(path)


def test_missing_weights(tmp_path):
    path = save(tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    expect_error(path, "model.safetensors is missing")


def test_truncated_weights(tmp_path):
    path = save(tmp_path / "ckpt")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    expect_error(path, "checksum mismatch: file was modified or truncated")


def test_one_flipped_byte(tmp_path):
    path = save(tmp_path / "ckpt")
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: the file still parses, only the checksum can tell
    (path / "model.safetensors").write_bytes(bytes(data))
    expect_error(path, "checksum mismatch")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_manifest(path)
    assert read_manifest(path, check_weights=False)["prompts"] == PROMPTS


def test_foreign_json(tmp_path):
    path = save(tmp_path / "ckpt")
    (path / "manifest.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    expect_error(path, r"not an att3d checkpoint \(foreign file\)")


def test_newer_format_version(tmp_path):
    path = save(tmp_path / "ckpt")
    rewrite_manifest(path, format_version=2)
    expect_error(path, r"unsupported format_version 2 \(this att3d reads 1 to 1\)")


def test_manifest_not_json(tmp_path):
    path = save(tmp_path / "ckpt")
    (path / "manifest.json").write_text("format: att3d-checkpoint\n")
    expect_error(path, "manifest is not valid JSON")


def test_manifest_not_an_object(tmp_path):
    path = save(tmp_path / "ckpt")
    (path / "manifest.json").write_text("[1, 2]")
    expect_error(path, r"manifest is not a JSON object \(list\)")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"config": None}, "'config' must be a dict, got NoneType"),
        ({"prompts": "a red cube"}, "'prompts' must be a list, got str"),
        ({"prompts": ["ok", 1]}, "'prompts' must be a list of strings"),
        ({"weights_sha256": "abc"}, "'weights_sha256' is not a sha256 hex digest"),
        ({"format_version": "1"}, "format_version must be an integer"),
    ],
)
def test_manifest_field_types(tmp_path, change, message):
    path = save(tmp_path / "ckpt")
    rewrite_manifest(path, **change)
    expect_error(path, message)


def test_manifest_missing_key(tmp_path):
    path = save(tmp_path / "ckpt")
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["text_encoder"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    expect_error(path, "required key 'text_encoder' is missing")


class _Payload:
    """Unpickling this creates a marker file: proof that the loader executed pickle code."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_renamed_as_safetensors_is_not_unpickled(tmp_path, monkeypatch):
    path = save(tmp_path / "ckpt")
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    data = pickle.dumps({"state_dict": payload})
    (path / "model.safetensors").write_bytes(data)
    # The attacker also fixes the checksum, so only the format check stands in the way.
    rewrite_manifest(path, weights_sha256=hashlib.sha256(data).hexdigest())

    def forbidden(*args, **kwargs):
        raise AssertionError("a pickle loader was called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    expect_error(path, "model.safetensors: not a valid safetensors file")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        read_manifest(path)
    assert not payload.marker.exists()


# --------------------------------------------------------------------------------------------------
# Crashes during a save
# --------------------------------------------------------------------------------------------------


def fail_when(monkeypatch, predicate) -> None:
    """Make ``os.rename`` and ``os.replace`` raise for the calls ``predicate(src, dst)`` selects."""
    real_rename, real_replace = os.rename, os.replace

    def wrap(real):
        def patched(src, dst, *args, **kwargs):
            if predicate(Path(src), Path(dst)):
                raise OSError(f"simulated crash moving {src}")
            return real(src, dst, *args, **kwargs)

        return patched

    monkeypatch.setattr(os, "rename", wrap(real_rename))
    monkeypatch.setattr(os, "replace", wrap(real_replace))


@pytest.mark.parametrize(
    "step",
    ["every move", "moving the new checkpoint into place"],
)
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, step):
    path = save(tmp_path / "ckpt", seed=1)
    if step == "every move":
        fail_when(monkeypatch, lambda src, dst: True)
    else:  # the old checkpoint was already moved aside when this fails
        fail_when(monkeypatch, lambda src, dst: src.name.startswith(".ckpt.tmp-"))
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint .*simulated crash"):
        save(path, seed=2)
    monkeypatch.undo()
    assert_tensors_equal(load_checkpoint(path).tensors, make_tensors(1))
    assert listing(tmp_path) == ["ckpt"]  # no temp directory, no backup


def test_crash_between_renames_recovers_from_backup(tmp_path):
    path = save(tmp_path / "ckpt", seed=1)
    # State after a process died between "old -> backup" and "new -> target".
    os.rename(path, tmp_path / ".ckpt.old")
    (tmp_path / ".ckpt.tmp-dead").mkdir()
    (tmp_path / ".ckpt.tmp-dead" / "model.safetensors").write_bytes(b"half written")

    loaded = load_checkpoint(path)
    assert loaded.path == tmp_path / ".ckpt.old"
    assert_tensors_equal(loaded.tensors, make_tensors(1))
    assert read_manifest(path)["metadata"] == {"step": 1}

    save(path, seed=2)
    assert_tensors_equal(load_checkpoint(path).tensors, make_tensors(2))
    assert listing(tmp_path) == ["ckpt"]


def test_crash_after_renames_drops_stale_backup(tmp_path):
    save(tmp_path / "ckpt", seed=1)
    os.rename(tmp_path / "ckpt", tmp_path / ".ckpt.old")
    save(tmp_path / "ckpt", seed=2)  # recovers the backup first, then replaces it
    assert listing(tmp_path) == ["ckpt"]
    # State after a process died after "new -> target" but before deleting the backup.
    save_checkpoint(tmp_path / ".ckpt.old", make_tensors(1), CONFIG, "e", PROMPTS)
    assert_tensors_equal(load_checkpoint(tmp_path / "ckpt").tensors, make_tensors(2))
    save(tmp_path / "ckpt", seed=3)
    assert listing(tmp_path) == ["ckpt"]
    assert_tensors_equal(load_checkpoint(tmp_path / "ckpt").tensors, make_tensors(3))


def test_module_never_uses_pickle_loaders():
    source = Path(ckpt_module.__file__).read_text()
    assert "torch.load(" not in source and "import pickle" not in source
