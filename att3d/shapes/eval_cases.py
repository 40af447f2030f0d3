"""Evaluation cases: prompts paired with the ShapesWorld object each should produce.

Cases come from a split of the bundled prompt splits (:func:`split_cases`: an object split, or a wording
split whose prompts use words and templates never trained on) or from a case file
(:func:`read_cases`): JSON Lines, one ``{"prompt": ..., "shape": ..., "color": ...}`` object per line
(blank lines are skipped). A bad line is reported as ``FILE:LINE: what`` and nothing is scored. Any
phrasing can be scored against a named ground truth (``att3d.shapes.evaluate``).
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from att3d.config import ShapesSplit

if TYPE_CHECKING:
    from att3d.shapes.splits import Splits
    from att3d.shapes.world import ShapeObject

WORDING_SPLITS = ("wording", "heldout-wording")
"""Wording splits: train (``wording``) or held-out (``heldout-wording``) objects, worded with held-out
words or templates."""
SPLIT_CHOICES = (*typing.get_args(ShapesSplit), *WORDING_SPLITS)
"""Values of ``--split``: the object splits a generator trains on, then the wording splits."""
WORDING_CASES_PER_OBJECT = 3
"""Held-out wordings per object in a wording split (one held-out colour word, noun, template in turn)."""
WORDING_SEED = 0
CASE_KEYS = ("prompt", "shape", "color")
"""Keys of a case-file line (all required, no others)."""


@dataclass(frozen=True)
class EvalCase:
    """A prompt and the object it should produce."""

    prompt: str
    """The text given to the generator."""
    obj: ShapeObject
    """The ground truth it is scored against."""
    split: str
    """``train`` or ``heldout`` by the bundled split file (``other`` if the object is in neither), or the
    wording split's name for its cases."""


class CaseFileError(ValueError):
    """A case file cannot be read; the message is ``FILE:LINE: what`` (or ``FILE: what``)."""


def split_of(obj: ShapeObject, splits: Splits) -> str:
    """``train``, ``heldout`` or ``other``: where ``obj`` sits in ``splits``."""
    if obj in splits.train:
        return "train"
    if obj in splits.heldout:
        return "heldout"
    return "other"


def split_cases(split: str, all_phrasings: bool = False, splits: Splits | None = None) -> list[EvalCase]:
    """Cases for the objects of a split (``train``, ``heldout`` or ``all`` = both), train first.

    Each object contributes its canonical prompt, or with ``all_phrasings`` every phrasing it has. The
    wording splits give each train (``wording``) or held-out (``heldout-wording``) object
    ``WORDING_CASES_PER_OBJECT`` deterministic held-out wordings, labelled with the split's name.
    """
    from att3d.shapes.language import heldout_wordings
    from att3d.shapes.splits import load_splits

    if split not in SPLIT_CHOICES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_CHOICES)}, got {split!r}")
    if split in WORDING_SPLITS and all_phrasings:
        raise ValueError(f"all_phrasings applies to the object splits, not to {split!r}")
    splits = splits or load_splits()
    groups = {"train": splits.train, "heldout": splits.heldout}
    if split in WORDING_SPLITS:
        objects = splits.train if split == "wording" else splits.heldout
        return [
            EvalCase(prompt, obj, split)
            for obj in objects
            for prompt in heldout_wordings(obj, WORDING_CASES_PER_OBJECT, WORDING_SEED, splits.wording)
        ]
    names = ("train", "heldout") if split == "all" else (split,)
    return [
        EvalCase(prompt, obj, name)
        for name in names
        for obj in groups[name]
        for prompt in (obj.prompts if all_phrasings else [obj.canonical_prompt])
    ]


def read_cases(path: str | Path, splits: Splits | None = None) -> list[EvalCase]:
    """Read a JSON Lines case file; raises :class:`CaseFileError` at the first bad line.

    Every line must be an object with exactly the keys ``prompt``, ``shape``, ``color``: a non-empty
    prompt and a shape and colour named as in the world (``SHAPE_NAMES``, ``COLOR_NAMES``).
    """
    from att3d.limits import PromptError, validate_prompt
    from att3d.shapes.splits import load_splits
    from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, ShapeObject

    path = Path(path)
    if not path.exists():
        raise CaseFileError(f"{path}: case file not found")
    if not path.is_file():
        raise CaseFileError(f"{path}: not a file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise CaseFileError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    splits = splits or load_splits()
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise CaseFileError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(entry, dict):
            raise CaseFileError(f"{where}: expected a JSON object, got {_json_type(entry)}")
        missing = [key for key in CASE_KEYS if key not in entry]
        if missing:
            raise CaseFileError(f"{where}: missing key(s) {', '.join(missing)} (need {', '.join(CASE_KEYS)})")
        unknown = sorted(set(entry) - set(CASE_KEYS))
        if unknown:
            raise CaseFileError(
                f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(CASE_KEYS)})"
            )
        for key in CASE_KEYS:
            if not isinstance(entry[key], str):
                raise CaseFileError(f"{where}: {key!r} must be a string, got {_json_type(entry[key])}")
        try:
            prompt = validate_prompt(entry["prompt"])
        except PromptError as err:
            raise CaseFileError(f"{where}: {err}") from None
        if entry["shape"] not in SHAPE_NAMES:
            raise CaseFileError(
                f"{where}: unknown shape {entry['shape']!r} (known: {', '.join(SHAPE_NAMES)})"
            )
        if entry["color"] not in COLOR_NAMES:
            raise CaseFileError(
                f"{where}: unknown color {entry['color']!r} (known: {', '.join(COLOR_NAMES)})"
            )
        obj = ShapeObject(entry["shape"], entry["color"])
        cases.append(EvalCase(prompt, obj, split_of(obj, splits)))
    if not cases:
        raise CaseFileError(f"{path}: no cases (the file is empty)")
    return cases


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


__all__ = [
    "CASE_KEYS",
    "SPLIT_CHOICES",
    "WORDING_SPLITS",
    "CaseFileError",
    "EvalCase",
    "read_cases",
    "split_cases",
    "split_of",
]
