"""``att3d generate``: end to end on a tiny checkpoint and the bundled model."""

from __future__ import annotations

import trimesh
from typer.testing import CliRunner

from att3d.commands.app import app

from gltf_validator import assert_valid_glb

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_generate_glb_with_vertex_colours(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "cube.glb"
    result = run("generate", "a red cube", "-o", str(out), "-c", str(tiny_checkpoint), "-r", "32")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.vertices) > 100
    assert mesh.visual.kind == "vertex" and mesh.visual.vertex_colors.shape[1] == 4
    assert_valid_glb(out.read_bytes())


def test_generate_default_model(tmp_path) -> None:
    out = tmp_path / "x.ply"
    result = run("generate", "a red cube", "-o", str(out), "-r", "24")
    assert result.exit_code == 0, result.output
    assert len(trimesh.load(out).vertices) > 0


def test_generate_obj_writes_material(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "m.obj"
    result = run("generate", "a blue sphere", "-o", str(out), "-c", str(tiny_checkpoint), "-r", "24")
    assert result.exit_code == 0, result.output
    assert out.is_file() and out.stat().st_size > 0


def test_tampered_checkpoint_is_rejected(tiny_checkpoint, tmp_path) -> None:
    import shutil

    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = run("generate", "a red cube", "-o", str(tmp_path / "x.glb"), "-c", str(copy))
    assert result.exit_code == 2
    assert "checksum mismatch" in result.output
    assert not (tmp_path / "x.glb").exists()


def _fail_fsync_under(folder, monkeypatch) -> None:
    """A full disk for files in ``folder`` (os.fsync raises ENOSPC for them; other files sync as usual)."""
    import errno
    import os

    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_full_disk_is_one_error_line_exit_2_and_no_file(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    out_dir = tmp_path / "full"
    out_dir.mkdir()
    _fail_fsync_under(out_dir, monkeypatch)
    result = run("generate", "a red cube", "-o", str(out_dir / "x.glb"), "-c", str(tiny_checkpoint))
    assert result.exit_code == 2, result.output
    assert result.output == f"error: cannot write {out_dir / 'x.glb'}: No space left on device\n"
    assert list(out_dir.iterdir()) == []


def test_read_only_folder_is_one_error_line_exit_2(tiny_checkpoint, tmp_path) -> None:
    import os

    import pytest

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    try:
        result = run("generate", "a red cube", "-o", str(out_dir / "x.glb"), "-c", str(tiny_checkpoint))
    finally:
        out_dir.chmod(0o755)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "Permission denied" in result.output
    assert list(out_dir.iterdir()) == []


def test_read_only_file_system_is_one_error_line_exit_2(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    """The read-only case where chmod cannot make it (root): creating a file there is refused."""
    import errno
    import os
    import tempfile

    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and str(dir).startswith(str(out_dir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    result = run("generate", "a red cube", "-o", str(out_dir / "x.glb"), "-c", str(tiny_checkpoint))
    assert result.exit_code == 2, result.output
    assert result.output == f"error: cannot write {out_dir / 'x.glb'}: Read-only file system\n"
    assert list(out_dir.iterdir()) == []


def test_a_full_disk_during_an_obj_leaves_no_material_behind(tiny_checkpoint, tmp_path, monkeypatch) -> None:
    import errno
    import os

    from att3d import atomic

    out_dir = tmp_path / "full"
    real_fsync = atomic.fsync_file

    def fsync_file(path):  # the disk fills up on the last file: the OBJ itself
        if str(path).endswith(".tmp") and ".x.obj." in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(path)

    monkeypatch.setattr(atomic, "fsync_file", fsync_file)
    args = ["a red cube", "-o", str(out_dir / "x.obj"), "-c", str(tiny_checkpoint), "--texture", "uv"]
    result = run("generate", *args)
    assert result.exit_code == 2, result.output
    assert result.output == f"error: cannot write {out_dir / 'x.obj'}: No space left on device\n"
    assert list(out_dir.iterdir()) == []
