"""Checkpoints: safetensors weights plus a JSON manifest, verified on load, replaced atomically on save.

A checkpoint is a directory::

    model.safetensors   the generator's tensors
    manifest.json       {"format": "att3d-checkpoint", "format_version": 1, "config": {...},
                         "config_sha256": "<hex>", "text_encoder": "<id>", "prompts": [...],
                         "weights_sha256": "<hex>", "created": "<ISO-8601 UTC>", "metadata": {...}}

Loading never unpickles anything: weights are read with ``safetensors.torch.load_file`` only, after the
file's sha256 has been checked against the manifest. ``config_sha256`` (:func:`config_digest`) covers the
config, which decides what model is built; manifests written before it existed lack it and stay readable
(``att3d.generate`` checks every config against the weights' shapes anyway). Every problem raises
:class:`CheckpointError` with a one-line message naming the path and what is wrong.

How a save stays atomic
-----------------------
POSIX cannot swap two directories in one step, so :func:`save_checkpoint` does it in three renames:

1. write both files into a fresh temp directory beside the target (``.<name>.tmp-XXXX``) and fsync the
   files and the directory;
2. if the target exists, rename it to the backup ``.<name>.old``;
3. rename the temp directory to the target, fsync the parent, then delete the backup.

A crash before step 2 leaves the old checkpoint in place (plus a temp directory, removed on the next
save). A crash between steps 2 and 3 leaves no target but a complete backup: :func:`load_checkpoint` reads
the backup in that case and the next save moves it back first. A crash after step 3 leaves the new
checkpoint and a stale backup, which the next save deletes. Errors raised inside the process are undone
at once (backup renamed back, temp directory removed). One writer per target is assumed (rank 0).

Extra tensors that belong with a checkpoint (optimizer state, EMA weights) are written by callers into
the checkpoint directory with :func:`save_tensors_atomic` after :func:`save_checkpoint`; a later
``save_checkpoint`` to the same path replaces the whole directory, so stale extras never outlive it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from att3d.atomic import atomic_write, fsync_dir, fsync_file

logger = logging.getLogger(__name__)

FORMAT = "att3d-checkpoint"
"""Value of the manifest's ``format`` key."""
FORMAT_VERSION = 1
"""Manifest layout written by this module; loading accepts versions up to this one."""
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"

# Manifest keys and the JSON types they must have.
_REQUIRED: dict[str, type] = {
    "config": dict,
    "text_encoder": str,
    "prompts": list,
    "weights_sha256": str,
    "created": str,
    "metadata": dict,
}


class CheckpointError(ValueError):
    """A checkpoint cannot be saved or loaded; the message names the path and the problem."""


def config_digest(config: dict[str, Any]) -> str:
    """sha256 of ``config`` as canonical JSON (sorted keys, no spaces): the manifest's ``config_sha256``."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_identity(weights_sha256: str, config: dict[str, Any]) -> str:
    """sha256 naming a model: its weights' sha256 and its config's (:func:`config_digest`). The same
    weights with another config (mesh iso-level, how prompts are read) mesh differently: another model."""
    return hashlib.sha256(f"{weights_sha256}:{config_digest(config)}".encode()).hexdigest()


@dataclass
class Checkpoint:
    """A loaded, verified checkpoint."""

    tensors: dict[str, torch.Tensor]
    """The weights from ``model.safetensors`` (CPU)."""
    config: dict[str, Any]
    """The model config as plain data (``att3d.config.to_dict``)."""
    text_encoder: str
    """Id of the text encoder whose embeddings the model was trained on."""
    prompts: list[str]
    """The training prompt set."""
    metadata: dict[str, Any]
    """Free-form JSON: training step, run name, ..."""
    weights_sha256: str
    """sha256 hex digest of ``model.safetensors``."""
    path: Path
    """Directory the checkpoint was read from (the backup if the target was lost mid-save)."""


def _check_tensors(tensors: object, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{what}: tensors must be a dict name -> tensor, got {type(tensors).__name__}")
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{what}: tensor names must be strings, got {name!r}")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: '{name}' is a {type(value).__name__}, not a tensor")
    # safetensors wants contiguous CPU tensors that do not share storage.
    return {name: value.detach().cpu().contiguous() for name, value in tensors.items()}


def save_tensors_atomic(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write ``tensors`` to the safetensors file ``path`` via temp file + fsync + rename.

    ``metadata`` is safetensors' string-to-string header metadata. The parent directory must exist.
    """
    path = Path(path)
    tensors = _check_tensors(tensors, str(path))
    pairs = (metadata or {}).items()
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
        raise CheckpointError(f"{path}: safetensors metadata must map strings to strings")
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (e.g. optimizer state saved beside a checkpoint); never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: tensor file not found")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a valid safetensors file ({_one_line(err)})") from None


