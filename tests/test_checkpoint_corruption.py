"""Corrupted checkpoints, fuzzed: every damage to the tiny checkpoint is one CheckpointError (and, through
the CLI, one ``error:`` line with exit 2 and no output file), never a traceback or a huge allocation."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from att3d.checkpoint import CheckpointError, config_digest, load_checkpoint, model_identity
from att3d.commands.app import app
from att3d.config import to_dict
from att3d.generate import Generator

WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"


def manifest_of(ckpt: Path) -> dict:
    return json.loads((ckpt / MANIFEST).read_text())


def write_manifest(ckpt: Path, manifest: dict, *, config_checksum: str = "keep") -> None:
    """``config_checksum``: ``keep`` the stored one, ``update`` it (a deliberate edit) or ``drop`` it (a
    manifest from before the checksum existed)."""
    if config_checksum == "update":
        manifest["config_sha256"] = config_digest(manifest["config"])
    elif config_checksum == "drop":
        manifest.pop("config_sha256", None)
    (ckpt / MANIFEST).write_text(json.dumps(manifest))


def resign_weights(ckpt: Path) -> None:
    """Make the manifest's weights checksum match the (damaged) file, as a careless tool would."""
    manifest = manifest_of(ckpt)
    manifest["weights_sha256"] = hashlib.sha256((ckpt / WEIGHTS).read_bytes()).hexdigest()
    write_manifest(ckpt, manifest)


def truncate(at: int, resign: bool) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        data = (ckpt / WEIGHTS).read_bytes()
        (ckpt / WEIGHTS).write_bytes(data[: at if at >= 0 else len(data) + at])
        if resign:
            resign_weights(ckpt)

    return damage


def flip(at: int, resign: bool) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        data = bytearray((ckpt / WEIGHTS).read_bytes())
        data[at] ^= 0xFF
        (ckpt / WEIGHTS).write_bytes(bytes(data))
        if resign:
            resign_weights(ckpt)

    return damage


def raw_manifest(text: bytes) -> Callable[[Path], None]:
    return lambda ckpt: (ckpt / MANIFEST).write_bytes(text)


def edit_manifest(key: str, value: object) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        manifest = manifest_of(ckpt)
        if value is DELETE:
            del manifest[key]
        else:
            manifest[key] = value
        write_manifest(ckpt, manifest)

    return damage


DELETE = "<deleted>"  # a string: parameter ids stay the same between runs


