"""ShapesWorld's versioned prompt splits: which objects the prior, the generator's training and the
held-out evaluation see, and which wording (words and templates of ``att3d.shapes.language``) only
evaluation uses (``splits.json``, shipped beside this module)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from att3d.shapes.language import WordingSplit
from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, ShapeObject

SPLITS_VERSION = 2
"""Version of the split-file format (and of the split itself) this code reads."""


@dataclass(frozen=True)
class Splits:
    """Which objects each stage sees (loaded from the versioned ``splits.json`` shipped here)."""

    version: int
    """Split-file version."""
    prior: tuple[ShapeObject, ...]
    """Every object the diffusion prior is trained on (the whole shape × colour grid)."""
    train: tuple[ShapeObject, ...]
    """Objects the amortized generator trains on."""
    heldout: tuple[ShapeObject, ...]
    """Objects never shown to the generator, scored separately (unseen prompts)."""
    wording: WordingSplit
    """Words and templates of the prompt language kept out of training prompts (v2)."""


def load_splits(path: str | Path | None = None) -> Splits:
    """Read and validate a split file; the default is the one bundled with the package.

    Raises ``ValueError`` naming the problem if the version is unsupported, the file's shape or
    colour lists differ from the world's, an entry is unknown or repeated, train and held-out
    overlap, they are not both inside the prior's set, or the wording split names something outside the
    language or leaves a colour or shape too few training words.
    """
    if path is None:
        source = resources.files("att3d.shapes").joinpath("splits.json")
        where, text = "att3d/shapes/splits.json", source.read_text()
    else:
        where, text = str(path), Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: invalid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the top level must be an object")
    if data.get("version") != SPLITS_VERSION:
        found = data.get("version")
        raise ValueError(f"{where}: unsupported split version {found!r}, expected {SPLITS_VERSION}")
    for key, expected in (("shapes", SHAPE_NAMES), ("colors", COLOR_NAMES)):
        if tuple(data.get(key, ())) != expected:
            raise ValueError(f"{where}: '{key}' is {data.get(key)!r} but the world has {list(expected)}")
    groups = {key: _read_objects(data, key, where) for key in ("prior", "train", "heldout")}
    overlap = set(groups["train"]) & set(groups["heldout"])
    if overlap:
        names = ", ".join(sorted(o.canonical_prompt for o in overlap))
        raise ValueError(f"{where}: train and heldout overlap: {names}")
    outside = (set(groups["train"]) | set(groups["heldout"])) - set(groups["prior"])
    if outside:
        names = ", ".join(sorted(o.canonical_prompt for o in outside))
        raise ValueError(f"{where}: objects missing from 'prior': {names}")
    return Splits(version=data["version"], wording=_read_wording(data, where), **groups)


def _read_wording(data: dict[str, Any], where: str) -> WordingSplit:
    wording = data.get("wording")
    keys = ("heldout_words", "heldout_templates")
    if not isinstance(wording, dict) or set(wording) != set(keys):
        raise ValueError(f"{where}: 'wording' must be an object with exactly the keys {', '.join(keys)}")
    for key in keys:
        if not isinstance(wording[key], list) or not all(isinstance(x, str) for x in wording[key]):
            raise ValueError(f"{where}: wording.{key} must be a list of strings")
    try:
        return WordingSplit(tuple(wording["heldout_words"]), tuple(wording["heldout_templates"]))
    except ValueError as err:
        raise ValueError(f"{where}: wording: {err}") from None


def _read_objects(data: dict[str, Any], key: str, where: str) -> tuple[ShapeObject, ...]:
    entries = data.get(key)
    if not isinstance(entries, list):
        raise ValueError(f"{where}: '{key}' must be a list of [shape, color] pairs")
    objects = []
    for i, entry in enumerate(entries):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise ValueError(f"{where}: {key}[{i}] must be a [shape, color] pair, got {entry!r}")
        try:
            objects.append(ShapeObject(entry[0], entry[1]))
        except ValueError as err:
            raise ValueError(f"{where}: {key}[{i}]: {err}") from None
    if len(set(objects)) != len(objects):
        raise ValueError(f"{where}: '{key}' lists an object twice")
    return tuple(objects)


__all__ = ["SPLITS_VERSION", "Splits", "load_splits"]
