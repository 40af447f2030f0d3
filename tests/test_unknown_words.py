"""Unknown words read as the training word that makes the prompt most familiar (att3d.unknown_words):
with a toy bag-of-words encoder whose word vectors are chosen here, and once with the shipped model."""

from __future__ import annotations

import hashlib

import pytest
import torch

from att3d.familiarity import FamiliarityIndex
from att3d.noun_glosses import NounGlosses
from att3d.text import CachedEncoder
from att3d.unknown_words import KEEP_SIMILARITY, MAX_READ_WORDS, MIN_PROMPTS, UnknownWordReader

DIM = 64


def _random_unit(word: str) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    v = torch.randn(DIM, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


# Words that mean another word: their vector is mostly that word's (what a real encoder knows).
SYNONYMS = {"dice": "cube", "icosahedron": "cube", "globe": "ball", "crate": "cube", "doughnut": "ring"}


class BagOfWordsEncoder:
    """A sentence is the normalized sum of its words' vectors; a synonym's vector leans on its word's."""

    id = "test-bag-of-words"
    dim = DIM

    def vector(self, word: str) -> torch.Tensor:
        if word in SYNONYMS:
            v = 0.8 * _random_unit(SYNONYMS[word]) + 0.2 * _random_unit(word)
            if word == "crate":  # nearer to a colour word than to its own noun
                v = 0.6 * _random_unit("red") + 0.5 * _random_unit("cube")
            return v / v.norm()
        return _random_unit(word)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        rows = [sum(self.vector(w) for w in p.lower().split()) for p in prompts]
        return torch.stack([r / r.norm() for r in rows])


TRAINING = ["a red cube"] * MIN_PROMPTS + ["a blue ball"] * MIN_PROMPTS + ["one green cone"]


def make_reader(training=TRAINING, exclude=frozenset({"red", "blue", "green"})) -> UnknownWordReader:
    encoder = BagOfWordsEncoder()
    index = FamiliarityIndex(training, encoder.encode(training))
    return UnknownWordReader(training, encoder, index, exclude)


def test_candidates_are_frequent_training_words_less_the_excluded() -> None:
    reader = make_reader()
    # 'one', 'cone', 'green' are in one prompt only (typo forms are rare too); colours are excluded
    assert reader.candidates == ["a", "ball", "cube"]


@pytest.mark.parametrize(
    ("prompt", "read"),
    [
        ("a red dice", "a red cube"),
        ("a blue globe", "a blue ball"),
        ("an icosahedron", "a cube"),  # the article follows the new word
        ("a red crate", "a red cube"),  # nearest is the colour 'red', which is no candidate
        ("A Red Dice", "A Red Cube"),
    ],
)
def test_unknown_word_becomes_the_training_word_that_makes_it_familiar(prompt, read) -> None:
    assert make_reader().read(prompt) == read


def test_known_prompts_and_models_without_candidates_are_unchanged() -> None:
    assert make_reader().read("a red cube") == "a red cube"
    few = ["a red cube", "a blue ball"]  # no word in MIN_PROMPTS prompts: nothing to offer
    assert make_reader(few).read("a red dice") == "a red dice"


def test_closeness_in_meaning_outweighs_a_training_prompt_verbatim() -> None:
    # No grey ring was trained: "a grey cone" is a training prompt (familiarity 1), "a grey ring" is not,
    # but 'doughnut' means 'ring'.
    training = ["a grey cone"] * MIN_PROMPTS + ["a red ring"] * MIN_PROMPTS
    reader = make_reader(training, exclude=frozenset({"grey", "red"}))
    assert reader.read("a grey doughnut") == "a grey ring"


def test_a_word_with_no_close_training_word_stays_when_replacing_it_gains_little() -> None:
    encoder = BagOfWordsEncoder()
    indexed = [*TRAINING, "a red zebra"]  # as written the prompt is as familiar as can be
    reader = UnknownWordReader(TRAINING, encoder, FamiliarityIndex(indexed, encoder.encode(indexed)))
    assert all(similarity < KEEP_SIMILARITY for _, similarity in reader.neighbours("zebra"))
    assert reader.read("a red zebra") == "a red zebra"


class CountingEncoder(BagOfWordsEncoder):
    """Counts its calls and the sentences it was given."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, prompts: list[str]) -> torch.Tensor:
        self.calls.append(list(prompts))
        return super().encode(prompts)


def test_a_prompt_of_many_unknown_words_costs_a_bounded_number_of_encoder_calls() -> None:
    encoder = CountingEncoder()
    index = FamiliarityIndex(TRAINING, BagOfWordsEncoder().encode(TRAINING))
    reader = UnknownWordReader(TRAINING, encoder, index)
    unknown = [f"dice{chr(ord('a') + i)}" for i in range(3 * MAX_READ_WORDS)]
    read = reader.read(" ".join(["a", *unknown, "dice"])).split()
    # candidates once, the unknown words' neighbours in one call, one call of variants per word read
    assert len(encoder.calls) == 2 + MAX_READ_WORDS
    assert read[MAX_READ_WORDS + 1 :] == [*unknown[MAX_READ_WORDS:], "dice"]  # past the bound: as written
    assert len(encoder.calls[1]) == MAX_READ_WORDS  # each distinct word embedded once


def test_a_word_is_also_compared_by_its_definitions() -> None:
    # "die" means nothing to the toy encoder; its definition holds a training word.
    glosses = NounGlosses({"die": ["a tool for shaping metal", "a small cube with spots on its faces"]})
    encoder = CountingEncoder()
    index = FamiliarityIndex(TRAINING, BagOfWordsEncoder().encode(TRAINING))
    with_glosses = UnknownWordReader(TRAINING, encoder, index, frozenset({"red", "blue"}), glosses)
    assert with_glosses.read("a red die") == "a red cube"
    # the word and its definitions are embedded in one call
    assert encoder.calls[1] == ["die", "a tool for shaping metal", "a small cube with spots on its faces"]
    plain = UnknownWordReader(TRAINING, BagOfWordsEncoder(), index, frozenset({"red", "blue"}))
    assert plain.read("a red die") == "a red die"
    # a definition only adds: the word's own similarity still counts ("dice" leans on "cube")
    assert with_glosses.read("a red dice") == plain.read("a red dice") == "a red cube"


def test_a_repeated_unknown_word_is_embedded_once_and_read_each_time() -> None:
    encoder = CountingEncoder()
    index = FamiliarityIndex(TRAINING, BagOfWordsEncoder().encode(TRAINING))
    assert UnknownWordReader(TRAINING, encoder, index).read("a red dice dice") == "a red cube cube"
    assert encoder.calls[1] == ["dice"]


def test_reading_writes_nothing_to_the_embedding_cache(tmp_path) -> None:
    cached = CachedEncoder(BagOfWordsEncoder(), tmp_path)
    index = FamiliarityIndex(TRAINING, cached.encode(TRAINING))
    stored = sorted(tmp_path.rglob("*.safetensors"))
    assert len(stored) == 3  # the distinct training prompts
    assert UnknownWordReader(TRAINING, cached, index).read("a red dice of zebras") != "a red dice of zebras"
    assert sorted(tmp_path.rglob("*.safetensors")) == stored


def test_shipped_model_reads_unknown_words() -> None:
    from att3d.generate import Generator

    generator = Generator.default()
    assert generator.read("large grey dice") == "large grey cube"
    assert generator.read("a canary orb") == "a lemon orb"
    assert generator.read("a red cube") == "a red cube"
    generator.config.text.unknown_words = "as_written"
    assert generator.read("large grey dice") == "large grey dice"


def test_shipped_model_reads_its_training_prompts_as_written_and_colours_by_kind() -> None:
    from att3d.generate import Generator

    generator = Generator.default()
    assert [p for p in generator.prompts if generator.read(p) != p] == []
    assert generator.read("a sky blue ball") == "a cobalt ball"  # a pale hue is a hue, not silver
    assert generator.read("a black ring") == "a gray ring"  # the darkest grey is a grey, not navy
    assert generator.read("a white cube on a white background") == "a silver cube on a white background"
