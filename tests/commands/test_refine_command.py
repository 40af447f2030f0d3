"""``att3d refine``: argument errors before any model is loaded, and a short refine of the tiny checkpoint."""

from __future__ import annotations

import trimesh
from typer.testing import CliRunner

from att3d.commands.app import app

from gltf_validator import assert_valid_glb

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_refine_writes_the_refined_mesh(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "cube.glb"
    result = run(
        "refine", "a red cube", "-o", str(out), "-c", str(tiny_checkpoint), "--steps", "2", "-r", "24"
    )
    assert result.exit_code == 0, result.output
    assert "after 2 refine steps" in result.output
    assert "refine step 2/2" in result.output  # not a terminal: plain progress lines, no bar
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 0 and mesh.visual.kind == "vertex"
    assert_valid_glb(out.read_bytes())


def test_argument_errors_are_one_line_exit_2(tmp_path) -> None:
    cases = [
        (
            ["refine", "a red cube", "-o", str(tmp_path / "a.glb"), "--steps", "0"],
            "--steps must be in [1, 10000]",
        ),
        (["refine", "a red cube", "-o", str(tmp_path / "a.glb"), "--steps", "10001"], "got 10001"),
        (["refine", "a red cube", "-o", str(tmp_path / "a.stl")], "unsupported output extension '.stl'"),
        (["refine", "   ", "-o", str(tmp_path / "a.glb")], "whitespace"),
        (["refine", "a red cube", "-o", str(tmp_path / "a.glb"), "-c", str(tmp_path / "nope")], "not found"),
        (
            ["refine", "a red cube", "-o", str(tmp_path / "a.glb"), "--prior-text", "canonical"],
            "--prior-text must be prompt or nearest",
        ),
    ]
    for args, words in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], (args, result.output)
    assert not (tmp_path / "a.glb").exists()


def test_an_unknown_prior_is_one_error_line(tiny_checkpoint, tmp_path) -> None:
    out = tmp_path / "a.glb"
    result = run(
        "refine", "a red cube", "-o", str(out), "-c", str(tiny_checkpoint), "--prior", "no-such-prior"
    )
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert "no-such-prior" in result.output and not out.exists()
