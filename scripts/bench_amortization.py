#!/usr/bin/env python3
"""The ATT3D benchmark: quality vs training compute, amortized vs per-prompt SDS on ShapesWorld.

Three curves, same prior, same renderer, same model config (checked):

- (a) **amortized**: one run of ``configs/shapes_amortized.yaml`` on N train prompts, scored on them;
- (b) **per-prompt**: one run of ``configs/shapes_per_prompt.yaml`` per train prompt (DreamFusion through
  the same trainer), with the same per-step batch: ``P × V`` views of one prompt where the amortized run
  renders ``P`` prompts × ``V`` views;
- (c) **held-out**: the amortized run scored on held-out prompts it never trained on (per-prompt
  optimization has no answer for them without a run of its own).

Compute is counted in **rendered frames** (prompts × views × steps, summed over all runs of a method) and
in wall seconds of ``att3d.training.loop.train`` calls on this machine. Each run is trained in segments up
to geometric step budgets (``total, total/2, total/4, ...``) by resuming its own checkpoint (bit-exact on
the CPU, see ``att3d.training.state``), and every budget's checkpoint is scored with
``att3d.shapes.evaluate`` (IoU, colour accuracy, R-precision). Runs advance budget by budget, amortized
first, so a run stopped early (``--deadline-s``, Ctrl-C) still leaves comparable points for both methods.

Outputs in ``--out``: ``results.json`` (every point, per-case scores, the summary), ``quality_vs_frames.png``
(log-x plot) and ``results.md`` (table). The summary gives, per metric, the frames the amortized run needs
to first reach the per-prompt runs' final quality and the ratio to the per-prompt frames (target <= 1/3),
plus the time to produce a new object: one amortized forward pass + mesh vs per-prompt optimization to the
amortized held-out quality.

Resumable: finished segments and evaluations are skipped; rerun the same command to continue. The
settings are stored in ``--out/settings.json`` and a rerun with different ones is refused.

**Reusing an amortized run** (``--amortized-run DIR --amortized-steps 100,200,...``): the amortized curve
is scored from the checkpoints of an existing ``att3d train`` run on the whole ShapesWorld train split (e.g.
the shipped model's run) instead of being trained again, and the per-prompt runs cover an evenly spread
subset of ``--prompts K`` of its prompts. Per-prompt runs are independent, so their compute for all ``N``
prompts is estimated as ``N/K`` times that of the ``K`` runs; quality is compared on the same ``K`` prompts
(the amortized run is also scored on all ``N``). The reused run's wall time is its step count times a step
time measured here (a short run of its config on this machine), since its own training may have shared the
machine.

GPU (see docs/BENCHMARKS.md)::

    python scripts/bench_amortization.py --device cuda --out runs/bench_amortization

CPU smoke test (what tests/test_bench_amortization.py runs, under a minute)::

    python scripts/bench_amortization.py --device cpu --quick --out /tmp/bench_quick
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a checkout without installing the package

import torch  # noqa: E402
import yaml  # noqa: E402

from att3d.atomic import atomic_write, write_json_atomic, write_text_atomic  # noqa: E402
from att3d.config import ConfigError, TrainConfig, load_config, to_dict  # noqa: E402
from att3d.shapes.eval_cases import EvalCase  # noqa: E402
from att3d.shapes.evaluate import EvalSettings, mean_scores  # noqa: E402
from att3d.training.errors import TrainingError  # noqa: E402

if TYPE_CHECKING:
    from att3d.priors.base import DiffusionPrior
    from att3d.text import TextEncoder

RESULTS_VERSION = 1
"""Version of the ``results.json`` layout."""
AMORTIZED_CONFIG = REPO / "configs" / "shapes_amortized.yaml"
PER_PROMPT_CONFIG = REPO / "configs" / "shapes_per_prompt.yaml"
QUALITY_METRICS = ("iou", "color_accuracy", "r_precision")
"""Higher-is-better metrics plotted and used for the crossing points."""
HEADLINE_METRIC = "iou"
"""Metric of the headline compute ratio."""
TARGET_RATIO = 1.0 / 3.0
"""The issue's target: amortized reaches per-prompt quality with at most this fraction of the frames."""
NEW_OBJECT_REPEATS = 3
"""Timed ``Generator.generate`` calls per held-out prompt (after one warm-up)."""
NEW_OBJECT_PROMPTS = 3
"""Held-out prompts timed for the new-object latency."""
STEP_TIMING_WARMUP, STEP_TIMING_STEPS = 5, 20
"""Reused amortized run: steps of its config run (and discarded) before the timed ones, and timed steps."""

TINY_CONFIG = REPO / "configs" / "tiny_test.yaml"
"""Its ``model`` section is the tiny model of ``--quick``."""
QUICK_MESH = ["model.mesh.resolution=32", "model.mesh.coarse_resolution=16"]
"""``--quick`` meshes (scored at 16³ anyway): smaller than the default 128³."""


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (for naming the keys two configs disagree on)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _tiny_model_overrides() -> list[str]:
    """configs/tiny_test.yaml's ``model`` section as ``model.…=value`` overrides (for any base config)."""
    model = yaml.safe_load(TINY_CONFIG.read_text())["model"]
    return [f"model.{key}={json.dumps(value)}" for key, value in _flatten(model).items()]


