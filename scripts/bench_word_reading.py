"""How often does the generator READ an unfamiliar word as the right shape? Leave-one-out, no meshing.

The held-out wording split has ten held-out nouns, too few to tell a reading rule from luck, and tuning a
rule on them would spend the test. This benchmark asks the same question of the TRAINING words: each
training entry of the prompt language in turn (a shape noun such as "ring", an adjective, a scene phrase,
a template word) is hidden, the model's training prompts that use it are dropped, and a reader
(``att3d.color_terms`` then ``att3d.unknown_words``) is built from the rest, with the bundled model's
encoder and those prompts' embeddings as its familiarity index. Up to ``--per-entry`` of the dropped
prompts are read; a reading is right when the only shape it names with words the reader knows is the
prompt's shape (a hidden noun kept as written names nothing the model knows: wrong).

Colour names are read from the colour lexicon, so their benchmark is the lexicon itself: every name of two
or more words whose last word is a world colour ("sky blue", "dark olive green", "blue grey") and that the
model was not trained on is read as the nearest trained colour name, right when that name is of the world
colour its last word says.

It also reads the held-out wording split and an everyday-words case file with the full model, the same
way (no generation: ``att3d eval`` measures what the generator then makes of the reading).

    python scripts/bench_word_reading.py [--per-entry 8] [--cases docs/eval_cases_everyday_words.jsonl]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path

import torch

from att3d.color_terms import ColorTermReader
from att3d.familiarity import FamiliarityIndex
from att3d.generate import Generator
from att3d.noun_glosses import NounGlosses
from att3d.shapes.eval_cases import read_cases, split_cases
from att3d.shapes.language import (
    ADJECTIVES,
    COLOR_WORDS,
    SCENES,
    SHAPE_WORDS,
    TEMPLATES,
    TYPOS,
    _template_words,
    parse_names,
    tokens,
)
from att3d.shapes.splits import load_splits
from att3d.unknown_words import UnknownWordReader

_SHAPE_ENTRIES = {tuple(tokens(w)): shape for shape, words in SHAPE_WORDS.items() for w in words}
_LONGEST = max(map(len, _SHAPE_ENTRIES))


def shape_read(text: str, known: frozenset[str]) -> str | None:
    """The one world shape ``text`` names with words in ``known`` (typos resolved), else ``None``."""
    words = [w if w in known else "\0" for w in (TYPOS.get(w, w) for w in tokens(text))]
    found, i = set(), 0
    while i < len(words):
        for length in range(min(_LONGEST, len(words) - i), 0, -1):
            shape = _SHAPE_ENTRIES.get(tuple(words[i : i + length]))
            if shape is not None:
                found.add(shape)
                i += length
                break
        else:
            i += 1
    return found.pop() if len(found) == 1 else None


def _uses(prompt: str, entry: tuple[str, ...]) -> bool:
    words = [TYPOS.get(w, w) for w in tokens(prompt)]
    return any(tuple(words[i : i + len(entry)]) == entry for i in range(len(words) - len(entry) + 1))


def _entries() -> list[tuple[str, str]]:
    """(kind, text) of every training entry but the colour words (read from the colour lexicon)."""
    wording = load_splits().wording
    held = set(wording.heldout_words)
    entries = [("noun", w) for words in SHAPE_WORDS.values() for w in words[1:] if w not in held]
    entries += [("adjective", w) for w in ADJECTIVES if w not in held]
    entries += [("scene", w) for w in SCENES if w not in held]
    templates = [text for name, text in TEMPLATES.items() if name not in wording.heldout_templates]
    template_words = {w for text in templates for w in _template_words(text)}
    entries += [("template", w) for w in sorted(template_words - {"a", "an"})]
    return entries


def leave_one_out(generator: Generator, per_entry: int, seed: int = 0) -> tuple[Counter, list[str]]:
    prompts = generator.prompts
    index = generator.familiarity_index()
    assert index is not None
    colors = ColorTermReader(prompts)
    color_words = frozenset(w for name in colors.named for w in name.split())
    counts: Counter = Counter()
    wrong: list[str] = []
    rng = random.Random(seed)
    for kind, entry in _entries():
        hidden = [_uses(p, tuple(tokens(entry))) for p in prompts]
        kept = [i for i, h in enumerate(hidden) if not h]
        train = [prompts[i] for i in kept]
        subset = FamiliarityIndex(train, index.matrix[kept])
        reader = UnknownWordReader(train, generator.encoder, subset, color_words, NounGlosses.bundled())
        tests = [p for p, h in zip(prompts, hidden, strict=True) if h]
        for prompt in rng.sample(tests, min(per_entry, len(tests))):
            read = reader.read(colors.read(prompt))
            names = parse_names(prompt)
            right = names is not None and shape_read(read, reader.training_words) == names[0]
            counts[kind, right] += 1
            if not right:
                wrong.append(f"{kind:9s} {entry!r:14s} {prompt!r} -> {read!r}")
    return counts, wrong


def color_heads(generator: Generator) -> tuple[int, list[str]]:
    """(right, wrong readings) of the lexicon's names that end in a world colour (see the module)."""
    reader = ColorTermReader(generator.prompts)
    world = {w: color for color, words in COLOR_WORDS.items() for w in words}
    heads = {color: color for color in COLOR_WORDS} | {"grey": "gray"}
    right, wrong = 0, []
    for name in reader.lexicon.names:
        words = name.split()
        if len(words) < 2 or words[-1] not in heads or name in reader.named:
            continue
        read = reader.nearest_known(name)
        if world.get(read) == heads[words[-1]]:
            right += 1
        else:
            wrong.append(f"colour name {name!r} -> {read!r} (a {heads[words[-1]]})")
    return right, wrong


def read_cases_right(generator: Generator, cases: list) -> tuple[int, list[str]]:
    known = frozenset(w.lower() for p in generator.prompts for w in tokens(p))
    right, wrong = 0, []
    for case in cases:
        read = generator.read(case.prompt)
        if shape_read(read, known) == case.obj.shape:
            right += 1
        else:
            wrong.append(f"{case.prompt!r} -> {read!r} (a {case.obj.shape})")
    return right, wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-entry", type=int, default=8)
    parser.add_argument("--cases", type=Path, default=Path("docs/eval_cases_everyday_words.jsonl"))
    parser.add_argument("--show-wrong", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    generator = Generator.default()
    counts, wrong = leave_one_out(generator, args.per_entry)
    figures: dict[str, object] = {}
    for kind in ("noun", "adjective", "scene", "template"):
        right, total = counts[kind, True], counts[kind, True] + counts[kind, False]
        figures[f"leave_one_out_{kind}"] = [right, total]
        print(f"leave-one-out {kind:9s} read right {right:3d}/{total:3d} ({right / max(total, 1):.0%})")
    right, misses = color_heads(generator)
    figures["colour_names_by_last_word"] = [right, right + len(misses)]
    wrong += misses
    print(f"colour names by last word read right {right:3d}/{right + len(misses):3d}")
    sets = {"wording": split_cases("wording"), "heldout-wording": split_cases("heldout-wording")}
    if args.cases.is_file():
        sets[args.cases.stem] = read_cases(args.cases)
    for name, cases in sets.items():
        right, misses = read_cases_right(generator, cases)
        figures[name] = [right, len(cases)]
        wrong += [f"{name}: {m}" for m in misses]
        print(f"{name:28s} read right {right:3d}/{len(cases):3d} ({right / len(cases):.0%})")
    if args.show_wrong:
        print("\n".join(wrong))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
