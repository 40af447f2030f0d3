"""ShapesWorld's prompt language: the words, sentence templates, casings and typos that name an object.

Every entry of the vocabulary (a word or a short phrase) has one kind: a colour word (names one world
colour), a shape word (names one world shape) or filler (articles, template words, descriptive adjectives,
scene phrases: words that do not change the object). Which entries and templates are held out of training
is data, not code: the split file names them (``splits.json`` ``wording``, read by
:mod:`att3d.shapes.splits` into a :class:`WordingSplit`).

A typo is one letter dropped, two neighbours swapped or one letter doubled, in a word of at least
:data:`TYPO_MIN_LENGTH` letters. A typo form is known (generated, and tolerated by :func:`parse_names`) only
if it is not itself a word of the language and comes from exactly one word, so tolerating it never guesses.

This module names shapes and colours by their canonical names only; ``world`` imports it (not the reverse).
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from att3d.shapes.world import ShapeObject

COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet", "cherry", "ruby", "vermilion"),
    "orange": ("orange", "tangerine", "pumpkin", "apricot"),
    "yellow": ("yellow", "lemon", "golden", "canary", "mustard"),
    "green": ("green", "emerald", "lime", "jade", "mint"),
    "cyan": ("cyan", "turquoise", "teal", "aqua"),
    "blue": ("blue", "navy", "cobalt", "azure", "sapphire"),
    "purple": ("purple", "violet", "plum", "amethyst"),
    "gray": ("gray", "grey", "silver", "slate", "pewter"),
}
"""Every word for each world colour (canonical name first); each names one colour only."""

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "sphere": ("sphere", "ball", "orb", "globe"),
    "cube": ("cube", "box", "block", "dice", "crate"),
    "cylinder": ("cylinder", "can", "drum", "canister", "tube"),
    "cone": ("cone", "traffic cone", "spire", "party hat"),
    "torus": ("torus", "ring", "donut", "doughnut", "bagel"),
    "capsule": ("capsule", "pill", "medicine capsule", "softgel"),
    "pyramid": ("pyramid", "square pyramid", "square-based pyramid"),
}
"""Every noun (or noun phrase) for each world shape (canonical name first); each names one shape only."""

ADJECTIVES: tuple[str, ...] = (
    "small", "large", "shiny", "matte", "smooth", "simple", "plain", "solid", "glossy", "polished", "tiny"
)  # fmt: skip
"""Descriptive words that leave the object unchanged (slot ``{adj}``)."""

SCENES: tuple[str, ...] = (
    "on a white background",
    "in the studio",
    "isolated on white",
    "with soft lighting",
    "against a plain backdrop",
    "under studio lights",
)
"""Scene phrases that leave the object unchanged (slot ``{scene}``)."""

TEMPLATES: dict[str, str] = {
    "plain": "a {color} {noun}",
    "bare": "{color} {noun}",
    "the": "the {color} {noun}",
    "that-is": "a {noun} that is {color}",
    "in-color": "a {noun} in {color}",
    "colored": "a {color} colored {noun}",
    "coloured": "a {color} coloured {noun}",
    "adjective": "a {adj} {color} {noun}",
    "bare-adjective": "{adj} {color} {noun}",
    "comma": "a {noun}, {color}",
    "model": "a 3D model of a {color} {noun}",
    "render": "a render of a {color} {noun}",
    "scene": "a {color} {noun} {scene}",
    "adjective-scene": "a {adj} {color} {noun} {scene}",
    "one": "one {color} {noun}",
    "painted": "a {noun} painted {color}",
    "shaped": "a {color} object shaped like a {noun}",
    "photo": "a photo of a {color} {noun}",
    "colour-of": "a {noun} of {color} colour",
    "image": "an image of the {adj} {noun} in {color}",
    "there-is": "there is a {color} {noun} {scene}",
}
"""Sentence templates by name (slots ``{color}``, ``{noun}``, optional ``{adj}``, ``{scene}``); ``plain``
with the canonical words is the canonical prompt."""

CANONICAL_TEMPLATE = "plain"
CASINGS = ("lower", "sentence", "title", "upper")
"""Casing variants of a generated prompt (``a red cube``, ``A red cube``, ``A Red Cube``, ``A RED CUBE``)."""
CASING_WEIGHTS = (0.55, 0.25, 0.1, 0.1)
TYPO_RATE = 0.15
"""Share of training wordings that carry one typo."""
TYPO_MIN_LENGTH = 5
MIN_TRAINING_WORDS = 2
"""Training words every colour and shape keeps, whatever a split holds out."""

_VOWEL_ARTICLE = re.compile(r"\ba ([aeiou])")


def with_articles(text: str) -> str:
    """``a orange cube`` -> ``an orange cube`` (every word of the language starts with a vowel sound iff a
    vowel letter)."""
    return _VOWEL_ARTICLE.sub(r"an \1", text)


def tokens(text: str) -> list[str]:
    """Lower-case words of ``text``: hyphens and underscores split words, punctuation is dropped."""
    text = re.sub(r"[-_]", " ", text.lower())
    return re.sub(r"[.,;:!?\"']", " ", text).split()


def _template_words(text: str) -> list[str]:
    return tokens(" ".join(literal for literal, *_ in string.Formatter().parse(text)))


def _build_entries() -> dict[tuple[str, ...], tuple[str, str]]:
    """Token sequence -> (kind, value) for every entry: ``color``/``shape`` with the canonical name, or
    ``filler`` with the entry itself."""
    entries: dict[tuple[str, ...], tuple[str, str]] = {}

    def add(text: str, kind: str, value: str) -> None:
        key = tuple(tokens(text))
        if entries.get(key, (kind, value)) != (kind, value):
            raise AssertionError(f"the language names {text!r} twice: {entries[key]} and {(kind, value)}")
        entries[key] = (kind, value)

    for color, words in COLOR_WORDS.items():
        for word in words:
            add(word, "color", color)
    for shape, words in SHAPE_WORDS.items():
        for word in words:
            add(word, "shape", shape)
    for text in (*ADJECTIVES, *SCENES):
        add(text, "filler", text)
    for text in TEMPLATES.values():
        for word in _template_words(text):
            add(word, "filler", word)
    return entries


ENTRIES = _build_entries()
_LONGEST = max(len(key) for key in ENTRIES)
_WORDS = frozenset(word for key in ENTRIES for word in key)


def _typo_forms(word: str) -> set[str]:
    """Every one-letter drop, neighbour swap and doubling of ``word`` (other than ``word`` itself)."""
    forms = set()
    for i in range(len(word)):
        forms.add(word[:i] + word[i + 1 :])
        forms.add(word[:i] + word[i] + word[i:])
        if i + 1 < len(word):
            forms.add(word[:i] + word[i + 1] + word[i] + word[i + 2 :])
    forms.discard(word)
    return forms


def _build_typos() -> dict[str, str]:
    sources: dict[str, set[str]] = {}
    for word in _WORDS:
        if len(word) >= TYPO_MIN_LENGTH and word.isalpha():
            for form in _typo_forms(word):
                sources.setdefault(form, set()).add(word)
    return {form: words.pop() for form, words in sources.items() if len(words) == 1 and form not in _WORDS}


TYPOS = _build_typos()
"""Known typo form -> the word it misspells."""
_TYPOS_OF: dict[str, list[str]] = {}
for _form, _word in sorted(TYPOS.items()):
    _TYPOS_OF.setdefault(_word, []).append(_form)


def parse_names(text: str) -> tuple[str, str] | None:
    """``(shape, color)`` canonical names of the object ``text`` asks for, or ``None``.

    Entries are matched longest first over the words; a word may be a known typo form. Any word outside
    the language, or two different shapes or colours, or none, gives ``None`` rather than a guess.
    """
    words = [word if word in _WORDS else TYPOS.get(word, word) for word in tokens(text)]
    found: dict[str, set[str]] = {"color": set(), "shape": set(), "filler": set()}
    i = 0
    while i < len(words):
        for length in range(min(_LONGEST, len(words) - i), 0, -1):
            entry = ENTRIES.get(tuple(words[i : i + length]))
            if entry is not None:
                found[entry[0]].add(entry[1])
                i += length
                break
        else:
            return None
    if len(found["shape"]) != 1 or len(found["color"]) != 1:
        return None
    return found["shape"].pop(), found["color"].pop()


def add_typo(text: str, rng: random.Random) -> str:
    """``text`` with one known typo in one of its words of ``TYPO_MIN_LENGTH``+ letters (else unchanged)."""
    spans = [m for m in re.finditer(r"[a-z0-9]+", text) if m.group() in _TYPOS_OF]
    if not spans:
        return text
    match = rng.choice(spans)
    return text[: match.start()] + rng.choice(_TYPOS_OF[match.group()]) + text[match.end() :]


def apply_casing(text: str, casing: str) -> str:
    """``text`` (lower case) in one of :data:`CASINGS`."""
    if casing == "sentence":
        return text[:1].upper() + text[1:]
    if casing == "title":
        return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))
    if casing == "upper":
        return text.upper()
    return text


@dataclass(frozen=True)
class WordingSplit:
    """Which entries and templates only evaluation prompts use (the rest are training wording)."""

    heldout_words: tuple[str, ...]
    """Entries of the language (colour or shape words, adjectives, scene phrases) never trained on."""
    heldout_templates: tuple[str, ...]
    """Names of :data:`TEMPLATES` never trained on."""

    def __post_init__(self) -> None:
        displays = {
            *(w for ws in COLOR_WORDS.values() for w in ws),
            *(w for ws in SHAPE_WORDS.values() for w in ws),
            *ADJECTIVES,
            *SCENES,
        }
        for kind, names, known in (
            ("word", self.heldout_words, displays),
            ("template", self.heldout_templates, set(TEMPLATES)),
        ):
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f"held-out {kind} {unknown[0]!r} is not in the language")
            if len(set(names)) != len(names):
                raise ValueError(f"a held-out {kind} is listed twice")
        canonical = {*COLOR_WORDS, *SHAPE_WORDS} & set(self.heldout_words)
        if canonical or CANONICAL_TEMPLATE in self.heldout_templates:
            name = sorted(canonical)[0] if canonical else CANONICAL_TEMPLATE
            raise ValueError(f"{name!r} is canonical wording and cannot be held out")
        for table in (COLOR_WORDS, SHAPE_WORDS):
            for name, words in table.items():
                if len(self.train_words(words)) < MIN_TRAINING_WORDS:
                    raise ValueError(f"{name!r} keeps fewer than {MIN_TRAINING_WORDS} training words")
        if not self.train_words(ADJECTIVES) or not self.train_words(SCENES):
            raise ValueError("at least one adjective and one scene phrase must stay in training")
        trained = {"an"} | {w for n in self.train_templates for w in _template_words(TEMPLATES[n])}
        trained |= {w for text in self.train_words((*ADJECTIVES, *SCENES)) for w in tokens(text)}
        for name in self.heldout_templates:
            if not set(_template_words(TEMPLATES[name])) - trained:
                raise ValueError(
                    f"held-out template {name!r} has no word of its own (it would be trained on)"
                )

    def train_words(self, words: tuple[str, ...]) -> tuple[str, ...]:
        """``words`` without the held-out ones."""
        return tuple(w for w in words if w not in self.heldout_words)

    @property
    def train_templates(self) -> tuple[str, ...]:
        """Names of the templates used in training prompts."""
        return tuple(n for n in TEMPLATES if n not in self.heldout_templates)


def _render(
    template: str, color: str, noun: str, adjectives: tuple[str, ...], scenes: tuple[str, ...], rng
) -> str:
    text = TEMPLATES[template]
    slots = {"color": color, "noun": noun}
    if "{adj}" in text:
        slots["adj"] = rng.choice(adjectives)
    if "{scene}" in text:
        slots["scene"] = rng.choice(scenes)
    return with_articles(text.format(**slots))


def _distinct(draw, count: int, first: list[str], what: str) -> list[str]:
    result = dict.fromkeys(first)
    for _ in range(100 * count):
        if len(result) >= count:
            break
        result[draw(len(result))] = None
    if len(result) < count:
        raise ValueError(f"only {len(result)} distinct {what} found, {count} asked for")
    return list(result)[:count]


def training_wordings(obj: ShapeObject, count: int, seed: int, split: WordingSplit) -> list[str]:
    """``count`` distinct prompts for ``obj`` from training words and templates only, the canonical prompt
    first; the rest vary template, words, casing and (in :data:`TYPO_RATE` of them) one typo."""
    rng = random.Random(f"{seed}/{obj.shape}/{obj.color}/train")
    colors, nouns = split.train_words(COLOR_WORDS[obj.color]), split.train_words(SHAPE_WORDS[obj.shape])
    adjectives, scenes = split.train_words(ADJECTIVES), split.train_words(SCENES)

    def draw(_: int) -> str:
        template = rng.choice(split.train_templates)
        text = _render(template, rng.choice(colors), rng.choice(nouns), adjectives, scenes, rng)
        if rng.random() < TYPO_RATE:
            text = add_typo(text, rng)
        return apply_casing(text, rng.choices(CASINGS, CASING_WEIGHTS)[0])

    canonical = with_articles(TEMPLATES[CANONICAL_TEMPLATE].format(color=obj.color, noun=obj.shape))
    return _distinct(draw, count, [canonical][:count], f"training wordings of {canonical!r}")


HELDOUT_KINDS = ("color", "noun", "template", "adjective", "scene")
"""What the i-th held-out wording of an object holds out, in turn (kinds with nothing held out skipped)."""


def heldout_wordings(obj: ShapeObject, count: int, seed: int, split: WordingSplit) -> list[str]:
    """``count`` distinct prompts for ``obj``, each with one held-out element (a colour word, a noun, a
    template, an adjective or a scene, taken in turn) and training wording otherwise; casing varies, no
    typos."""
    rng = random.Random(f"{seed}/{obj.shape}/{obj.color}/heldout")
    color_words, nouns = COLOR_WORDS[obj.color], SHAPE_WORDS[obj.shape]
    pools = {
        "color": tuple(w for w in color_words if w in split.heldout_words),
        "noun": tuple(w for w in nouns if w in split.heldout_words),
        "template": split.heldout_templates,
        "adjective": tuple(w for w in ADJECTIVES if w in split.heldout_words),
        "scene": tuple(w for w in SCENES if w in split.heldout_words),
    }
    kinds = [k for k in HELDOUT_KINDS if pools[k]]
    if not kinds:
        raise ValueError("the wording split holds nothing out")
    slot_of = {"adjective": "{adj}", "scene": "{scene}"}

    def draw(index: int) -> str:
        kind = kinds[index % len(kinds)]
        held = {k: pools[k] if k == kind else () for k in pools}
        templates = held["template"] or tuple(
            n for n in split.train_templates if slot_of.get(kind, "") in TEMPLATES[n]
        )
        text = _render(
            rng.choice(templates),
            rng.choice(held["color"] or split.train_words(color_words)),
            rng.choice(held["noun"] or split.train_words(nouns)),
            held["adjective"] or split.train_words(ADJECTIVES),
            held["scene"] or split.train_words(SCENES),
            rng,
        )
        return apply_casing(text, rng.choices(CASINGS, CASING_WEIGHTS)[0])

    return _distinct(draw, count, [], f"held-out wordings of {obj.canonical_prompt!r}")


__all__ = [
    "ADJECTIVES",
    "CASINGS",
    "COLOR_WORDS",
    "ENTRIES",
    "SCENES",
    "SHAPE_WORDS",
    "TEMPLATES",
    "TYPOS",
    "WordingSplit",
    "add_typo",
    "apply_casing",
    "heldout_wordings",
    "parse_names",
    "tokens",
    "training_wordings",
    "with_articles",
]
