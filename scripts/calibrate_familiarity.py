"""Pick a model's familiarity threshold from evaluation results.

A case is *bad* when its IoU is below ``--bad-iou`` (0.5); the threshold decides which prompts are reported
*unfamiliar* (similarity below it). This script chooses the threshold that best predicts bad cases, by F1 of
"unfamiliar" (default) or Youden's J (recall minus false-positive rate), and prints precision and recall:

    python scripts/calibrate_familiarity.py eval_wording.json eval_heldout.json [--checkpoint DIR]

Inputs are ``att3d eval --json`` reports (``{"cases": [...]}``) or plain lists of cases; each case needs
``iou`` and either ``similarity`` (or ``familiarity``: the number, or a dict holding ``similarity``) or a
``prompt``, whose similarity is then computed with the model of ``--checkpoint`` (default: the bundled
model). Write the printed value into the shipped manifest's metadata as ``familiarity_threshold``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CRITERIA = ("f1", "youden")


@dataclass(frozen=True)
class Separation:
    """How well ``similarity < threshold`` ("unfamiliar") predicts a bad case."""

    threshold: float
    precision: float
    """Of the cases called unfamiliar, the fraction that are bad (1 when none is called unfamiliar)."""
    recall: float
    """Of the bad cases, the fraction called unfamiliar (1 when there is no bad case)."""
    false_positive_rate: float
    """Of the good cases, the fraction called unfamiliar."""
    f1: float
    youden: float
    """recall - false_positive_rate."""
    flagged: int
    """Cases called unfamiliar."""


def separation(similarities: Sequence[float], bad: Sequence[bool], threshold: float) -> Separation:
    """Precision, recall, F1 and Youden's J of "unfamiliar" (similarity < ``threshold``) for ``bad``."""
    flagged = [s < threshold for s in similarities]
    tp = sum(f and b for f, b in zip(flagged, bad, strict=True))
    fp = sum(f and not b for f, b in zip(flagged, bad, strict=True))
    positives, negatives = sum(bad), len(bad) - sum(bad)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / positives if positives else 1.0
    fpr = fp / negatives if negatives else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Separation(threshold, precision, recall, fpr, f1, recall - fpr, tp + fp)


def calibrate(similarities: Sequence[float], bad: Sequence[bool], criterion: str = "f1") -> Separation:
    """The threshold maximizing ``criterion`` (``f1`` or ``youden``) over the cut points between the
    observed similarities (midpoints, plus one below and one above them all, rounded to 3 decimals); ties
    go to the lowest."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if not similarities or len(similarities) != len(bad):
        raise ValueError("need one bad/good label per similarity, and at least one case")
    values = sorted(set(similarities))
    midpoints = [(a + b) / 2 for a, b in itertools.pairwise(values)]
    cuts = [values[0] - 1e-3, *midpoints, values[-1] + 1e-3]
    best = None
    for cut in cuts:
        # Scored at the value written into the manifest (3 decimals), so the figures printed are its own.
        result = separation(similarities, bad, round(cut, 3))
        if best is None or getattr(result, criterion) > getattr(best, criterion) + 1e-12:
            best = result
    assert best is not None
    return best


def read_cases(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The cases of every file (an eval report's ``cases``, or a list)."""
    cases = []
    for path in paths:
        data = json.loads(path.read_text())
        rows = data["cases"] if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a list of cases or an object with 'cases'")
        cases.extend(rows)
    return cases


def case_similarity(case: dict[str, Any]) -> float | None:
    """The similarity a case carries, if any."""
    value = case.get("similarity", case.get("familiarity"))
    if isinstance(value, dict):
        value = value.get("similarity")
    return None if value is None else float(value)


def similarities_of(cases: list[dict[str, Any]], checkpoint: Path | None) -> list[float]:
    """Each case's similarity: its own, else computed from its prompt with the model."""
    found = [case_similarity(case) for case in cases]
    if all(s is not None for s in found):
        return found  # type: ignore[return-value]
    from att3d.generate import Generator

    generator = Generator.from_checkpoint(checkpoint) if checkpoint else Generator.default()
    out = []
    for case, similarity in zip(cases, found, strict=True):
        if similarity is None:
            familiarity = generator.familiarity(case["prompt"])
            if familiarity is None:
                raise ValueError("the model has no training prompts: no similarity to compute")
            similarity = familiarity.similarity
        out.append(similarity)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reports", nargs="+", type=Path, help="eval JSON files (att3d eval --json)")
    parser.add_argument("--checkpoint", type=Path, default=None, help="model for cases without similarity")
    parser.add_argument("--bad-iou", type=float, default=0.5, help="a case is bad below this IoU")
    parser.add_argument("--criterion", choices=CRITERIA, default="f1")
    args = parser.parse_args(argv)
    cases = read_cases(args.reports)
    similarities = similarities_of(cases, args.checkpoint)
    bad = [float(case["iou"]) < args.bad_iou for case in cases]
    best = calibrate(similarities, bad, args.criterion)
    print(f"cases {len(cases)}, bad (IoU < {args.bad_iou:g}) {sum(bad)}")
    print(
        f"threshold {best.threshold:.3f} ({args.criterion}): flags {best.flagged} unfamiliar; precision "
        f"{best.precision:.2f}, recall {best.recall:.2f}, F1 {best.f1:.2f}, false-positive rate "
        f"{best.false_positive_rate:.2f}, Youden J {best.youden:.2f}"
    )
    print(json.dumps({"familiarity_threshold": best.threshold}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