def edit_config(dotted: str, value: object, config_checksum: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        manifest = manifest_of(ckpt)
        node = manifest["config"]
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
        write_manifest(ckpt, manifest, config_checksum=config_checksum)

    return damage


def edit_tensors(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    """Rewrite the weights consistently (valid file, matching checksum) but unlike the config."""

    def damage(ckpt: Path) -> None:
        tensors = load_file(ckpt / WEIGHTS)
        change(tensors)
        save_file(tensors, ckpt / WEIGHTS)
        resign_weights(ckpt)

    return damage


def replace_with_folder(name: str) -> Callable[[Path], None]:
    def damage(ckpt: Path) -> None:
        (ckpt / name).unlink()
        (ckpt / name).mkdir()

    return damage


def _reshape(tensors):
    tensors["head.mlp.0.weight"] = torch.zeros(3, 14)


def _retype(tensors):
    tensors["head.mlp.0.bias"] = tensors["head.mlp.0.bias"].half()


def _to_int(tensors):
    tensors["bases.tables.0"] = tensors["bases.tables.0"].long()


def _extra(tensors):
    tensors["surprise"] = torch.zeros(2)


def _missing(tensors):
    del tensors["head.mlp.4.bias"]


def _renamed(tensors):
    tensors["head.mlp.4.b"] = tensors.pop("head.mlp.4.bias")


CASES: dict[str, Callable[[Path], None]] = {
    **{f"truncate weights at {at}": truncate(at, resign=False) for at in (0, 4, 8, 60, 400, -1)},
    **{f"truncate weights at {at}, re-signed": truncate(at, resign=True) for at in (0, 7, 9, 60, 400, -1)},
    **{f"flip byte {at}": flip(at, resign=False) for at in (0, 3, 7, 8, 20, 100)},
    **{f"flip byte {at}, re-signed": flip(at, resign=True) for at in (0, 3, 7, 8, 9, 20, 100)},
    "weights are a folder": replace_with_folder(WEIGHTS),
    "manifest is a folder": replace_with_folder(MANIFEST),
    "manifest empty": raw_manifest(b""),
    "manifest garbage": raw_manifest(bytes(range(256))),
    "manifest not UTF-8": raw_manifest(b'{"format": "\xff"}'),
    "manifest invalid JSON": raw_manifest(b'{"format": "att3d-checkpoint",'),
    "manifest deeply nested": raw_manifest(b"[" * 100_000 + b"]" * 100_000),
    "manifest a list": raw_manifest(b"[1, 2]"),
    "manifest null": raw_manifest(b"null"),
    "manifest NaN config": raw_manifest(
        b'{"format": "att3d-checkpoint", "format_version": 1, "config": NaN}'
    ),
    **{
        f"missing {key}": edit_manifest(key, DELETE)
        for key in ("config", "weights_sha256", "prompts", "format")
    },
    "config a list": edit_manifest("config", [1]),
    "prompts of numbers": edit_manifest("prompts", [1, 2]),
    "metadata null": edit_manifest("metadata", None),
    "format_version string": edit_manifest("format_version", "1"),
    "format_version 99": edit_manifest("format_version", 99),
    "weights_sha256 short": edit_manifest("weights_sha256", "abc"),
    "config_sha256 a number": edit_manifest("config_sha256", 5),
    "config_sha256 wrong": edit_manifest("config_sha256", "0" * 64),
    "text encoder renamed": edit_manifest("text_encoder", "some-other-encoder"),
    "config emptied": edit_manifest("config", {}),
    **{
        f"config {key}={value!r} ({how} checksum)": edit_config(key, value, how)
        for how in ("keep", "update", "drop")
        for key, value in [
            ("field.hidden_dim", 65),
            ("field.num_bases", 1e12),
            ("field.num_bases", 10**12),
            ("field.num_bases", 1024),
            ("field.encoding.log2_table_size", 24),
            ("field.encoding.levels", 0),
            ("field.hidden_layers", "2"),
            ("field.text_dim", -1),
            ("field.encoding", None),
            ("field.unknown", 1),
            ("field", DELETE),
            ("text.encoder", "/etc/passwd"),
            ("text.encoder", "nope"),
        ]
    },
    "weights reshaped": edit_tensors(_reshape),
    "weights half precision": edit_tensors(_retype),
    "weights integer": edit_tensors(_to_int),
    "extra tensor": edit_tensors(_extra),
    "missing tensor": edit_tensors(_missing),
    "renamed tensor": edit_tensors(_renamed),
}


@pytest.fixture
def damaged(tiny_checkpoint, tmp_path, request) -> Path:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    CASES[request.param](ckpt)
    return ckpt


@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
def test_every_corruption_is_one_checkpoint_error(damaged, tmp_path) -> None:
    with pytest.raises(CheckpointError) as info:
        Generator.from_checkpoint(damaged)
    assert "\n" not in str(info.value) and str(damaged) in str(info.value)

    out = tmp_path / "out.glb"
    result = CliRunner().invoke(app, ["generate", "a red cube", "-o", str(out), "-c", str(damaged)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert not out.exists()


def test_the_checksum_covers_the_config(tiny_checkpoint, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    edit_config("mesh.resolution", 48, "keep")(ckpt)  # shapes alone cannot tell this edit
    with pytest.raises(CheckpointError, match="'config' was modified"):
        load_checkpoint(ckpt)


def test_a_manifest_without_config_checksum_still_loads(tiny_checkpoint, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    manifest = manifest_of(ckpt)
    write_manifest(ckpt, manifest, config_checksum="drop")
    loaded = Generator.from_checkpoint(ckpt)
    assert loaded.model_hash == model_identity(manifest["weights_sha256"], to_dict(loaded.config))


def test_the_bundled_model_loads_with_its_checksums_and_prompt_embeddings() -> None:
    from att3d.familiarity import PROMPT_EMBEDDINGS_FILE, _read_shipped
    from att3d.generate import DEFAULT_MODEL_DIR

    manifest = manifest_of(DEFAULT_MODEL_DIR)
    threshold = manifest["metadata"]["familiarity_threshold"]  # calibrated (scripts/calibrate_familiarity.py)
    assert "config_sha256" in manifest and 0.0 < threshold < 1.0
    generator = Generator.from_checkpoint(DEFAULT_MODEL_DIR)
    assert generator.familiarity_threshold == threshold
    assert len(generator.prompts) == 1960
    shipped = _read_shipped(DEFAULT_MODEL_DIR / PROMPT_EMBEDDINGS_FILE, generator.encoder, generator.prompts)
    assert shipped is not None and shipped.shape == (1960, 384)  # matches the manifest's prompt set


def test_free_form_metadata_never_breaks_the_model_summary(tiny_checkpoint, tmp_path) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    edit_manifest("metadata", {"step": "many", "name": ["x"]})(ckpt)
    assert Generator.from_checkpoint(ckpt).info()["training_steps"] == 0
