"""Preview -> refine (issue #13): quality versus steps and wall time, refine against SDS from scratch.

For ShapesWorld prompts (held-out objects, reworded prompts of the wording split and the worst cases of
the shipped model's own evaluation), each prompt is optimized twice with the same per-step cost (views,
renderer, prior):

- **refine**: from the amortized generator's field (``att3d.refine``, default warm-start schedule);
- **scratch**: a fresh per-prompt field with training's schedule (``from_scratch_config``).

Both are scored with ``att3d.shapes.evaluate.score_query`` (IoU, surface colour, R-precision) at a few
step counts; the table reports means per group, and the two targets of the issue: the steps refine needs
to reach the from-scratch run's final (``--scratch-steps``) quality, and the mean IoU gain of the
``--worst`` cases after 64 refine steps.

    python scripts/bench_refine.py --quick --worst 8 --views 2   # ~40 min on 2 CPU cores
    python scripts/bench_refine.py --json out.json  # the figures in docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from att3d.generate import Generator
from att3d.priors.registry import load_prior
from att3d.refine import (
    RefineConfig,
    RefineTarget,
    fresh_prompt_field,
    from_scratch_config,
    known_prior_prompt,
    refine_field,
    warm_field,
)
from att3d.shapes.eval_cases import EvalCase, split_cases
from att3d.shapes.evaluate import EvalSettings, score_query

METRICS = ("iou", "surface_color_right", "r_precision")


def score(field, case: EvalCase, generator: Generator, settings: EvalSettings) -> dict[str, float]:
    field.eval()
    scores = score_query(
        field,
        case.obj,
        settings,
        threshold=generator.config.mesh.density_threshold,
        bound=generator.config.field.bound,
        render_config=generator.config.render,
    )
    return {m: float(scores[m]) for m in METRICS}


def curve(target, prior, config, marks, case, generator, settings) -> list[dict]:
    """Scores at step 0 and at each of ``marks`` (previews of one run), with the wall time of the steps."""
    points = [{"step": 0, "seconds": 0.0, **score(target.field, case, generator, settings)}]
    clock = {"steps": 0.0, "last": time.perf_counter()}

    def at(step: int, field) -> None:
        clock["steps"] += time.perf_counter() - clock["last"]
        if step in marks:
            points.append(
                {"step": step, "seconds": round(clock["steps"], 2), **score(field, case, generator, settings)}
            )
        field.train()
        clock["last"] = time.perf_counter()

    every = marks[0]
    for mark in marks:
        assert mark % every == 0, "marks must be multiples of the first"
    refine_field(
        target, prior, RefineConfig(**{**config.__dict__, "preview_every": every}), preview_callback=at
    )
    return points


def all_cases() -> list[EvalCase]:
    return (
        split_cases("train")
        + split_cases("heldout")
        + split_cases("wording")
        + split_cases("heldout-wording")
    )


def load_picks(path: str) -> list[tuple[str, EvalCase]]:
    """``(group, case)`` pairs saved by an earlier run (``--picks``): ranking every case costs minutes."""
    by_prompt = {case.prompt: case for case in all_cases()}
    with open(path) as f:
        return [(row["group"], by_prompt[row["prompt"]]) for row in json.load(f)]


def pick_cases(generator, quick: bool, worst: int) -> tuple[list[tuple[str, EvalCase]], dict]:
    """(group, case) pairs, and the preview IoU of every case of the eval (the worst-case pick: volumetric
    IoU alone, at 48³, is cheap enough to rank all of them)."""
    from att3d.shapes.metrics import volumetric_iou

    heldout = split_cases("heldout")
    wording = split_cases("wording")
    pool = split_cases("train") + heldout + wording + split_cases("heldout-wording")
    if quick:
        pool = pool[::2]
    preview = {}
    with torch.no_grad():
        embeddings = generator.embed([case.prompt for case in pool])
        for case, embedding in zip(pool, embeddings, strict=True):
            field = generator.prompt_field(embedding)
            threshold = generator.config.mesh.density_threshold
            preview[case.prompt] = volumetric_iou(
                field, case.obj, 48, threshold, generator.config.field.bound
            )
    ranked = sorted(pool, key=lambda c: preview[c.prompt])[:worst]
    chosen = [("worst", c) for c in ranked]
    taken = {c.prompt for c in ranked}
    extra_h = [c for c in heldout if c.prompt not in taken][: 1 if quick else 4]
    extra_w = [c for c in wording if c.prompt not in taken][::7][: 1 if quick else 4]
    chosen += [("heldout", c) for c in extra_h] + [("wording", c) for c in extra_w]
    return chosen, preview


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer candidates and prompts, coarser scoring")
    parser.add_argument("--worst", type=int, default=10, help="worst preview cases refined")
    parser.add_argument("--refine-steps", type=int, default=64)
    parser.add_argument("--scratch-steps", type=int, default=256)
    parser.add_argument("--unfrozen", action="store_true", help="also refine with a trainable head")
    parser.add_argument("--views", type=int, default=4, help="views per step of both arms")
    parser.add_argument(
        "--picks", default="", help="save the picked prompts here, or reuse them if it exists"
    )
    parser.add_argument("--unfrozen-cases", type=int, default=3, help="worst cases also refined unfrozen")
    parser.add_argument(
        "--nearest", action="store_true", help="also refine with prior_text=nearest (every prompt)"
    )
    parser.add_argument("--only-worst", action="store_true", help="with --picks: only the worst cases")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="", help="write every curve here")
    parser.add_argument("--report", default="", help="only summarize the JSON an earlier run wrote")
    args = parser.parse_args()
    if args.report:
        with open(args.report) as f:
            saved = json.load(f)
        report(saved["rows"], saved["args"]["refine_steps"], saved["args"]["scratch_steps"])
        return
    torch.set_num_threads(args.threads)
    settings = EvalSettings(resolution=48, views=4, n_points=512) if args.quick else EvalSettings()
    generator = Generator.default()
    prior = load_prior("shapes")
    worst = args.worst
    started = time.perf_counter()
    if args.picks and os.path.exists(args.picks):
        cases = load_picks(args.picks)
    else:
        cases, preview = pick_cases(generator, args.quick, worst)
        print("worst previews:", [(c.prompt, round(preview[c.prompt], 3)) for g, c in cases if g == "worst"])
        if args.picks:
            with open(args.picks, "w") as f:
                json.dump([{"group": g, "prompt": c.prompt} for g, c in cases], f, indent=1)
    # The baseline comparisons first: a run cut short still has them.
    cases = sorted(cases, key=lambda gc: gc[0] == "worst")
    load = os.getloadavg()
    print(
        f"{len(cases)} prompts; load average {load[0]:.1f} at start; "
        f"picked in {time.perf_counter() - started:.0f} s"
    )
    refine_marks = [m for m in (8, 16, 32, 64, 128) if m <= args.refine_steps]
    scratch_marks = [m for m in (32, 64, 128, 256, 512) if m <= args.scratch_steps]
    variants = [("refine", True, "prompt")]
    variants += [("refine-unfrozen", False, "prompt")] if args.unfrozen else []
    variants += [("refine-nearest", True, "nearest")] if args.nearest else []
    if args.only_worst:
        cases = [(g, c) for g, c in cases if g == "worst"]
    rows = []
    unfrozen_left = args.unfrozen_cases
    for group, case in cases:
        row = {"group": group, "prompt": case.prompt, "object": f"{case.obj.color} {case.obj.shape}"}
        for name, frozen, prior_text in variants:
            if not frozen and not (group == "worst" and unfrozen_left > 0):
                continue
            prior_prompt = (
                known_prior_prompt(generator, prior, case.prompt) if prior_text == "nearest" else None
            )
            if prior_text == "nearest":
                row["prior_prompt"] = prior_prompt or case.prompt
            field = warm_field(generator, case.prompt)
            target = RefineTarget(case.prompt, field, generator.config, prior_prompt=prior_prompt)
            config = RefineConfig(steps=args.refine_steps, freeze_head=frozen, views=args.views)
            row[name] = curve(target, prior, config, refine_marks, case, generator, settings)
        r = row["refine"][-1]
        start = row["refine"][0]["iou"]
        line = f"{group:8s} {case.prompt!r:44s} iou {start:.3f} -> {r['iou']:.3f} ({r['seconds']:.0f} s)"
        if not (args.quick and group == "worst"):  # quick: the baseline on one held-out, one reworded
            target = RefineTarget(case.prompt, fresh_prompt_field(generator.config), generator.config)
            config = from_scratch_config(args.scratch_steps, views=args.views)
            row["scratch"] = curve(target, prior, config, scratch_marks, case, generator, settings)
            s = row["scratch"][-1]
            line += f" | scratch {s['iou']:.3f} ({s['seconds']:.0f} s)"
        if "refine-unfrozen" in row:
            unfrozen_left -= 1
            line += f" | unfrozen {row['refine-unfrozen'][-1]['iou']:.3f}"
        if "refine-nearest" in row:
            line += f" | nearest ({row['prior_prompt']}) {row['refine-nearest'][-1]['iou']:.3f}"
        rows.append(row)
        print(line, flush=True)
        if args.json:  # after every prompt: a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump({"args": vars(args), "load_at_start": load, "rows": rows}, f, indent=1)
    report(rows, args.refine_steps, args.scratch_steps)


def _mean(rows, key, step, metric) -> float:
    values = [next(p[metric] for p in r[key] if p["step"] == step) for r in rows]
    return sum(values) / max(len(values), 1)


def report(rows: list[dict], refine_steps: int, scratch_steps: int) -> None:
    """Means per group and arm (over the prompts that have the arm), and the issue's two targets."""
    groups = ["all", *dict.fromkeys(r["group"] for r in rows)]
    for group in groups:
        chosen = rows if group == "all" else [r for r in rows if r["group"] == group]
        print(f"\n{group} ({len(chosen)} prompts): mean iou / surface colour right / R-precision / seconds")
        for key in ("refine", "refine-unfrozen", "refine-nearest", "scratch"):
            having = [r for r in chosen if key in r]
            if not having:
                continue
            cells = []
            for point in having[0][key]:
                step = point["step"]
                iou, colour, rp, secs = (
                    _mean(having, key, step, m)
                    for m in ("iou", "surface_color_right", "r_precision", "seconds")
                )
                cells.append(f"{step}: {iou:.3f}/{colour:.2f}/{rp:.2f}/{secs:.0f}s")
            print(f"  {key:16s} ({len(having)}) " + "  ".join(cells))
    both = [r for r in rows if "scratch" in r]
    if both:
        goal = _mean(both, "scratch", scratch_steps, "iou")
        steps = [p["step"] for p in both[0]["refine"]]
        reached = next((s for s in steps if _mean(both, "refine", s, "iou") >= goal), None)
        print(
            f"\n{len(both)} prompts with both arms: scratch {scratch_steps}-step mean iou {goal:.3f}; refine "
            f"reaches it at step {reached} (target <= {scratch_steps // 5})"
        )
    worst = [r for r in rows if r["group"] == "worst"]
    for key in ("refine", "refine-unfrozen", "refine-nearest"):
        having = [r for r in worst if key in r]
        if having and refine_steps >= 64:
            gain = _mean(having, key, 64, "iou") - _mean(having, key, 0, "iou")
            print(f"worst {len(having)} ({key}): mean iou gain after 64 steps {gain:+.3f} (target >= +0.1)")


if __name__ == "__main__":
    main()
