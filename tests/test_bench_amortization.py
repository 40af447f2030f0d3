"""scripts/bench_amortization.py: budgets, prompt subsets, the crossing summary, and a --quick run on the CPU
(partial under a deadline, resumed, skipped when finished, refused with other settings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from script_loader import loaded_script

from att3d.config import ConfigError

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_amortization.py"


@pytest.fixture(scope="module")
def bench():
    yield from loaded_script("bench_amortization")


def quick_settings(bench, *extra: str):
    settings, _, _, _ = bench.parse_args(["--device", "cpu", "--quick", "--out", "unused", *extra])
    return settings


def test_geometric_budgets_halve_from_the_total(bench):
    assert bench.geometric_budgets(8000, 6) == [250, 500, 1000, 2000, 4000, 8000]
    assert bench.geometric_budgets(1200, 6) == [38, 75, 150, 300, 600, 1200]
    assert bench.geometric_budgets(3, 4) == [1, 2, 3]  # repeats dropped, never below one step
    assert bench.geometric_budgets(5, 1) == [5]
    with pytest.raises(ValueError, match="total >= 1"):
        bench.geometric_budgets(0, 3)


def test_spread_subset_spaces_prompts_evenly(bench):
    items = [f"p{i}" for i in range(10)]
    assert bench.spread_subset(items, 5, "prompts") == ["p0", "p2", "p4", "p6", "p8"]
    assert bench.spread_subset(items, 3, "prompts") == ["p0", "p3", "p6"]
    assert bench.spread_subset(items, None, "prompts") == items
    with pytest.raises(ConfigError, match="--heldout: asked for 11 prompts but the split has 10"):
        bench.spread_subset(items, 11, "heldout")


def point(method, split, frames, iou, wall):
    return {
        "method": method,
        "split": split,
        "step": frames,
        "frames": frames,
        "wall_s": wall,
        "iou": iou,
        "color_accuracy": 1.0,
        "color_distance": 0.1,
        "r_precision": 1.0 if frames > 100 else 0.5,
        "cases": 4,
    }


def test_summary_finds_the_cheapest_amortized_point_at_per_prompt_quality(bench):
    points = [
        point("per_prompt", "train", 300, 0.5, 30.0),
        point("per_prompt", "train", 600, 0.8, 60.0),
        point("per_prompt", "train", 1200, 0.85, 120.0),
        point("amortized", "train", 100, 0.6, 8.0),
        point("amortized", "train", 200, 0.9, 16.0),
        point("amortized", "train", 400, 0.95, 32.0),
        point("amortized", "heldout", 400, 0.7, 32.0),
    ]
    summary = bench.summarize(points)
    iou = summary["crossings"]["iou"]
    assert iou["target"] == 0.85
    assert (iou["per_prompt_frames"], iou["amortized_frames"]) == (1200, 200)
    assert iou["frames_ratio"] == pytest.approx(1 / 6)
    assert iou["wall_ratio"] == pytest.approx(16 / 120)
    assert summary["meets_target"] is True
    # R-precision 1.0 is first reached at 300 per-prompt frames and 200 amortized ones.
    assert summary["crossings"]["r_precision"]["frames_ratio"] == pytest.approx(200 / 300)

    worse = [p | {"iou": 0.5} if p["method"] == "amortized" else p for p in points]
    iou = bench.summarize(worse)["crossings"]["iou"]
    assert iou["reached"] is False and iou["amortized_frames"] is None and "frames_ratio" not in iou
    assert bench.summarize(worse)["meets_target"] is False
    assert "note" in bench.summarize(points[:3])

    new = bench.new_object_summary(points, {"seconds_median": 0.2}, prompts=4)
    # Held-out IoU 0.7 is first reached by the per-prompt runs at 600 frames: 60 s over 4 prompts.
    assert new["per_prompt"]["reached"] is True
    assert new["per_prompt"]["seconds_per_object"] == pytest.approx(15.0)


def test_plan_gives_per_prompt_runs_the_same_batch_and_model(bench):
    plan = bench.build_plan(quick_settings(bench))
    amortized = plan.amortized
    assert (amortized.prompts_per_step, amortized.views_per_prompt) == (2, 1)
    assert amortized.prompts.source == "list" and len(amortized.prompts.prompts) == 2
    assert [c.prompt for c in plan.heldout_cases] == list(amortized.prompts.heldout)
    assert len(plan.heldout_cases) == 1 and {c.split for c in plan.heldout_cases} == {"heldout"}
    assert list(plan.per_prompt) == amortized.prompts.prompts
    for prompt, config in plan.per_prompt.items():
        assert config.prompts.prompts == [prompt]
        assert (config.prompts_per_step, config.views_per_prompt) == (1, 2)
        assert config.model == amortized.model and config.prior == amortized.prior
    assert plan.frames_per_step_amortized == plan.frames_per_step_per_prompt == 2
    # t_max annealing keeps its shape: the configs anneal over 4000/8000 and 800/1200 of their steps.
    assert (amortized.steps, amortized.sds.t_anneal_steps) == (8, 4)
    per_prompt = next(iter(plan.per_prompt.values()))
    assert (per_prompt.steps, per_prompt.sds.t_anneal_steps) == (4, 3)
    assert (plan.budgets_amortized, plan.budgets_per_prompt) == ([4, 8], [2, 4])
    assert amortized.checkpoint_every == 0 and amortized.keep_checkpoints == 1


def test_plan_rejects_configs_with_different_models(bench, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text((SCRIPT.parents[1] / "configs" / "shapes_per_prompt.yaml").read_text())
    settings = quick_settings(bench, "--per-prompt-config", str(other), "--set", "model.field.hidden_dim=8")
    bench.build_plan(settings)  # an override applies to both runs: still the same model
    other.write_text(other.read_text().replace("blob_radius: 0.5", "blob_radius: 0.4"))
    with pytest.raises(ConfigError, match="define different models"):
        bench.build_plan(quick_settings(bench, "--per-prompt-config", str(other)))
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", "x", "--prompts", "1"])


def test_quick_run_partial_resumed_and_skipped(bench, tmp_path, capsys):
    out = tmp_path / "bench"
    args = ["--device", "cpu", "--quick", "--out", str(out)]

    # A deadline that passes before the first step: every file is still written, marked partial.
    assert bench.main([*args, "--deadline-s", "0.001"]) == 0
    partial = json.loads((out / "results.json").read_text())
    assert partial["complete"] is False and partial["points"] == []
    assert "Partial" in (out / "results.md").read_text()

    # The same command resumes and finishes.
    assert bench.main(args) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["version"] == 1 and report["complete"] is True
    assert set(report) >= {"meta", "settings", "prompts", "budgets", "frames_per_step", "points", "summary"}
    assert len(report["prompts"]["train"]) == 2 and len(report["prompts"]["heldout"]) == 1
    assert report["budgets"] == {"amortized": [4, 8], "per_prompt": [2, 4]}

    curves = {}
    for p in report["points"]:
        curves.setdefault((p["method"], p["split"]), []).append(p)
        assert 0.0 <= p["iou"] <= 1.0 and 0.0 <= p["r_precision"] <= 1.0 and p["wall_s"] > 0
    assert sorted(curves) == [("amortized", "heldout"), ("amortized", "train"), ("per_prompt", "train")]
    amortized, per_prompt = curves["amortized", "train"], curves["per_prompt", "train"]
    # Frames: amortized 2 prompts x 1 view per step; per-prompt 2 views per step, summed over 2 runs.
    assert [(p["step"], p["frames"], p["cases"]) for p in amortized] == [(4, 8, 2), (8, 16, 2)]
    assert [(p["step"], p["frames"], p["cases"]) for p in per_prompt] == [(2, 8, 2), (4, 16, 2)]
    assert [p["cases"] for p in curves["amortized", "heldout"]] == [1, 1]
    assert amortized[0]["wall_s"] < amortized[1]["wall_s"]
    runs = report["per_prompt_runs"]
    assert sorted(runs) == sorted(report["prompts"]["train"])
    for prompt, rows in runs.items():
        assert [(r["step"], r["frames"], r["prompt"]) for r in rows] == [(2, 4, prompt), (4, 8, prompt)]
    assert per_prompt[-1]["wall_s"] == pytest.approx(
        sum(rows[-1]["wall_s"] for rows in runs.values()), abs=0.01
    )
    assert set(report["summary"]["crossings"]) == {"iou", "color_accuracy", "r_precision"}
    timing = report["new_object"]["amortized"]
    assert timing["prompts"] == report["prompts"]["heldout"] and timing["mesh_resolution"] == 32
    assert timing["seconds_median"] is None or timing["seconds_median"] > 0

    png = out / "quality_vs_frames.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        assert image.size == (1650, 440)
    table = (out / "results.md").read_text()
    assert "| method | prompts | step | frames | wall s | IoU |" in table
    assert "Partial" not in table

    # The plot can be redrawn from results.json alone (e.g. after a GPU run without matplotlib).
    png.unlink()
    assert bench.main([*args, "--replot"]) == 0 and png.is_file()

    # Finished runs and scores are reused, not redone.
    timing_file = out / "runs" / "amortized" / "timing.json"
    before = timing_file.read_text()
    assert bench.main(args) == 0
    assert timing_file.read_text() == before
    assert json.loads((out / "results.json").read_text())["points"] == report["points"]

    # Other settings in the same folder are refused with the difference named.
    capsys.readouterr()
    assert bench.main([*args, "--budgets", "3"]) == 2
    assert "other settings (budgets: 2 -> 3)" in capsys.readouterr().err


def test_reused_amortized_run_is_scored_not_trained(bench, tmp_path, capsys):
    """A finished run on the whole train split gives the amortized curve; 2 per-prompt runs stand for all
    49 prompts (compute scaled by 49/2) and both methods are compared on the same 2 prompts."""
    from att3d.config import TrainConfig, load_config
    from att3d.training.loop import train

    run_dir = tmp_path / "amortized_run"
    overrides = [*bench.QUICK_MODEL, *bench.QUICK_AMORTIZED, "steps=4", "checkpoint_every=2"]
    overrides += ["keep_checkpoints=5", "device=cpu", "eval_every=0", "preview_every=0", "log_every=0"]
    overrides += ["progress_bar=false", "sds.t_anneal_steps=2"]
    train(load_config(TrainConfig, bench.AMORTIZED_CONFIG, overrides), run_dir)
    weights_before = (run_dir / "checkpoints" / "step_0000004" / "manifest.json").read_text()

    out = tmp_path / "bench"
    args = ["--device", "cpu", "--quick", "--out", str(out), "--amortized-run", str(run_dir)]
    assert bench.main([*args, "--amortized-steps", "4"]) == 0  # one budget: 50 cases to score
    report = json.loads((out / "results.json").read_text())
    assert report["complete"] is True and report["reused_amortized_run"] == str(run_dir)
    assert report["amortized_train_prompts"] == 49 and len(report["prompts"]["train"]) == 2
    assert report["amortized_seconds_per_step"] > 0
    assert (run_dir / "checkpoints" / "step_0000004" / "manifest.json").read_text() == weights_before
    assert not (run_dir / "eval").exists()  # scores are kept in --out, not in the user's run

    curves = {}
    for p in report["points"]:
        curves.setdefault((p["method"], p["split"]), []).append(p)
    amortized = curves["amortized", "train"]
    assert [(p["step"], p["frames"], p["cases"]) for p in amortized] == [(4, 8, 2)]
    assert [p["cases"] for p in curves["amortized", "train_all"]] == [49]
    assert amortized[0]["wall_s"] == pytest.approx(4 * report["amortized_seconds_per_step"], abs=1e-3)
    # Per-prompt: 2 runs of 2 views per step, scaled to 49 prompts.
    per_prompt = curves["per_prompt", "train"]
    assert [(p["step"], p["frames"], p["cases"]) for p in per_prompt] == [(2, 4 * 49, 2), (4, 8 * 49, 2)]
    runs = report["per_prompt_runs"]
    assert per_prompt[-1]["wall_s"] == pytest.approx(
        49 / 2 * sum(rows[-1]["wall_s"] for rows in runs.values()), abs=0.05
    )
    assert "scaled by 49/2" in (out / "results.md").read_text()

    capsys.readouterr()
    assert bench.main([*args, "--amortized-steps", "6", "--out", str(tmp_path / "b2")]) == 2
    assert "has no checkpoint at step(s) [6]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args([*args, "--amortized-steps", "2", "--steps-amortized", "4"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", "x", "--amortized-run", str(run_dir)])  # steps missing


def test_reused_run_with_another_model_names_the_differing_keys(bench, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = (SCRIPT.parents[1] / "configs" / "shapes_default.yaml").read_text()
    (run_dir / "config.yaml").write_text(config)
    settings, _, _, _ = bench.parse_args(
        ["--device", "cpu", "--out", "x", "--amortized-run", str(run_dir), "--amortized-steps", "100"]
    )
    with pytest.raises(ConfigError, match=r"pass --set .*model\.field\.encoding\.levels=7"):
        bench.build_plan(settings)