# --------------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------------


def _backup_path(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _is_checkpoint_dir(path: Path) -> bool:
    """True for an empty directory or one holding our manifest: the only directories a save may replace."""
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / MANIFEST_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _recover_interrupted_save(target: Path) -> None:
    """Bring back the state of a save that crashed (see the module docstring)."""
    backup = _backup_path(target)
    if backup.is_dir():
        if target.exists():
            shutil.rmtree(backup)  # the new checkpoint made it into place; the backup is stale
        else:
            os.rename(backup, target)  # crashed between the two renames: the backup is the checkpoint
            fsync_dir(target.parent)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    config: dict[str, Any],
    text_encoder: str,
    prompts: list[str],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path``, atomically replacing an existing checkpoint there.

    Returns the checkpoint directory. Refuses to replace a directory that is not an att3d checkpoint.
    """
    target = Path(path)
    metadata = {} if metadata is None else metadata
    tensors = _check_tensors(tensors, str(target))
    if not isinstance(config, dict):
        raise CheckpointError(f"{target}: config must be a dict, got {type(config).__name__}")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{target}: metadata must be a dict, got {type(metadata).__name__}")
    if not isinstance(text_encoder, str) or not text_encoder:
        raise CheckpointError(f"{target}: text_encoder must be a non-empty string, got {text_encoder!r}")
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise CheckpointError(f"{target}: prompts must be a list of strings")

    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_save(target)
    if target.exists() and not _is_checkpoint_dir(target):
        raise CheckpointError(f"{target}: exists and is not an att3d checkpoint; refusing to overwrite it")

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    backup = _backup_path(target)
    moved_old = False
    try:
        weights = tmp / WEIGHTS_FILE
        save_file(tensors, weights, metadata={"format": FORMAT})
        fsync_file(weights)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": config,
            "config_sha256": "",  # below, where an unserializable config is reported
            "text_encoder": text_encoder,
            "prompts": list(prompts),
            "weights_sha256": _sha256(weights),  # hash what is on disk, not what we meant to write
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "metadata": metadata,
        }
        try:
            manifest["config_sha256"] = config_digest(config)
            text = json.dumps(manifest, indent=2, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{target}: config or metadata is not JSON-serializable ({err})") from None
        (tmp / MANIFEST_FILE).write_text(text + "\n")
        fsync_file(tmp / MANIFEST_FILE)
        fsync_dir(tmp)

        if target.exists():
            os.rename(target, backup)
            moved_old = True
            fsync_dir(target.parent)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved_old and not target.exists():
            # If even this fails, the backup stays where load_checkpoint and the next save look for it.
            with contextlib.suppress(OSError):
                os.rename(backup, target)
                fsync_dir(target.parent)
        if isinstance(err, OSError):
            raise CheckpointError(f"{target}: cannot save checkpoint ({_one_line(err)})") from err
        raise
    if moved_old:
        shutil.rmtree(backup, ignore_errors=True)
    return target


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _resolve_dir(path: str | Path) -> Path:
    """The checkpoint directory for ``path`` (a directory or its manifest file)."""
    path = Path(path)
    if path.is_file() and path.name == MANIFEST_FILE:
        return path.parent
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: not a checkpoint (expected its directory or its {MANIFEST_FILE})")
    backup = _backup_path(path)
    if (backup / MANIFEST_FILE).is_file():
        # A save was interrupted between its two renames; the previous checkpoint is complete here.
        logger.warning("checkpoint %s is missing; reading the backup left by an interrupted save", path)
        return backup
    raise CheckpointError(f"{path}: checkpoint not found")


def _verify_manifest(directory: Path, check_weights: bool) -> dict[str, Any]:
    try:
        return _verify_manifest_files(directory, check_weights)
    except OSError as err:  # unreadable files (permissions, I/O errors) are a bad checkpoint too
        raise CheckpointError(f"{directory}: cannot read checkpoint ({_one_line(err)})") from None


def _verify_manifest_files(directory: Path, check_weights: bool) -> dict[str, Any]:
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # RecursionError: [[[[...]]]]
        raise CheckpointError(f"{manifest_path}: manifest is not valid JSON ({_one_line(err)})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path}: manifest is not a JSON object ({type(manifest).__name__})")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path}: not an att3d checkpoint (foreign file)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{manifest_path}: format_version must be an integer, got {version!r}")
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{manifest_path}: unsupported format_version {version} (this att3d reads 1 to {FORMAT_VERSION})"
        )
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            raise CheckpointError(f"{manifest_path}: required key '{key}' is missing")
        if not isinstance(manifest[key], kind):
            raise CheckpointError(
                f"{manifest_path}: '{key}' must be a {kind.__name__}, got {type(manifest[key]).__name__}"
            )
    if not all(isinstance(p, str) for p in manifest["prompts"]):
        raise CheckpointError(f"{manifest_path}: 'prompts' must be a list of strings")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest["weights_sha256"]):
        raise CheckpointError(f"{manifest_path}: 'weights_sha256' is not a sha256 hex digest")
    _verify_config_digest(manifest, manifest_path)

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS_FILE} is missing")
    if check_weights:
        if _sha256(weights) != manifest["weights_sha256"]:
            raise CheckpointError(f"{weights}: checksum mismatch: file was modified or truncated")
        try:
            with safe_open(weights, framework="pt") as f:  # parses the header only
                f.keys()
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{weights}: not a valid safetensors file ({_one_line(err)})") from None
    return manifest


def _verify_config_digest(manifest: dict[str, Any], manifest_path: Path) -> None:
    """``config_sha256``, where present (manifests before it lack it), must match the config."""
    if "config_sha256" not in manifest:
        return
    expected = manifest["config_sha256"]
    if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
        raise CheckpointError(f"{manifest_path}: 'config_sha256' is not a sha256 hex digest")
    try:
        actual = config_digest(manifest["config"])
    except (TypeError, ValueError, RecursionError) as err:
        raise CheckpointError(f"{manifest_path}: 'config' cannot be hashed ({_one_line(err)})") from None
    if actual != expected:
        raise CheckpointError(
            f"{manifest_path}: checksum mismatch: 'config' was modified (config_sha256 does not match)"
        )


def read_manifest(path: str | Path, check_weights: bool = True) -> dict[str, Any]:
    """The verified manifest of the checkpoint at ``path`` without loading its weights.

    With ``check_weights`` the weights file is hashed, compared with the manifest and its safetensors header
    parsed (the file is read once; no tensor is built).
    """
    return _verify_manifest(_resolve_dir(path), check_weights)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and verify the checkpoint at ``path`` (its directory or its ``manifest.json``)."""
    directory = _resolve_dir(path)
    manifest = _verify_manifest(directory, check_weights=True)
    weights = directory / WEIGHTS_FILE
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as err:
        raise CheckpointError(f"{weights}: not a valid safetensors file ({_one_line(err)})") from None
    return Checkpoint(
        tensors=tensors,
        config=manifest["config"],
        text_encoder=manifest["text_encoder"],
        prompts=manifest["prompts"],
        metadata=manifest["metadata"],
        weights_sha256=manifest["weights_sha256"],
        path=directory,
    )
