"""Atomic file output: a reader sees the old file or the complete new one, never a partial write.

Every file the package writes (meshes, checkpoints' tensors, reports, previews, assets) goes through
:func:`atomic_write`: the content is written to a temporary file in the target's folder (same file system,
so the rename is atomic), flushed to disk, renamed over the target, and the folder entry is synced so the
rename survives a crash. A failure at any point removes the temporary file and leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

FILE_MODE = 0o644
"""Mode of written files: ``mkstemp`` creates owner-only files, but outputs are meant to be read by others."""


def fsync_file(path: str | Path) -> None:
    """Flush a written file's content to disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(folder: str | Path) -> None:
    """Persist a folder's entries (new names, renames); a no-op where folders cannot be opened or synced
    (e.g. Windows, some network file systems)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create ``path`` through ``write(temporary_path)``, then fsync and rename it into place.

    ``write`` receives a path in the same folder (which is created if missing) and must write the whole
    file there; whatever it raises propagates after the temporary file is removed. An ``OSError`` (full
    disk, read-only or forbidden folder) comes back as the same kind of ``OSError`` naming ``path``.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        fsync_file(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:
            # Name the target, not the temporary file (same errno, so the same OSError subclass).
            raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
        raise
    fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON (NaN and infinity refused: they are not JSON) atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
