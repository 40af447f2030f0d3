"""Colour names a model was not trained on, read as the nearest colour name it was trained on.

The generator learns what its training prompts' words mean; for any other word it has only the text
embedding, and all-MiniLM-L6-v2 barely knows what colour names look like: given the ShapesWorld training
colour words, its nearest neighbour of "canary" is "pumpkin", of "ruby" "emerald", of "azure" "emerald"
(3 of 12 held-out colour words right; ``scripts/probe_text_separability.py``). A colour lexicon does know:
``assets/color_names.json`` gives the sRGB value of 1,035 English colour names (the xkcd colour survey, then
CSS; ``scripts/build_color_names.py``).

:class:`ColorTermReader` turns that knowledge into the model's vocabulary. Built from a model's training
prompts, it knows which colour names the model has seen (``known``). In a new prompt it finds colour names
(the longest lexicon name at each word, and a one-edit typo of a lexicon name of at least
:data:`TYPO_MIN_LENGTH` letters that is no training word). The first one is the prompt's colour (later
ones often name things: "a blue brick", "an ice cream cone"); if the model has not seen it, it becomes
the seen one nearest in colour: CIEDE2000 with lightness weight ``kL = 2``, the metric that named the
colour of the most training colour words from the others (leave-one-out on the training words only,
24 of 25; plain CIELAB distance 19 of 25), among the seen names on the same side of the grey line
(:data:`CHROMA_MIN`): a hue is never read as a grey nor a grey as a hue. Without that line the palest tints
and the darkest shades are nearest to the model's greys and darkest hue ("sky blue", "baby blue" -> silver,
"black" -> navy). The text embedding of the rewritten prompt conditions the model.

The seen names are those the training prompts gave objects, by the same first-name rule: a white
background does not teach white objects ("a white cube" read as written came out yellow, the colour of the
nearest training prompt "a yellow cube on a white background"). It changes only that colour name and the
article before it; a model whose prompts hold no colour name reads
every prompt as written. What the model was trained on decides everything: no world vocabulary is listed
here.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

COLOR_NAMES_FILE = Path(__file__).parent / "assets" / "color_names.json"
TYPO_MIN_LENGTH = 6
"""Shortest word read as a typo of a colour name (shorter words are too often other words: block/black)."""
LIGHTNESS_WEIGHT = 2.0
"""``kL`` of CIEDE2000 (the textile setting: a lightness difference counts half as much as hue)."""
CHROMA_MIN = 16.0
"""CIELAB chroma ``C*`` from which a colour is a hue rather than a grey: the value that best separates the
bundled lexicon's grey names (last word grey, gray, silver, white, black) from its hue names (last word a
hue: blue, pink, brown, ...), 12 of 599 on the wrong side (``tests/test_color_terms.py`` recomputes it)."""

_WORD = re.compile(r"[A-Za-z]+")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class ColorTerm:
    """One colour name found in a prompt."""

    start: int
    """Character offset of its first letter in the prompt."""
    end: int
    """Offset just past its last letter."""
    name: str
    """The lexicon name it was read as (lower case; a typo is read as the name it misspells)."""


class ColorLexicon:
    """Colour names and their CIELAB values."""

    def __init__(self, names: dict[str, str]) -> None:
        """``names``: name -> ``#rrggbb`` (names are matched in lower case, hyphens as spaces)."""
        from skimage.color import rgb2lab  # scikit-image: imported where used (it is slow to import)

        self.names = sorted(_key(name) for name in names)
        names = {_key(name): value for name, value in names.items()}
        rgb = np.array([[int(names[n][i : i + 2], 16) for i in (1, 3, 5)] for n in self.names]) / 255.0
        self.lab = dict(zip(self.names, rgb2lab(rgb[None])[0], strict=True))
        self.max_words = max(len(_WORD.findall(name)) for name in self.names)
        self._single = frozenset(n for n in self.names if _WORD.fullmatch(n))

    @classmethod
    @cache
    def bundled(cls) -> ColorLexicon:
        """The lexicon shipped in ``assets/color_names.json`` (loaded once per process)."""
        return cls(json.loads(COLOR_NAMES_FILE.read_text())["names"])

    def chroma(self, name: str) -> float:
        """CIELAB chroma ``C*`` of lexicon name ``name`` (0 for a grey, ~100 for the most vivid hues)."""
        return float(np.hypot(self.lab[name][1], self.lab[name][2]))

    def distance(self, a: str, b: str) -> float:
        """CIEDE2000 colour difference of two lexicon names (``kL`` = :data:`LIGHTNESS_WEIGHT`)."""
        from skimage.color import deltaE_ciede2000

        return float(deltaE_ciede2000(self.lab[a], self.lab[b], kL=LIGHTNESS_WEIGHT))

    def find(self, prompt: str, plain_words: frozenset[str] = frozenset()) -> list[ColorTerm]:
        """The colour names in ``prompt``, left to right.

        At each word the longest run of words that is a lexicon name wins ("sky blue" over "sky"; words
        may be joined by spaces or hyphens). A single word of :data:`TYPO_MIN_LENGTH` letters or more that
        is not in ``plain_words`` and is one edit (a letter dropped, added, changed, or two neighbours
        swapped) from exactly one single-word name is read as that name.
        """
        words = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(prompt)]
        terms: list[ColorTerm] = []
        i = 0
        while i < len(words):
            found = None
            for n in range(min(self.max_words, len(words) - i), 0, -1):
                span = words[i : i + n]
                gaps = [prompt[a[1] : b[0]] for a, b in itertools.pairwise(span)]
                if any(gap not in (" ", "-") for gap in gaps):
                    continue
                name = " ".join(w[2] for w in span)
                if name in self.lab:
                    found = ColorTerm(span[0][0], span[-1][1], name)
                    break
            if found is None:
                start, end, word = words[i]
                if len(word) >= TYPO_MIN_LENGTH and word not in plain_words:
                    misspelt = _one_edit(word) & self._single
                    if len(misspelt) == 1:
                        found = ColorTerm(start, end, next(iter(misspelt)))
                n = 1
            if found is not None:
                terms.append(found)
            i += n
        return terms


