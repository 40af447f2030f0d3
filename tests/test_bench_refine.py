"""scripts/bench_refine.py: the summary of saved curves (the two targets of issue #13)."""

from __future__ import annotations

import pytest
from script_loader import loaded_script


@pytest.fixture(scope="module")
def bench():
    yield from loaded_script("bench_refine")


def _curve(pairs):
    return [
        {"step": s, "seconds": s / 2, "iou": v, "surface_color_right": 1.0, "r_precision": 0.5}
        for s, v in pairs
    ]


def test_report_names_the_crossing_step_and_the_worst_case_gain(bench, capsys):
    rows = [
        {
            "group": "heldout",
            "refine": _curve([(0, 0.5), (16, 0.62), (32, 0.7), (64, 0.72)]),
            "scratch": _curve([(0, 0.0), (128, 0.5), (256, 0.65)]),
        },
        {"group": "worst", "refine": _curve([(0, 0.0), (16, 0.1), (32, 0.1), (64, 0.2)])},
        {
            "group": "worst",
            "refine": _curve([(0, 0.2), (16, 0.2), (32, 0.3), (64, 0.3)]),
            "refine-unfrozen": _curve([(0, 0.2), (16, 0.3), (32, 0.4), (64, 0.5)]),
        },
    ]
    bench.report(rows, refine_steps=64, scratch_steps=256)
    out = capsys.readouterr().out
    # One prompt has both arms: scratch ends at 0.65, which refine passes at step 32 (0.62 at 16 is short).
    assert "scratch 256-step mean iou 0.650; refine reaches it at step 32 (target <= 51)" in out
    assert "worst 2 (refine): mean iou gain after 64 steps +0.150" in out
    assert "worst 1 (refine-unfrozen): mean iou gain after 64 steps +0.300" in out
    assert "refine-unfrozen  (1) 0: 0.200/1.00/0.50/0s" in out