QUICK_MODEL = [*_tiny_model_overrides(), *QUICK_MESH]
"""``--quick``: the tiny field rendered at 16 px (both configs)."""
QUICK_AMORTIZED = ["prompts_per_step=2", "views_per_prompt=1"]
"""``--quick``: 2 frames per step (so per-prompt runs render 2 views of their prompt)."""
QUICK_DEFAULTS = {"prompts": 2, "heldout": 1, "steps_amortized": 8, "steps_per_prompt": 4, "budgets": 2}
"""``--quick`` values of the flags that were not given."""
QUICK_EVAL = EvalSettings(resolution=16, views=4, image_size=32, n_points=256)
"""``--quick`` scoring: 16³ IoU grid, 4 views, 256 surface points."""


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BenchSettings:
    """Everything that decides the benchmark's numbers (stored in ``--out/settings.json``)."""

    device: str
    """``cpu``, ``cuda`` or ``cuda:N`` (resolved from ``auto``)."""
    prompts: int | None
    """Train prompts used (an evenly spread subset of the split); ``None``: all."""
    heldout: int | None
    """Held-out prompts scored (evenly spread); ``None``: all."""
    steps_amortized: int
    """Steps of the amortized run (0: the config's)."""
    steps_per_prompt: int
    """Steps of each per-prompt run (0: the config's)."""
    budgets: int
    """Geometric budgets per run: ``steps, steps/2, ..., steps/2^(budgets-1)``."""
    quick: bool
    """Tiny sizes for the CPU smoke test."""
    overrides: list[str]
    """Extra ``key=value`` overrides applied to both configs (after the quick ones)."""
    amortized_config: str
    """YAML of the amortized run."""
    per_prompt_config: str
    """YAML of the per-prompt runs."""
    eval_settings: dict[str, int]
    """``att3d.shapes.evaluate.EvalSettings`` fields."""
    amortized_run: str | None = None
    """An existing amortized run folder scored instead of training one (``None``: train it here)."""
    amortized_steps: list[int] | None = None
    """Checkpoint steps of ``amortized_run`` to score (its budgets)."""


def parse_args(argv: Sequence[str] | None) -> tuple[BenchSettings, Path, float | None, bool]:
    """Command line -> (settings, output folder, deadline in seconds or ``None``, replot only)."""
    parser = argparse.ArgumentParser(
        description="ATT3D benchmark: quality vs rendered frames, amortized vs per-prompt SDS (ShapesWorld)."
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--out", type=Path, required=True, help="Output folder (runs, evaluations, reports).")
    parser.add_argument("--prompts", type=int, help="Train prompts (evenly spread subset; default all).")
    parser.add_argument("--heldout", type=int, help="Held-out prompts scored (default all).")
    parser.add_argument("--steps-amortized", type=int, help="Steps of the amortized run (default: config).")
    parser.add_argument(
        "--steps-per-prompt", type=int, help="Steps of each per-prompt run (default: config)."
    )
    parser.add_argument("--budgets", type=int, help="Geometric budgets per run, halving from the end (6).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes for a CPU smoke test.")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Config override applied to both runs (repeatable), e.g. model.render.samples_per_ray=32.",
    )
    parser.add_argument("--amortized-config", type=Path, default=AMORTIZED_CONFIG)
    parser.add_argument("--per-prompt-config", type=Path, default=PER_PROMPT_CONFIG)
    parser.add_argument(
        "--deadline-s",
        type=float,
        help="Stop training this many seconds after the prior is loaded and report what exists.",
    )
    parser.add_argument(
        "--replot", action="store_true", help="Only redraw the PNG from --out/results.json (no training)."
    )
    parser.add_argument(
        "--amortized-run",
        type=Path,
        help="Score this existing att3d train run (ShapesWorld train split) instead of training one.",
    )
    parser.add_argument(
        "--amortized-steps",
        help="With --amortized-run: comma-separated checkpoint steps to score, e.g. 100,200,400,800.",
    )
    args = parser.parse_args(argv)

    quick = QUICK_DEFAULTS if args.quick else {}
    values = {
        key: getattr(args, key) if getattr(args, key) is not None else quick.get(key)
        for key in ("prompts", "heldout", "steps_amortized", "steps_per_prompt", "budgets")
    }
    values["budgets"] = values["budgets"] or 6
    for key, low in (("prompts", 2), ("heldout", 0), ("steps_amortized", 1), ("steps_per_prompt", 1)):
        if values[key] is not None and values[key] < low:
            parser.error(f"--{key.replace('_', '-')} must be >= {low}, got {values[key]}")
    if values["budgets"] < 1:
        parser.error(f"--budgets must be >= 1, got {values['budgets']}")
    if args.deadline_s is not None and args.deadline_s <= 0:
        parser.error(f"--deadline-s must be > 0, got {args.deadline_s}")
    for path in (args.amortized_config, args.per_prompt_config):
        if not path.is_file():
            parser.error(f"config file not found: {path}")
    amortized_steps = None
    if (args.amortized_run is None) != (args.amortized_steps is None):
        parser.error("--amortized-run and --amortized-steps go together")
    if args.amortized_run is not None:
        if not (args.amortized_run / "config.yaml").is_file():
            parser.error(f"--amortized-run: {args.amortized_run / 'config.yaml'} not found")
        if args.steps_amortized is not None:
            parser.error("--steps-amortized does not apply to a reused run (use --amortized-steps)")
        try:
            amortized_steps = sorted({int(v) for v in args.amortized_steps.split(",") if v.strip()})
        except ValueError:
            parser.error(f"--amortized-steps: expected integers like 100,200, got {args.amortized_steps!r}")
        if not amortized_steps or amortized_steps[0] < 1:
            parser.error(f"--amortized-steps: expected positive steps, got {args.amortized_steps!r}")

    from att3d.devices import resolve_device

    try:
        device = str(resolve_device(args.device))
    except ConfigError as err:
        parser.error(f"--device: {err}")
    settings = BenchSettings(
        device=device,
        prompts=values["prompts"],
        heldout=values["heldout"],
        steps_amortized=values["steps_amortized"] or 0,  # 0: the config's (run_benchmark resolves it)
        steps_per_prompt=values["steps_per_prompt"] or 0,
        budgets=values["budgets"],
        quick=args.quick,
        overrides=list(args.overrides),
        amortized_config=str(args.amortized_config),
        per_prompt_config=str(args.per_prompt_config),
        eval_settings=dataclasses.asdict(QUICK_EVAL if args.quick else EvalSettings()),
        amortized_run=str(args.amortized_run) if args.amortized_run is not None else None,
        amortized_steps=amortized_steps,
    )
    return settings, args.out, args.deadline_s, args.replot


