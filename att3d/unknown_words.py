"""Words a model was not trained on, read as the training word that makes the prompt most familiar.

A word the training prompts never used ("dice", "globe", "tube") reaches the generator only through the
sentence embedding, where all-MiniLM-L6-v2 lets the rest of the sentence outweigh it: "large grey dice"
comes out as a sphere. Embedded alone, the same word is much nearer to the training word it means
("globe" -> "sphere" 0.74, "tube" -> "cylinder" 0.61, "doughnut" -> "donut" 0.70, cosine).

:class:`UnknownWordReader` uses that: for each unknown word of a prompt (right to left) it tries its
:data:`NEIGHBOURS` nearest training words (each embedded alone) in its place and keeps the version of the
prompt with the largest familiarity (its sentence embedding's similarity to the nearest training prompt:
``att3d.familiarity``) + word similarity (of the word put there to the word written; the written word is
credited :data:`KEEP_SIMILARITY`). Familiarity alone would prefer words of the objects trained with the
prompt's template and colour ("a doughnut in grey" -> "a cone in grey" when no grey torus was trained);
word similarity alone would replace words that mean nothing to the model by words that change the prompt
("a party hat" -> "a box hat"). A word the dictionary knows (``att3d.noun_glosses``: "bagel", "die") is
also compared by its definitions: its similarity to a training word is the largest of the word's and its
definitions' ("a small cube with 1 to 6 spots on the six faces" -> "cube"). Candidates are training words
used in at least :data:`MIN_PROMPTS` training prompts (not the typo forms), less the colour names: colours
are read from the colour lexicon (``att3d.color_terms``), and a word that names no colour must not become
one.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

from att3d.color_terms import fix_article, match_case
from att3d.familiarity import FamiliarityIndex
from att3d.noun_glosses import NounGlosses
from att3d.text import TextEncoder, uncached

NEIGHBOURS = 3
"""Training words tried in place of an unknown word."""
KEEP_SIMILARITY = 0.5
"""The word similarity credited to the word as written: a replacement must be closer than that in meaning
(cosine of the two words' embeddings), or make the prompt more familiar by the difference."""
MIN_PROMPTS = 5
"""A training word is a candidate if at least this many training prompts use it."""
MAX_READ_WORDS = 8
"""At most this many unknown words of a prompt are read (the first ones written); the rest stay as written.
Each costs one text-encoder call on the whole prompt, so without a bound a long prompt of unknown words
would hold a worker for minutes (1,000 characters of them: ~100 s on the 2-core CPU); a prompt with more
unknown words than this is far from anything the model knows anyway."""

_WORD = re.compile(r"[A-Za-z]+")


class UnknownWordReader:
    """Rewrites a prompt's unknown words into training words, where that makes the prompt more familiar."""

    def __init__(
        self,
        training_prompts: list[str],
        encoder: TextEncoder,
        index: FamiliarityIndex,
        exclude: frozenset[str] = frozenset(),
        glosses: NounGlosses | None = None,
    ) -> None:
        """
        Args:
            training_prompts: the model's training prompts.
            encoder: the model's text encoder (used past any cache: the words and variants tried are not
                kept).
            index: the training prompts' embeddings (the generator's familiarity index).
            exclude: words never offered as replacements (the training prompts' colour names).
            glosses: definitions of unknown nouns, compared with the candidates too (none: words only).
        """
        self.encoder = uncached(encoder)
        self.index = index
        self.glosses = glosses
        used = Counter(w for p in training_prompts for w in {w.lower() for w in _WORD.findall(p)})
        self.training_words = frozenset(used)
        self.candidates = sorted(w for w, n in used.items() if n >= MIN_PROMPTS and w not in exclude)
        self._vectors: torch.Tensor | None = None

    def neighbours(self, word: str) -> list[tuple[str, float]]:
        """The :data:`NEIGHBOURS` candidates nearest to ``word`` and their cosine similarity to it, each
        word embedded alone; for a word with definitions, the larger of the word's similarity and its
        definitions'."""
        return self._neighbours([word])[word]

    def _neighbours(self, words: list[str]) -> dict[str, list[tuple[str, float]]]:
        """:meth:`neighbours` of several words, embedded with their definitions in one encoder call."""
        if not self.candidates or not words:
            return {w: [] for w in words}
        if self._vectors is None:
            self._vectors = _unit(self.encoder.encode(self.candidates))
        definitions = [self.glosses.get(w) if self.glosses else [] for w in words]
        texts = words + [d for defs in definitions for d in defs]
        similarity = _unit(self.encoder.encode(texts)) @ self._vectors.T  # [texts, candidates]
        start = len(words)
        rows = []
        for i, defs in enumerate(definitions):
            row = similarity[i]
            if defs:
                row = torch.maximum(row, similarity[start : start + len(defs)].max(dim=0).values)
                start += len(defs)
            rows.append(row)
        best = torch.stack(rows).topk(min(NEIGHBOURS, len(self.candidates)), dim=1)
        return {
            w: [(self.candidates[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
            for w, values, indices in zip(words, best.values, best.indices, strict=True)
        }

    def read(self, prompt: str) -> str:
        """``prompt`` with each unknown word replaced where a training word scores higher (see the module)."""
        unknown = [m for m in _WORD.finditer(prompt) if m.group().lower() not in self.training_words]
        unknown = unknown[:MAX_READ_WORDS]
        nearest = self._neighbours(sorted({m.group().lower() for m in unknown}))
        current = prompt
        for match in reversed(unknown):  # right to left: the offsets of the words still to read hold
            written = match.group()
            variants, closeness = [current], [KEEP_SIMILARITY]
            for word, word_similarity in nearest[written.lower()]:
                replacement = match_case(word, written)
                variants.append(
                    fix_article(current[: match.start()], replacement) + replacement + current[match.end() :]
                )
                closeness.append(word_similarity)
            familiarity = [self.index.nearest(e)[0] for e in self.encoder.encode(variants)]
            score = [f + c for f, c in zip(familiarity, closeness, strict=True)]
            current = variants[max(range(len(variants)), key=lambda i: (score[i], -i))]
        return current


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)
