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

    python scripts/bench_refine.py --quick          # a few prompts, minutes on 2 CPU cores
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
    extra_h = [c for c in heldout if c.prompt not in taken][: 2 if quick else 4]
    extra_w = [c for c in wording if c.prompt not in taken][::7][: 2 if quick else 4]
    chosen += [("heldout", c) for c in extra_h] + [("wording", c) for c in extra_w]
    return chosen, preview


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer candidates and prompts, coarser scoring")
    parser.add_argument("--worst", type=int, default=10, help="worst preview cases refined")
    parser.add_argument("--refine-steps", type=int, default=64)
    parser.add_argument("--scratch-steps", type=int, default=256)
    parser.add_argument("--unfrozen", action="store_true", help="also refine with a trainable head")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="", help="write every curve here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = EvalSettings(resolution=48, views=4, n_points=512) if args.quick else EvalSettings()
    generator = Generator.default()
    prior = load_prior("shapes")
    worst = args.worst
    started = time.perf_counter()
    cases, _ = pick_cases(generator, args.quick, worst)
    load = os.getloadavg()
    print(
        f"{len(cases)} prompts; load average {load[0]:.1f} at start; "
        f"picked in {time.perf_counter() - started:.0f} s"
    )
    refine_marks = [m for m in (8, 16, 32, 64, 128) if m <= args.refine_steps]
    scratch_marks = [m for m in (32, 64, 128, 256, 512) if m <= args.scratch_steps]
    variants = [("refine", True)] + ([("refine-unfrozen", False)] if args.unfrozen else [])
    rows = []
    for group, case in cases:
        row = {"group": group, "prompt": case.prompt, "object": f"{case.obj.color} {case.obj.shape}"}
        for name, frozen in variants:
            target = RefineTarget(case.prompt, warm_field(generator, case.prompt), generator.config)
            config = RefineConfig(steps=args.refine_steps, freeze_head=frozen)
            row[name] = curve(target, prior, config, refine_marks, case, generator, settings)
        r = row["refine"][-1]
        start = row["refine"][0]["iou"]
        line = f"{group:8s} {case.prompt!r:44s} iou {start:.3f} -> {r['iou']:.3f} ({r['seconds']:.0f} s)"
        if not (args.quick and group == "worst"):  # quick: the baseline on the other groups only
            target = RefineTarget(case.prompt, fresh_prompt_field(generator.config), generator.config)
            config = from_scratch_config(args.scratch_steps)
            row["scratch"] = curve(target, prior, config, scratch_marks, case, generator, settings)
            s = row["scratch"][-1]
            line += f" | scratch {s['iou']:.3f} ({s['seconds']:.0f} s)"
        rows.append(row)
        print(line, flush=True)
    report(rows, variants, refine_marks, scratch_marks, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "load_at_start": load, "rows": rows}, f, indent=1)


def _mean(rows, key, step, metric) -> float:
    values = [next(p[metric] for p in r[key] if p["step"] == step) for r in rows]
    return sum(values) / max(len(values), 1)


def report(rows, variants, refine_marks, scratch_marks, args) -> None:
    groups = ["all", *dict.fromkeys(r["group"] for r in rows)]
    for group in groups:
        chosen = rows if group == "all" else [r for r in rows if r["group"] == group]
        print(f"\n{group} ({len(chosen)} prompts): mean iou / colour / R-precision / seconds")
        for key, marks in [
            *((name, [0, *refine_marks]) for name, _ in variants),
            ("scratch", [0, *scratch_marks]),
        ]:
            cells = []
            for step in marks:
                iou, colour, rp, secs = (
                    _mean(chosen, key, step, m)
                    for m in ("iou", "surface_color_right", "r_precision", "seconds")
                )
                cells.append(f"{step}: {iou:.3f}/{colour:.2f}/{rp:.2f}/{secs:.0f}s")
            print(f"  {key:16s} " + "  ".join(cells))
    final = args.scratch_steps
    both = [r for r in rows if "scratch" in r]
    goal = _mean(both, "scratch", final, "iou")
    reached = next((s for s in [0, *refine_marks] if _mean(both, "refine", s, "iou") >= goal), None)
    print(
        f"\nscratch {final}-step mean iou {goal:.3f}; refine reaches it at step {reached} "
        f"(target <= {final // 5})"
    )
    worst = [r for r in rows if r["group"] == "worst"]
    if worst and 64 in refine_marks:
        gain = _mean(worst, "refine", 64, "iou") - _mean(worst, "refine", 0, "iou")
        print(f"worst {len(worst)}: mean iou gain after 64 refine steps {gain:+.3f} (target >= +0.1)")


if __name__ == "__main__":
    main()