# --------------------------------------------------------------------------------------------------
# The plan: prompts, configs, budgets
# --------------------------------------------------------------------------------------------------


def geometric_budgets(total: int, count: int) -> list[int]:
    """Step budgets ``ceil(total / 2^k)`` for ``k = count-1 ... 0``, without repeats, ending at ``total``."""
    if total < 1 or count < 1:
        raise ValueError(f"need total >= 1 and count >= 1, got total={total}, count={count}")
    return sorted({max(1, math.ceil(total / 2**k)) for k in range(count)})


def spread_subset(items: Sequence[str], count: int | None, what: str) -> list[str]:
    """``count`` items evenly spaced through ``items`` (all when ``None``). The split is shape-major with 7
    colours per shape, so spacing keeps several shapes and colours in a small subset, except for a count
    of 7 (a stride of 7 picks the same colour slot of every shape); 8 picks 7 shapes and 7 colours."""
    if count is None:
        return list(items)
    if count > len(items):
        raise ConfigError(f"--{what}: asked for {count} prompts but the split has {len(items)}")
    return [items[(i * len(items)) // count] for i in range(count)]


@dataclasses.dataclass
class Plan:
    """The resolved runs of a benchmark."""

    amortized: TrainConfig
    """The amortized run's config (steps = its last budget)."""
    per_prompt: dict[str, TrainConfig]
    """One config per compared train prompt."""
    train_cases: list[EvalCase]
    """The compared train prompts: both methods are scored on these."""
    heldout_cases: list[EvalCase]
    budgets_amortized: list[int]
    budgets_per_prompt: list[int]
    amortized_train_cases: list[EvalCase] = dataclasses.field(default_factory=list)
    """Every prompt the amortized run trains on (a superset of ``train_cases`` when reusing a run)."""
    reused_run: Path | None = None
    """The existing amortized run scored instead of training one."""

    @property
    def amortized_prompt_count(self) -> int:
        """Prompts the amortized run covers; per-prompt compute is stated for this many prompts."""
        return len(self.amortized_train_cases or self.train_cases)

    @property
    def frames_per_step_amortized(self) -> int:
        return self.amortized.prompts_per_step * self.amortized.views_per_prompt

    @property
    def frames_per_step_per_prompt(self) -> int:
        config = next(iter(self.per_prompt.values()))
        return config.prompts_per_step * config.views_per_prompt


def _with_steps(config: TrainConfig, steps: int) -> TrainConfig:
    """``config`` run for ``steps``, its t-annealing stretched in proportion (same schedule shape)."""
    anneal = round(config.sds.t_anneal_steps * steps / config.steps)
    return dataclasses.replace(
        config, steps=steps, sds=dataclasses.replace(config.sds, t_anneal_steps=anneal)
    )


def _bench_overrides(settings: BenchSettings) -> list[str]:
    """Settings every benchmark run shares: checkpoints only at segment ends (newest kept), no logs."""
    return [
        f"device={settings.device}",
        "checkpoint_every=0",
        "keep_checkpoints=1",
        "eval_every=0",
        "preview_every=0",
        "log_every=0",
        "progress_bar=false",
    ]


def build_plan(settings: BenchSettings) -> Plan:
    """Configs of every run and the cases each is scored on; raises ``ConfigError`` on a mismatch."""
    from att3d.shapes.eval_cases import split_cases

    model = QUICK_MODEL if settings.quick else []
    common = [*model, *settings.overrides, *_bench_overrides(settings)]
    if settings.amortized_run is not None:  # its config is what it was trained with: no overrides but ours
        run_config = Path(settings.amortized_run) / "config.yaml"
        amortized = load_config(TrainConfig, run_config, _bench_overrides(settings))
    else:
        amortized = load_config(
            TrainConfig,
            settings.amortized_config,
            [*(QUICK_AMORTIZED if settings.quick else []), *common],
        )
    per_prompt = load_config(TrainConfig, settings.per_prompt_config, common)
    if to_dict(amortized.model) != to_dict(per_prompt.model):
        if settings.amortized_run is not None:
            a, p = _flatten(to_dict(amortized.model)), _flatten(to_dict(per_prompt.model))
            differ = ", ".join(f"model.{k}={a.get(k)!r}" for k in sorted(a) if a.get(k) != p.get(k))
            raise ConfigError(
                f"the reused run's model differs from {settings.per_prompt_config}: pass --set {differ}"
            )
        raise ConfigError(
            f"{settings.amortized_config} and {settings.per_prompt_config} define different models; "
            "the benchmark compares the same model, renderer and prior"
        )
    if amortized.prior != per_prompt.prior:
        raise ConfigError(f"the configs use different priors: {amortized.prior!r} vs {per_prompt.prior!r}")
    if amortized.progressive_levels or per_prompt.progressive_levels:
        raise ConfigError(
            "progressive_levels: not supported here (segments that stop before every level is active are "
            "rejected by TrainConfig)"
        )

    all_train_cases = split_cases("train")
    if settings.amortized_run is not None:
        source = amortized.prompts
        if (source.source, source.split, source.all_phrasings) != ("shapes", "train", False):
            raise ConfigError(
                f"--amortized-run: {settings.amortized_run} was not trained on the ShapesWorld train split "
                "(prompts.source=shapes, split=train, canonical phrasings); only such runs are scored here"
            )
    wanted = spread_subset([c.prompt for c in all_train_cases], settings.prompts, "prompts")
    train_cases = [c for c in all_train_cases if c.prompt in wanted]
    heldout_cases = split_cases("heldout")
    wanted = spread_subset([c.prompt for c in heldout_cases], settings.heldout, "heldout")
    heldout_cases = [c for c in heldout_cases if c.prompt in wanted]
    train_prompts = [c.prompt for c in train_cases]

    steps_per_prompt = settings.steps_per_prompt or per_prompt.steps
    if settings.amortized_run is not None:
        budgets_amortized = list(settings.amortized_steps or [])
        amortized = dataclasses.replace(amortized, steps=budgets_amortized[-1])  # same schedule as trained
    else:
        steps_amortized = settings.steps_amortized or amortized.steps
        budgets_amortized = geometric_budgets(steps_amortized, settings.budgets)
        amortized = _with_steps(amortized, steps_amortized)
        amortized = dataclasses.replace(
            amortized,
            prompts=dataclasses.replace(
                amortized.prompts,
                source="list",
                prompts=train_prompts,
                heldout=[c.prompt for c in heldout_cases],
            ),
        )
    if amortized.interp_prob > 0 and len(train_prompts) < amortized.interp_prompts:
        raise ConfigError(
            f"--prompts {len(train_prompts)}: the amortized config mixes {amortized.interp_prompts} prompts "
            "per interpolant"
        )
    # Same per-step batch: one prompt seen from as many views as the amortized run renders frames.
    per_prompt = dataclasses.replace(
        _with_steps(per_prompt, steps_per_prompt),
        prompts_per_step=1,
        views_per_prompt=amortized.prompts_per_step * amortized.views_per_prompt,
        interp_prob=0.0,
    )
    configs = {
        prompt: dataclasses.replace(
            per_prompt,
            prompts=dataclasses.replace(per_prompt.prompts, source="list", prompts=[prompt], heldout=[]),
        )
        for prompt in train_prompts
    }
    return Plan(
        amortized=amortized,
        per_prompt=configs,
        train_cases=train_cases,
        heldout_cases=heldout_cases,
        budgets_amortized=budgets_amortized,
        budgets_per_prompt=geometric_budgets(steps_per_prompt, settings.budgets),
        amortized_train_cases=all_train_cases if settings.amortized_run is not None else train_cases,
        reused_run=Path(settings.amortized_run) if settings.amortized_run is not None else None,
    )


def check_settings_file(out: Path, settings: BenchSettings) -> None:
    """Store the settings on the first run; refuse to continue a benchmark made with other settings."""
    path = out / "settings.json"
    current = dataclasses.asdict(settings)
    if path.is_file():
        stored = json.loads(path.read_text())
        changed = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
        if changed:
            details = ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{out} holds a benchmark made with other settings ({details}); use a new --out"
            )
        return
    write_json_atomic(path, current)


# --------------------------------------------------------------------------------------------------
# Runs: segmented training, timing, evaluation
# --------------------------------------------------------------------------------------------------


def slug(text: str) -> str:
    """A folder name for a prompt: lowercase words joined by dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "prompt"


def read_timing(run_dir: Path) -> list[dict[str, float]]:
    """Training segments of a run: ``{"start": step, "end": step, "seconds": s}``, oldest first."""
    path = run_dir / "timing.json"
    return json.loads(path.read_text())["segments"] if path.is_file() else []


def wall_seconds(segments: Sequence[dict[str, float]], step: int) -> float:
    """Training wall seconds a run spent to reach ``step`` (segments ending at or before it)."""
    return float(sum(s["seconds"] for s in segments if s["end"] <= step))


def latest_step(run_dir: Path) -> int:
    from att3d.training.run_folder import list_checkpoints

    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0


def advance_run(
    config: TrainConfig,
    run_dir: Path,
    step: int,
    prior: DiffusionPrior,
    encoder: TextEncoder,
    cancel: threading.Event,
    label: str,
) -> bool:
    """Train the run in ``run_dir`` up to ``step`` (resuming its checkpoint); False if it stopped early.

    The wall time of the ``train`` call (set-up, steps, checkpoint write; CUDA synchronized) is appended
    to the run's ``timing.json``.
    """
    from att3d.training.loop import train

    start = latest_step(run_dir)
    if start >= step:
        return True
    log(f"[{label}] training steps {start} -> {step}")
    began = time.perf_counter()
    result = train(
        dataclasses.replace(config, steps=step),
        run_dir,
        resume=True,
        prior=prior,
        text_encoder=encoder,
        cancel=cancel,
    )
    if torch.device(config.device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    segments = [*read_timing(run_dir), {"start": start, "end": result.step, "seconds": seconds}]
    write_json_atomic(run_dir / "timing.json", {"segments": segments})
    log(f"[{label}] step {result.step} ({result.status}, loss {result.loss:.4g}) in {seconds:.1f} s")
    return result.status == "completed" and result.step >= step


def evaluate_step(
    run_dir: Path,
    step: int,
    cases: Sequence[EvalCase],
    settings: EvalSettings,
    device: str,
    label: str,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]] | None:
    """Per-case scores of the run's checkpoint at ``step``, cached in ``cache_dir`` (default: the run's
    ``eval/``) as ``step_XXXXXXX.json``.

    ``None`` when neither the cache nor the checkpoint exists (e.g. the run stopped before ``step``).
    """
    from att3d.generate import Generator
    from att3d.shapes.classifier import default_classifier
    from att3d.shapes.evaluate import evaluate_generator
    from att3d.training.run_folder import checkpoint_dir

    path = (cache_dir or run_dir / "eval") / f"step_{step:07d}.json"
    if path.is_file():
        return json.loads(path.read_text())["cases"]
    checkpoint = checkpoint_dir(run_dir, step)
    if not (checkpoint / "manifest.json").is_file():
        if latest_step(run_dir) > step:  # only the newest checkpoint is kept: it cannot be scored any more
            log(f"[{label}] warning: step {step} was not scored and its checkpoint is gone; delete {run_dir}")
        return None
    log(f"[{label}] scoring step {step} on {len(cases)} prompt(s)")
    generator = Generator.from_checkpoint(checkpoint, device=device)
    results = evaluate_generator(generator, cases, settings, default_classifier(device))
    write_json_atomic(path, {"step": step, "cases": results})
    return results


def measure_step_seconds(
    config: TrainConfig,
    run_dir: Path,
    prior: DiffusionPrior,
    encoder: TextEncoder,
    cancel: threading.Event,
) -> float | None:
    """Seconds per training step of ``config`` on this machine: a few warm-up steps, then
    ``STEP_TIMING_STEPS`` timed ones (set-up and checkpoint write included, as in every segment here)."""
    warm = STEP_TIMING_WARMUP
    timed = warm + STEP_TIMING_STEPS
    for step in (warm, timed):
        if not advance_run(config, run_dir, step, prior, encoder, cancel, "step timing"):
            return None
    segment = next((s for s in read_timing(run_dir) if s["start"] == warm and s["end"] == timed), None)
    return segment["seconds"] / STEP_TIMING_STEPS if segment else None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Points and summary
# --------------------------------------------------------------------------------------------------


def make_point(
    method: str, split: str, step: int, frames: int, wall_s: float, results: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """One point of a quality-vs-compute curve (means over ``results``)."""
    means = mean_scores(results)["overall"]
    return {
        "method": method,
        "split": split,
        "step": step,
        "frames": frames,
        "wall_s": round(wall_s, 3),
        **{key: means[key] for key in ("iou", "color_accuracy", "color_distance", "r_precision", "cases")},
    }


def first_reaching(points: Sequence[dict[str, Any]], metric: str, target: float) -> dict[str, Any] | None:
    """The cheapest point (fewest frames) whose ``metric`` is at least ``target``."""
    for point in sorted(points, key=lambda p: p["frames"]):
        if point[metric] >= target:
            return point
    return None


def curve(points: Sequence[dict[str, Any]], method: str, split: str) -> list[dict[str, Any]]:
    return sorted(
        (p for p in points if p["method"] == method and p["split"] == split), key=lambda p: p["frames"]
    )


def summarize(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the per-prompt runs' final quality, the frames and wall time each method needs to first
    reach it, and their ratios (amortized / per-prompt)."""
    amortized = curve(points, "amortized", "train")
    per_prompt = curve(points, "per_prompt", "train")
    if not amortized or not per_prompt:
        return {"note": "not enough points: both methods need at least one scored budget"}
    final = per_prompt[-1]
    crossings = {}
    for metric in QUALITY_METRICS:
        target = final[metric]
        a, p = first_reaching(amortized, metric, target), first_reaching(per_prompt, metric, target)
        entry: dict[str, Any] = {
            "target": target,
            "per_prompt_frames": p["frames"] if p else None,
            "per_prompt_wall_s": p["wall_s"] if p else None,
            "amortized_frames": a["frames"] if a else None,
            "amortized_wall_s": a["wall_s"] if a else None,
            "reached": a is not None,
        }
        if a is not None and p is not None:
            entry["frames_ratio"] = a["frames"] / p["frames"]
            entry["wall_ratio"] = a["wall_s"] / p["wall_s"] if p["wall_s"] > 0 else None
        crossings[metric] = entry
    headline = crossings[HEADLINE_METRIC]
    return {
        "per_prompt_final": {key: final[key] for key in (*QUALITY_METRICS, "frames", "wall_s", "step")},
        "crossings": crossings,
        "headline_metric": HEADLINE_METRIC,
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(
            headline.get("frames_ratio") is not None and headline["frames_ratio"] <= TARGET_RATIO
        ),
    }


