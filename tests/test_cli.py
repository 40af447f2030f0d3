"""The att3d CLI: end to end on a tiny checkpoint, and every bad input gives one line + exit 2."""

from __future__ import annotations

import json

import pytest
import trimesh
from typer.testing import CliRunner

from att3d.cli import app

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


def test_info_prints_manifest(tiny_checkpoint) -> None:
    result = run("info", str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.output)
    assert manifest["format"] == "att3d-checkpoint"
    assert manifest["prompts"] == ["a red cube", "a blue sphere"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "", "-o", "{out}.glb"], "prompt is empty"),
        (["generate", "   ", "-o", "{out}.glb"], "whitespace"),
        (["generate", "x" * 1001, "-o", "{out}.glb"], "too long"),
        (["generate", "a red cube", "-o", "{out}.stl"], "unsupported output extension '.stl'"),
        (["generate", "a red cube", "-o", "{out}"], "unsupported output extension '(none)'"),
        (
            ["generate", "a red cube", "-o", "{out}.glb", "-r", "8"],
            "resolution must be an integer in [16, 512]",
        ),
        (["generate", "a red cube", "-o", "{out}.glb", "-r", "513"], "resolution must be"),
        (["generate", "a red cube", "-o", "{out}.glb", "--texture", "pbr"], "--texture must be one of"),
        (["generate", "a red cube", "-o", "{out}.glb", "-c", "{missing}"], "checkpoint not found"),
        (["interpolate", "a", "b", "-o", "{out}.glb"], "exactly one of --alpha or --frames"),
        (["interpolate", "a", "b", "-o", "{out}.glb", "--alpha", "2"], "--alpha must be in [0, 1]"),
        (["interpolate", "a", "b", "-o", "{out}.glb", "--frames", "1"], "frames must be >= 2"),
        (["info", "{missing}"], "checkpoint not found"),
    ],
)
def test_bad_input_one_line_exit_2_no_file(tmp_path, args, message) -> None:
    out = tmp_path / "out"
    args = [a.format(out=out, missing=tmp_path / "missing") for a in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert list(tmp_path.iterdir()) == []


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
