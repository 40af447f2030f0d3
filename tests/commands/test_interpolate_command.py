"""``att3d interpolate``: a blend (--alpha) and a walk of frames (--frames) on a tiny checkpoint."""

from __future__ import annotations

from typer.testing import CliRunner

from att3d.commands.app import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_interpolate_alpha_and_frames(tiny_checkpoint, tmp_path) -> None:
    single = tmp_path / "blend.glb"
    result = run("interpolate", "a red cube", "a blue sphere", "--alpha", "0.5", "-o", str(single),
                 "-c", str(tiny_checkpoint), "-r", "24")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert single.is_file()
    walk = tmp_path / "walk.glb"
    result = run("interpolate", "a red cube", "a blue sphere", "--frames", "3", "-o", str(walk),
                 "-c", str(tiny_checkpoint), "-r", "24")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("walk_*.glb")) == [
        "walk_000.glb",
        "walk_001.glb",
        "walk_002.glb",
    ]


def test_a_full_disk_part_way_through_frames_leaves_no_partial_walk(tiny_checkpoint, tmp_path, monkeypatch):
    import errno
    import os

    from att3d import atomic

    real_fsync = atomic.fsync_file

    def fsync_file(path):  # the disk fills up at the third frame
        if ".walk_002.glb." in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(path)

    monkeypatch.setattr(atomic, "fsync_file", fsync_file)
    (tmp_path / "keep.txt").write_text("not ours")
    walk = tmp_path / "walk.glb"
    result = run("interpolate", "a red cube", "a blue sphere", "--frames", "3", "-o", str(walk),
                 "-c", str(tiny_checkpoint), "-r", "24")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output == f"error: cannot write {tmp_path / 'walk_002.glb'}: No space left on device\n"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