def time_new_object(checkpoint: Path, prompts: Sequence[str], device: str) -> dict[str, Any]:
    """Median seconds of ``Generator.generate`` (embedding -> field -> mesh) on held-out prompts."""
    from att3d.generate import Generator
    from att3d.meshing.errors import NoSurfaceError

    generator = Generator.from_checkpoint(checkpoint, device=device)
    generator.embed(list(prompts))  # fill the text cache: the timing is of the model, not the encoder load

    def once(prompt: str) -> float:
        began = time.perf_counter()
        generator.generate(prompt)
        if generator.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    times, failures = [], []
    for prompt in prompts:
        try:
            once(prompt)  # warm-up (allocations, kernels)
            times.extend(once(prompt) for _ in range(NEW_OBJECT_REPEATS))
        except NoSurfaceError as err:
            failures.append(f"{prompt}: {err}")
    return {
        "prompts": list(prompts),
        "seconds_median": statistics.median(times) if times else None,
        "seconds_min": min(times) if times else None,
        "mesh_resolution": generator.config.mesh.resolution,
        "failures": failures,
    }


def new_object_summary(
    points: Sequence[dict[str, Any]], timing: dict[str, Any] | None, prompts: int
) -> dict[str, Any]:
    """Amortized forward pass vs per-prompt optimization to the amortized held-out quality (IoU)."""
    heldout = curve(points, "amortized", "heldout")
    per_prompt = curve(points, "per_prompt", "train")
    summary: dict[str, Any] = {"amortized": timing}
    if not heldout or not per_prompt:
        return summary
    target = heldout[-1][HEADLINE_METRIC]
    reached = first_reaching(per_prompt, HEADLINE_METRIC, target)
    summary["per_prompt"] = {
        "target_metric": HEADLINE_METRIC,
        "target": target,
        "reached": reached is not None,
        # Mean training wall time of one per-prompt run to that budget (the runs' total / prompt count).
        "seconds_per_object": reached["wall_s"] / prompts if reached else None,
        "steps": reached["step"] if reached else None,
    }
    return summary


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


