"""Prompt sets: which prompts an amortized generator trains on, and which it is scored on unseen.

Four sources, chosen by ``PromptSetConfig.source``:

- ``list``:     the inline ``prompts`` list;
- ``file``:     a UTF-8 text file with one prompt per line; blank lines and lines whose first non-blank
                character is ``#`` are skipped (a relative path is taken from the working directory);
- ``template``: every combination of the ``slots`` values in ``template`` (``"a {color} {shape}"`` with
                ``slots: {color: [red, blue], shape: [cube, cone]}``), slots varying in the order they
                appear, the last fastest;
- ``shapes``:   the ShapesWorld splits bundled with the package (``split``: ``train``, ``heldout``, ``all``);
                with ``wordings`` > 0 each trained object gets that many wordings of the prompt language
                (training words and templates only) and the prior is conditioned on its canonical prompt.

Every prompt goes through :func:`att3d.limits.validate_prompt`. An empty set, a missing file, a repeated
prompt or a held-out prompt that is also trained on raise :class:`PromptSetError` naming the problem.
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass
from pathlib import Path

from att3d.config import ConfigError, PromptSetConfig
from att3d.limits import PromptError, validate_prompt


class PromptSetError(ConfigError):
    """A prompt set cannot be built; the message names the source and the offending prompt or key."""


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one training run."""

    train: tuple[str, ...]
    """Prompts the generator is trained on (never empty, no duplicates)."""
    heldout: tuple[str, ...] = ()
    """Prompts kept out of training and scored separately (disjoint from ``train``)."""
    prior_prompts: tuple[str, ...] | None = None
    """What the prior is conditioned on for each training prompt (aligned with ``train``); ``None`` means
    the training prompts themselves. A small prior knows fewer wordings than the generator is asked to
    learn: ShapesWorld's wording set conditions the prior on a phrasing it was trained on (the same
    object), while the generator sees the free wording."""

    def __post_init__(self) -> None:
        if self.prior_prompts is not None and len(self.prior_prompts) != len(self.train):
            raise PromptSetError(
                f"prior_prompts has {len(self.prior_prompts)} entries for {len(self.train)} training prompts"
            )

    def __len__(self) -> int:
        return len(self.train)

    @property
    def prior_text(self) -> tuple[str, ...]:
        """The prior's prompt for each training prompt."""
        return self.train if self.prior_prompts is None else self.prior_prompts


def load_prompt_set(
    config: PromptSetConfig, max_chars: int | None = None, max_prompts: int | None = None
) -> PromptSet:
    """Build the prompt set described by ``config``; a template is refused before it is expanded when it
    describes more than ``max_prompts`` combinations (a few KiB of slots can describe 10^12)."""
    limit = {} if max_chars is None else {"max_chars": max_chars}
    prior: list[str] | None = None
    if config.source == "list":
        train = _validated(config.prompts, "prompts.prompts", limit)
        heldout = _validated(config.heldout, "prompts.heldout", limit)
    elif config.source == "file":
        train = _read_prompt_file(config.path, limit)
        heldout = _validated(config.heldout, "prompts.heldout", limit)
    elif config.source == "template":
        expanded = expand_template(config.template, config.slots, limit, max_prompts)
        heldout = _validated(config.heldout, "prompts.heldout", limit)
        unknown = [p for p in heldout if p not in expanded]
        if unknown:
            raise PromptSetError(
                f"prompts.heldout: {unknown[0]!r} is not one of the template's combinations"
                f" ({len(expanded)} prompts from {config.template!r})"
            )
        held = set(heldout)
        train = [p for p in expanded if p not in held]
    else:  # "shapes" (PromptSetConfig admits only the four sources)
        train, heldout, prior = _shapes_prompts(config)

    if not train:
        raise PromptSetError(f"prompt set is empty (prompts.source={config.source})")
    overlap = sorted(set(train) & set(heldout))
    if overlap:
        raise PromptSetError(f"prompt {overlap[0]!r} is both a training and a held-out prompt")
    return PromptSet(
        train=tuple(train), heldout=tuple(heldout), prior_prompts=None if prior is None else tuple(prior)
    )