def _key(name: str) -> str:
    return " ".join(_WORD.findall(name.lower()))


def _one_edit(word: str) -> set[str]:
    """Every string one edit from ``word`` (drop, add, change a letter; swap two neighbours)."""
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    edits = {a + b[1:] for a, b in splits if b}
    edits |= {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
    edits |= {a + c + b[1:] for a, b in splits if b for c in _LETTERS}
    edits |= {a + c + b for a, b in splits for c in _LETTERS}
    edits.discard(word)
    return edits


class ColorTermReader:
    """Rewrites a prompt's unseen colour names into the nearest colour names a model was trained on."""

    def __init__(self, training_prompts: list[str], lexicon: ColorLexicon | None = None) -> None:
        self.lexicon = lexicon or ColorLexicon.bundled()
        self.training_words = frozenset(w.lower() for p in training_prompts for w in _WORD.findall(p))
        found = [self.lexicon.find(p) for p in training_prompts]  # typos too: "a crimmson box on white"
        written = {
            _key(p[t.start : t.end]) for p, terms in zip(training_prompts, found, strict=True) for t in terms
        }
        # A trained misspelling is read as its name (so "white" is not the colour of "a crimmson box on
        # white"); other training words are never read as misspelt colour names.
        self._plain_words = self.training_words - written
        self.named = tuple(sorted({t.name for terms in found for t in terms}))
        """Every colour name in the training prompts, the object's or not ("white" of "on white")."""
        first = Counter(terms[0].name for terms in found if terms)
        anywhere = Counter(name for terms in found for name in {t.name for t in terms})
        self.known = tuple(sorted(name for name in first if 2 * first[name] > anywhere[name]))
        """The colour names the training prompts gave objects: the first colour name (as in :meth:`read`) of
        most prompts that use it. A model trained on "a red cube on a white background" has not learnt white
        objects, even if a misspelling it cannot read ("a purplee ring on white") puts white first once."""
        # Where the training prompts use the other names: the words after them ("white" -> "background"),
        # and the words before them at a prompt's end ("isolated on white").
        self._scene_after: dict[str, set[str]] = {}
        self._scene_before_end: dict[str, set[str]] = {}
        for prompt, terms in zip(training_prompts, found, strict=True):
            for term in terms:
                if term.name not in self.known:
                    before, after = _context(prompt, term)
                    if after is not None:
                        self._scene_after.setdefault(term.name, set()).add(after)
                    elif before is not None:
                        self._scene_before_end.setdefault(term.name, set()).add(before)
        self._nearest: dict[str, str] = {}

    def _names_a_scene(self, prompt: str, term: ColorTerm) -> bool:
        """Whether ``term`` (a name the model did not learn as an object's colour) is where the training
        prompts put it: "a cube on a white background" keeps its white, "a white cube" does not."""
        before, after = _context(prompt, term)
        if after is not None:
            return after in self._scene_after.get(term.name, ())
        return before in self._scene_before_end.get(term.name, ())

    def nearest_known(self, name: str) -> str:
        """The known colour name nearest in colour to lexicon name ``name`` (itself if known), among the
        known names on its side of :data:`CHROMA_MIN` if there are any."""
        if name not in self._nearest:
            hue = self.lexicon.chroma(name) >= CHROMA_MIN
            alike = [k for k in self.known if (self.lexicon.chroma(k) >= CHROMA_MIN) == hue]
            self._nearest[name] = min(alike or self.known, key=lambda k: (self.lexicon.distance(name, k), k))
        return self._nearest[name]

    def read(self, prompt: str) -> str:
        """``prompt`` with its colour replaced by the nearest colour name the model has seen, if unseen.

        The prompt's colour is its first colour name ("a red cube on a white background"); later ones are
        left as written (in "a blue brick" or "an ice cream cone" the lexicon's "brick" and "ice" name
        things), and so is a name the model saw only in scene phrases where it stands in one ("a cube on a
        white background"). Unchanged when the model saw no colour name; the article before a replaced
        name follows its new first letter ("an azure ball" -> "a cobalt ball").
        """
        if not self.known:
            return prompt
        terms = self.lexicon.find(prompt, self._plain_words)
        terms = [t for t in terms if t.name in self.known or not self._names_a_scene(prompt, t)]
        if not terms:
            return prompt
        term = terms[0]
        written = prompt[term.start : term.end]
        if term.name in self.known and (_key(written) == term.name or _key(written) in self.training_words):
            return prompt  # a trained name, or a trained misspelling of one
        replacement = match_case(self.nearest_known(term.name), written)
        return fix_article(prompt[: term.start], replacement) + replacement + prompt[term.end :]


def _context(prompt: str, term: ColorTerm) -> tuple[str | None, str | None]:
    """The words just before and after ``term`` in ``prompt`` (lower case; ``None`` at either end)."""
    before = _WORD.findall(prompt[: term.start])
    after = _WORD.findall(prompt[term.end :])
    return (before[-1].lower() if before else None), (after[0].lower() if after else None)


def match_case(name: str, written: str) -> str:
    """``name`` in the casing of ``written`` (upper, capitalized or lower)."""
    if written.isupper() and len(written) > 1:
        return name.upper()
    if written[:1].isupper():
        return name[:1].upper() + name[1:]
    return name


_ARTICLE_BEFORE = re.compile(r"(?<![A-Za-z])(an?|An?|AN?)(\s+)$")


def fix_article(before: str, replacement: str) -> str:
    """``before`` ends in "a"/"an": make it agree with ``replacement``'s first letter (vowel letters)."""
    match = _ARTICLE_BEFORE.search(before)
    if match is None:
        return before
    article, vowel = match.group(1), replacement[:1].lower() in "aeiou"
    want = "an" if vowel else "a"
    if article.isupper() and (len(article) > 1 or (replacement.isupper() and len(replacement) > 1)):
        want = want.upper()
    elif article[0].isupper():
        want = want.capitalize()
    return before[: match.start(1)] + want + match.group(2)