LABELS = {
    ("amortized", "train"): "amortized, compared train prompts",
    ("amortized", "train_all"): "amortized, all train prompts of the run",
    ("amortized", "heldout"): "amortized, held-out prompts",
    ("per_prompt", "train"): "per-prompt, compared train prompts",
}


def write_plot(path: Path, points: Sequence[dict[str, Any]], title: str) -> None:
    """Quality vs rendered frames (log x), one panel per metric; dashed: the per-prompt final quality."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(QUALITY_METRICS), figsize=(5 * len(QUALITY_METRICS), 4), squeeze=False)
    names = {"iou": "IoU", "color_accuracy": "colour accuracy", "r_precision": "R-precision"}
    styles = {
        ("amortized", "train"): "o-",
        ("amortized", "train_all"): "o:",
        ("amortized", "heldout"): "s--",
        ("per_prompt", "train"): "^-",
    }
    per_prompt = curve(points, "per_prompt", "train")
    for ax, metric in zip(axes[0], QUALITY_METRICS, strict=True):
        for (method, split), label in LABELS.items():
            line = curve(points, method, split)
            if line:
                ax.plot(
                    [p["frames"] for p in line], [p[metric] for p in line], styles[method, split], label=label
                )
        if per_prompt:
            ax.axhline(per_prompt[-1][metric], color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel("rendered frames (total, for every train prompt of the amortized run)")
        ax.set_ylabel(names[metric])
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, which="both", alpha=0.3)
    if points:
        axes[0][0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    finally:
        plt.close(fig)


def plot_title(report: dict[str, Any]) -> str:
    prompts = report["prompts"]
    total = report.get("amortized_train_prompts", len(prompts["train"]))
    compared = f"{len(prompts['train'])} compared of {total}" if total != len(prompts["train"]) else total
    return (
        f"ShapesWorld, {compared} train / {len(prompts['heldout'])} held-out prompts, "
        f"{report['meta']['machine']}, {report['meta']['date'][:10]}"
    )


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_report(report: dict[str, Any]) -> str:
    """The points as a table, then the crossing and new-object summaries."""
    lines = [
        f"# ATT3D benchmark ({report['meta']['date']}, {report['meta']['machine']})",
        "",
        f"Command: `{report['meta']['command']}`",
        "",
    ]
    if report.get("reused_amortized_run"):
        total, compared = report["amortized_train_prompts"], len(report["prompts"]["train"])
        lines += [
            f"Amortized: the existing run `{report['reused_amortized_run']}` on {total} train prompts, wall "
            f"time = steps × {_fmt(report['amortized_seconds_per_step'])} s/step measured here. "
            f"Per-prompt: {compared} runs, frames and wall time scaled by {total}/{compared} to cover the "
            f"same {total} prompts. `train` rows score the {compared} compared prompts; `train_all` all "
            f"{total}.",
            "",
        ]
    lines += [
        "| method | prompts | step | frames | wall s | IoU | colour acc. | colour dist. | R-prec. |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sorted(report["points"], key=lambda p: (p["method"], p["split"], p["frames"])):
        lines.append(
            f"| {p['method'].replace('_', '-')} | {p['split']} ({p['cases']}) | {p['step']} "
            f"| {p['frames']:,} | {p['wall_s']:.1f} | {p['iou']:.3f} | {p['color_accuracy']:.2f} "
            f"| {p['color_distance']:.3f} | {p['r_precision']:.2f} |"
        )
    summary = report["summary"]
    lines += ["", "## Amortized frames to reach the per-prompt final quality", ""]
    if "crossings" in summary:
        lines += [
            "| metric | per-prompt final | per-prompt frames | amortized frames | frames ratio "
            "| wall ratio |",
            "|---|---|---|---|---|---|",
        ]
        for metric, c in summary["crossings"].items():
            lines.append(
                f"| {metric} | {c['target']:.3f} | {_fmt(c['per_prompt_frames'])} | "
                f"{_fmt(c['amortized_frames']) if c['reached'] else 'not reached'} | "
                f"{_fmt(c.get('frames_ratio'))} | {_fmt(c.get('wall_ratio'))} |"
            )
        verdict = "meets" if summary["meets_target"] else "does not meet"
        lines += ["", f"Headline ({summary['headline_metric']}): {verdict} the target ratio <= 1/3."]
    else:
        lines.append(summary["note"])
    new = report["new_object"]
    lines += ["", "## Time to a new object", ""]
    amortized = new.get("amortized") or {}
    lines.append(
        f"- amortized forward pass + mesh ({amortized.get('mesh_resolution', '—')}³): "
        f"{_fmt(amortized.get('seconds_median'), 4)} s median"
    )
    per_prompt = new.get("per_prompt")
    if per_prompt:
        reached = per_prompt["reached"]
        lines.append(
            f"- per-prompt optimization to the amortized held-out {per_prompt['target_metric']} "
            f"({per_prompt['target']:.3f}): "
            + (
                f"{per_prompt['seconds_per_object']:.2f} s per object ({per_prompt['steps']} steps)"
                if reached
                else "not reached within the budgets"
            )
        )
    if not report["complete"]:
        lines += [
            "",
            "**Partial**: the runs stopped before their last budget; rerun the command to continue.",
        ]
    return "\n".join(lines) + "\n"


def machine_description(device: str) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {platform.machine()}), torch {torch.__version__}"


# --------------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------------


def run_benchmark(
    settings: BenchSettings, out: Path, deadline_s: float | None, argv: Sequence[str]
) -> dict[str, Any]:
    """Train and score every run budget by budget, then write ``results.json``, the plot and the table."""
    from att3d.training.run_folder import checkpoint_dir
    from att3d.training.setup import build_prior, build_text_encoder

    plan = build_plan(settings)
    per_prompt_steps = next(iter(plan.per_prompt.values())).steps
    settings = dataclasses.replace(
        settings, steps_amortized=plan.amortized.steps, steps_per_prompt=per_prompt_steps
    )
    out.mkdir(parents=True, exist_ok=True)
    check_settings_file(out, settings)
    eval_settings = EvalSettings(**settings.eval_settings)
    prior = build_prior(plan.amortized.prior, torch.device(settings.device))
    encoder = build_text_encoder(plan.amortized)

    cancel = threading.Event()
    timer = threading.Timer(deadline_s, cancel.set) if deadline_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    amortized_dir = out / "runs" / "amortized"
    per_prompt_dirs = {
        prompt: out / "runs" / "per_prompt" / f"{i:02d}-{slug(prompt)}"
        for i, prompt in enumerate(plan.per_prompt)
    }
    amortized_cache = None
    if plan.reused_run is not None:  # score its checkpoints in place, keep the scores here
        amortized_dir, amortized_cache = plan.reused_run, out / "runs" / "amortized_reused" / "eval"
        missing = [
            s
            for s in plan.budgets_amortized
            if not (checkpoint_dir(amortized_dir, s) / "manifest.json").is_file()
            and not (amortized_cache / f"step_{s:07d}.json").is_file()
        ]
        if missing:
            raise ConfigError(f"--amortized-steps: {amortized_dir} has no checkpoint at step(s) {missing}")
    train_prompts = [c.prompt for c in plan.train_cases]
    case_of = {c.prompt: c for c in plan.train_cases}
    amortized_cases = [*plan.amortized_train_cases, *plan.heldout_cases]
    step_seconds = None
    amortized_results: dict[int, list[dict[str, Any]]] = {}
    per_prompt_results: dict[str, dict[int, list[dict[str, Any]]]] = {p: {} for p in train_prompts}

    stopped = False
    try:
        if plan.reused_run is not None:  # its own wall time may include a shared machine: time it here
            step_seconds = measure_step_seconds(
                plan.amortized, out / "runs" / "amortized_timing", prior, encoder, cancel
            )
            stopped = step_seconds is None
        # Budget-major: after k budgets both methods have k comparable points, whenever the run stops.
        # (A reused run may list another number of budgets than the per-prompt runs have.)
        rounds = max(len(plan.budgets_amortized), len(plan.budgets_per_prompt))
        for k in range(rounds):
            jobs = []
            if k < len(plan.budgets_amortized):
                step_a = plan.budgets_amortized[k]
                jobs.append(("amortized", plan.amortized, amortized_dir, step_a, amortized_cases))
            for i, (prompt, config) in enumerate(plan.per_prompt.items()):
                if k >= len(plan.budgets_per_prompt):
                    break
                name = f"per-prompt {i + 1}/{len(train_prompts)} {prompt!r}"
                step_p = plan.budgets_per_prompt[k]
                jobs.append((name, config, per_prompt_dirs[prompt], step_p, [case_of[prompt]]))
            for label, config, run_dir, step, cases in jobs:
                label = f"budget {k + 1}/{rounds}, {label}"
                reused = run_dir == plan.reused_run
                if not reused and not stopped and not cancel.is_set():
                    stopped = not advance_run(config, run_dir, step, prior, encoder, cancel, label)
                if reused and cancel.is_set():
                    continue
                results = evaluate_step(
                    run_dir,
                    step,
                    cases,
                    eval_settings,
                    settings.device,
                    label,
                    amortized_cache if reused else None,
                )
                if results is None:
                    continue
                if run_dir == amortized_dir:
                    amortized_results[step] = results
                else:
                    per_prompt_results[cases[0].prompt][step] = results
    finally:
        if timer is not None:
            timer.cancel()

    points = collect_points(
        plan, amortized_dir, per_prompt_dirs, amortized_results, per_prompt_results, step_seconds
    )
    complete = plan.budgets_amortized[-1] in amortized_results and all(
        plan.budgets_per_prompt[-1] in r for r in per_prompt_results.values()
    )
    timing = None
    final_checkpoint = checkpoint_dir(amortized_dir, plan.budgets_amortized[-1])
    heldout_prompts = [c.prompt for c in plan.heldout_cases][:NEW_OBJECT_PROMPTS]
    if complete and heldout_prompts and (final_checkpoint / "manifest.json").is_file():
        log("timing new objects (amortized forward pass + mesh)")
        timing = time_new_object(final_checkpoint, heldout_prompts, settings.device)

    command = " ".join(["python", "scripts/bench_amortization.py", *argv])
    report = {
        "version": RESULTS_VERSION,
        "meta": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_description(settings.device),
            "host": platform.node(),
            "command": command,
            "torch": torch.__version__,
        },
        "settings": dataclasses.asdict(settings),
        "configs": {
            "amortized": to_dict(plan.amortized),
            "per_prompt": to_dict(next(iter(plan.per_prompt.values()))),
        },
        "prompts": {"train": train_prompts, "heldout": [c.prompt for c in plan.heldout_cases]},
        "budgets": {"amortized": plan.budgets_amortized, "per_prompt": plan.budgets_per_prompt},
        "frames_per_step": {
            "amortized": plan.frames_per_step_amortized,
            "per_prompt": plan.frames_per_step_per_prompt,
        },
        "complete": complete,
        "reused_amortized_run": str(plan.reused_run) if plan.reused_run is not None else None,
        "amortized_train_prompts": plan.amortized_prompt_count,
        "amortized_seconds_per_step": step_seconds,
        "points": points,
        "per_prompt_runs": {
            prompt: per_prompt_curve(plan, per_prompt_dirs[prompt], by_step)
            for prompt, by_step in per_prompt_results.items()
        },
        "cases": {
            "amortized": {str(step): r for step, r in sorted(amortized_results.items())},
            "per_prompt": {
                p: {str(s): r for s, r in sorted(v.items())} for p, v in per_prompt_results.items()
            },
        },
        "summary": summarize(points),
        "new_object": new_object_summary(points, timing, plan.amortized_prompt_count),
    }
    write_json_atomic(out / "results.json", report)
    try:
        write_plot(out / "quality_vs_frames.png", points, plot_title(report))
    except ImportError as err:  # e.g. a GPU image without matplotlib: results.json has every point
        log(f"no plot ({err}); draw it elsewhere with --replot --out {out}")
    text = markdown_report(report)
    write_text_atomic(out / "results.md", text)
    return report


def collect_points(
    plan: Plan,
    amortized_dir: Path,
    per_prompt_dirs: dict[str, Path],
    amortized_results: dict[int, list[dict[str, Any]]],
    per_prompt_results: dict[str, dict[int, list[dict[str, Any]]]],
    step_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Curve points: amortized per budget (``train``: the compared prompts, ``train_all``: every prompt of a
    reused run, ``heldout``); per-prompt per budget that every run reached (metrics averaged over the
    prompts; frames and wall seconds summed over the runs and scaled to the amortized run's prompt count,
    a no-op unless a reused run covers more prompts than were optimized one by one).

    A reused run's wall time is ``step * step_seconds``; a run trained here uses its measured segments.
    """
    points = []
    segments = read_timing(amortized_dir)
    compared = {c.prompt for c in plan.train_cases}
    for step, results in sorted(amortized_results.items()):
        frames = plan.frames_per_step_amortized * step
        if plan.reused_run is not None:
            if step_seconds is None:
                continue
            wall = step * step_seconds
        else:
            wall = wall_seconds(segments, step)
        groups = {
            "train": [r for r in results if r["split"] == "train" and r["prompt"] in compared],
            "heldout": [r for r in results if r["split"] == "heldout"],
        }
        if len(plan.amortized_train_cases) > len(plan.train_cases):
            groups["train_all"] = [r for r in results if r["split"] == "train"]
        for split, rows in groups.items():
            if rows:
                points.append(make_point("amortized", split, step, frames, wall, rows))
    scale = plan.amortized_prompt_count / max(1, len(per_prompt_results))
    for step in plan.budgets_per_prompt:
        if not all(step in by_step for by_step in per_prompt_results.values()):
            continue
        rows = [row for by_step in per_prompt_results.values() for row in by_step[step]]
        wall = scale * sum(wall_seconds(read_timing(d), step) for d in per_prompt_dirs.values())
        frames = round(scale * plan.frames_per_step_per_prompt * step * len(per_prompt_results))
        points.append(make_point("per_prompt", "train", step, frames, wall, rows))
    return points


def per_prompt_curve(
    plan: Plan, run_dir: Path, by_step: dict[int, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The points of one per-prompt run (its own frames and wall seconds, not summed over prompts)."""
    segments = read_timing(run_dir)
    return [
        make_point(
            "per_prompt",
            "train",
            step,
            plan.frames_per_step_per_prompt * step,
            wall_seconds(segments, step),
            results,
        )
        | {"prompt": results[0]["prompt"]}
        for step, results in sorted(by_step.items())
    ]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, out, deadline_s, replot = parse_args(argv)
    if replot:
        results = out / "results.json"
        if not results.is_file():
            log(f"error: --replot: {results} not found")
            return 2
        report = json.loads(results.read_text())
        write_plot(out / "quality_vs_frames.png", report["points"], plot_title(report))
        print(f"wrote {out / 'quality_vs_frames.png'}")
        return 0
    try:
        report = run_benchmark(settings, out, deadline_s, argv)
    except ConfigError as err:  # bad settings (PromptSetError is one too): a message, not a traceback
        log(f"error: {err}")
        return 2
    except TrainingError as err:  # e.g. a run diverged: its message names the run's last good checkpoint
        log(f"error: {err}")
        return 1
    print(markdown_report(report), end="")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'quality_vs_frames.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
