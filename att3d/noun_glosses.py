"""What an English noun means, in a few words: WordNet's definitions, for words a model was not trained on.

all-MiniLM-L6-v2 places many unknown nouns near the training word they mean ("globe" -> "sphere"), but not
the ones whose meaning is knowledge rather than spelling: "bagel" is nearer "capsule" and "ball" than
"donut", "die" nearer "with" than "cube". A dictionary knows: WordNet defines a bagel as a "glazed
yeast-raised doughnut-shaped roll", a die as "a small cube with 1 to 6 spots on the six faces".
``assets/noun_glosses.json.gz`` holds the first clause of the definitions of the first three senses of
54,939 English nouns (WordNet 3.1, Princeton University, under its license, which the file carries;
``scripts/build_noun_glosses.py``). :class:`att3d.unknown_words.UnknownWordReader` compares each definition
with the model's training words as it compares the word itself. Nothing here is ShapesWorld's: the same
definitions serve any model.
"""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

GLOSSES_FILE = Path(__file__).parent / "assets" / "noun_glosses.json.gz"


class NounGlosses:
    """Noun -> the definitions of its first senses (most frequent first)."""

    def __init__(self, nouns: dict[str, list[str]]) -> None:
        self.nouns = nouns

    @classmethod
    @cache
    def bundled(cls) -> NounGlosses:
        """The definitions shipped in ``assets/noun_glosses.json.gz`` (loaded once per process)."""
        return cls(json.loads(gzip.decompress(GLOSSES_FILE.read_bytes()))["nouns"])

    def get(self, word: str) -> list[str]:
        """The definitions of ``word`` (any case), or of its singular for a regular plural ("cubes",
        "boxes", "berries"); ``[]`` for a word that is no noun here."""
        word = word.lower()
        for form in (word, *_singulars(word)):
            if form in self.nouns:
                return self.nouns[form]
        return []


def _singulars(word: str) -> list[str]:
    forms = []
    if word.endswith("ies") and len(word) > 4:
        forms.append(word[:-3] + "y")
    if word.endswith("es") and len(word) > 4:
        forms.append(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        forms.append(word[:-1])
    return forms
