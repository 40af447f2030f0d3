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
