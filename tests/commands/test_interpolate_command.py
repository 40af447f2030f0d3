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