def expand_template(
    template: str,
    slots: dict[str, list[str]],
    limit: dict[str, int] | None = None,
    max_prompts: int | None = None,
) -> list[str]:
    """Every combination of slot values filled into ``template`` (validated, duplicates rejected); more than
    ``max_prompts`` combinations are refused by their count, before any is built."""
    if not isinstance(template, str) or not template.strip():
        raise PromptSetError("prompts.template is empty (source=template needs e.g. 'a {color} {shape}')")
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise PromptSetError(f"prompts.template {template!r} is not a valid template: {err}") from None
    if not names:
        raise PromptSetError(f"prompts.template {template!r} has no {{slot}} fields")
    bad = [n for n in names if not n.isidentifier()]
    if bad:
        raise PromptSetError(f"prompts.template: slot {{{bad[0]}}} must be a plain name")
    if not isinstance(slots, dict):
        raise PromptSetError(f"prompts.slots must map slot names to lists, got {type(slots).__name__}")
    order = list(dict.fromkeys(names))
    missing = [n for n in order if n not in slots]
    if missing:
        raise PromptSetError(f"prompts.slots has no values for template slot '{missing[0]}'")
    unused = [n for n in slots if n not in order]
    if unused:
        raise PromptSetError(f"prompts.slots.{unused[0]} is not used by the template {template!r}")
    values = []
    for name in order:
        options = slots[name]
        if isinstance(options, str) or not isinstance(options, list) or not options:
            raise PromptSetError(f"prompts.slots.{name} must be a non-empty list of strings")
        for i, option in enumerate(options):
            if not isinstance(option, str) or not option.strip():
                raise PromptSetError(f"prompts.slots.{name}[{i}] must be a non-empty string, got {option!r}")
        if len(set(options)) != len(options):
            repeated = next(o for o in options if options.count(o) > 1)
            raise PromptSetError(f"prompts.slots.{name}: value {repeated!r} is repeated")
        values.append([o.strip() for o in options])
    count = math.prod(len(v) for v in values)
    if max_prompts is not None and count > max_prompts:
        raise PromptSetError(f"prompts.template: {count} combinations; the limit is {max_prompts}")
    prompts = [
        template.format(**dict(zip(order, combo, strict=True))) for combo in itertools.product(*values)
    ]
    return _validated(prompts, "prompts.template", limit or {})


def _validated(prompts: object, where: str, limit: dict[str, int]) -> list[str]:
    """Validate each prompt and reject repeats, naming the list and the position."""
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise PromptSetError(f"{where} must be a list of prompts, got {type(prompts).__name__}")
    result: list[str] = []
    first_seen: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        try:
            text = validate_prompt(prompt, **limit)
        except PromptError as err:
            raise PromptSetError(f"{where}[{i}]: {err}") from None
        if text in first_seen:
            raise PromptSetError(f"{where}[{i}]: duplicate prompt {text!r} (first at [{first_seen[text]}])")
        first_seen[text] = i
        result.append(text)
    return result


def _read_prompt_file(path: str, limit: dict[str, int]) -> list[str]:
    if not path:
        raise PromptSetError("prompts.path is empty (source=file needs a prompt file)")
    file = Path(path)
    if not file.is_file():
        raise PromptSetError(f"prompt file not found: {file}")
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise PromptSetError(f"prompt file {file}: cannot read it ({err})") from None
    result: list[str] = []
    line_of: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            text = validate_prompt(line, **limit)
        except PromptError as err:
            raise PromptSetError(f"{file}:{number}: {err}") from None
        if text in line_of:
            raise PromptSetError(
                f"{file}:{number}: duplicate prompt {text!r} (first on line {line_of[text]})"
            )
        line_of[text] = number
        result.append(text)
    if not result:
        raise PromptSetError(f"prompt set is empty: {file} has no prompts (only blank or # comment lines)")
    return result


def _shapes_prompts(config: PromptSetConfig) -> tuple[list[str], list[str], list[str] | None]:
    """ShapesWorld prompts for the configured split, and the prior's prompt for each training prompt when
    it is not the prompt itself (imported here: only this source needs the world)."""
    from att3d.shapes.language import training_wordings
    from att3d.shapes.splits import load_splits

    if config.heldout:
        raise PromptSetError(
            "prompts.heldout is not used with source=shapes: the split decides what is held out"
        )
    splits = load_splits()
    groups = {
        "train": (splits.train, splits.heldout),
        "heldout": (splits.heldout, ()),
        "all": (splits.prior, ()),
    }
    train_objects, heldout_objects = groups[config.split]

    def phrasings(objects: tuple) -> list[str]:
        if config.all_phrasings:
            return [p for obj in objects for p in obj.prompts]
        return [obj.canonical_prompt for obj in objects]

    heldout = _validated(phrasings(heldout_objects), "shapes split", {})
    if not config.wordings:
        return _validated(phrasings(train_objects), "shapes split", {}), heldout, None
    # Seed 0: the set is a function of (split file, wordings), so a resumed run finds the same prompts.
    # Wordings of different objects never coincide (each parses to its own object).
    worded = [
        (text, obj.canonical_prompt)
        for obj in train_objects
        for text in training_wordings(obj, config.wordings, 0, splits.wording)
    ]
    train = _validated([text for text, _ in worded], "prompts.wordings", {})
    return train, heldout, [canonical for _, canonical in worded]


__all__ = ["PromptSet", "PromptSetError", "expand_template", "load_prompt_set"]
