"""att3d.atomic: complete files or none, readable modes, no temporary files left behind."""

from __future__ import annotations

import json
import stat

import pytest

from att3d.atomic import atomic_write, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_replace_the_target_and_create_missing_folders(tmp_path):
    target = tmp_path / "new" / "folder" / "out.bin"
    assert write_bytes_atomic(target, b"one") == target
    assert target.read_bytes() == b"one"
    write_bytes_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's owner-only 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.txt"
    write_text_atomic(target, "old")

    def half_written(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_written)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.txt"]


def test_json_is_indented_and_refuses_nan(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic(target, {"a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2]} and target.read_text().endswith("\n")
    with pytest.raises(ValueError, match="JSON"):
        write_json_atomic(target, {"a": float("nan")})
    assert json.loads(target.read_text()) == {"a": [1, 2]}


def test_a_full_disk_is_an_oserror_naming_the_target_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os

    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"old")

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match=f"cannot write {target}: No space left") as info:
        write_bytes_atomic(target, b"new")
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_read_only_folder_is_a_permission_error_naming_the_target(tmp_path, monkeypatch):
    import errno
    import os
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OSError, match=r"cannot write .*out\.bin: Read-only file system"):
        write_bytes_atomic(tmp_path / "out.bin", b"x")
    assert list(tmp_path.iterdir()) == []
