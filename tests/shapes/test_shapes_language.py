"""ShapesWorld's prompt language: wordings parse to their object, the held-out wording stays out of
training, typos are deterministic and never ambiguous, words outside the language are refused."""

from __future__ import annotations

import random

import pytest

from att3d.limits import validate_prompt
from att3d.shapes.language import (
    ADJECTIVES,
    COLOR_WORDS,
    ENTRIES,
    SCENES,
    SHAPE_WORDS,
    TEMPLATES,
    TYPOS,
    WordingSplit,
    add_typo,
    apply_casing,
    heldout_wordings,
    parse_names,
    tokens,
    training_wordings,
)
from att3d.shapes.splits import load_splits
from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, ShapeObject, all_objects, parse_prompt

SPLIT = load_splits().wording
PER_OBJECT = 40


def _heldout_marks(split: WordingSplit) -> list[tuple[str, ...]]:
    """Token sequences that only held-out wording contains: held-out entries, and each held-out template's
    words that no training template, adjective or scene uses."""

    def literal(name: str) -> list[str]:
        return tokens(TEMPLATES[name].format(color="", noun="", adj="", scene=""))

    trained = {"an"} | {w for n in split.train_templates for w in literal(n)}  # "a" becomes "an"
    trained |= {w for text in split.train_words((*ADJECTIVES, *SCENES)) for w in tokens(text)}
    marks = [tuple(tokens(word)) for word in split.heldout_words]
    for name in split.heldout_templates:
        marks += [(w,) for w in literal(name) if w not in trained]
    return marks


def _contains(words: list[str], mark: tuple[str, ...]) -> bool:
    return any(tuple(words[i : i + len(mark)]) == mark for i in range(len(words)))


def _one_edit(form: str, word: str) -> bool:
    """One letter dropped or doubled (lengths differ by one), or two neighbours swapped."""
    if len(form) == len(word) - 1:
        return any(word[:i] + word[i + 1 :] == form for i in range(len(word)))
    if len(form) == len(word) + 1:
        return any(form[:i] + form[i + 1 :] == word and form[i] == form[i - 1] for i in range(1, len(form)))
    diff = [i for i in range(len(word)) if form[i] != word[i]] if len(form) == len(word) else []
    return len(diff) == 2 and diff[1] == diff[0] + 1 and form[diff[0]] == word[diff[1]]


def test_vocabulary_covers_the_world_unambiguously():
    assert tuple(COLOR_WORDS) == COLOR_NAMES and tuple(SHAPE_WORDS) == SHAPE_NAMES
    for table in (COLOR_WORDS, SHAPE_WORDS):
        for name, words in table.items():
            assert words[0] == name
            for word in words:  # every word names its own colour or shape, nothing else
                kind = "color" if table is COLOR_WORDS else "shape"
                assert ENTRIES[tuple(tokens(word))] == (kind, name)
    # Each colour and shape has several training words and at least one held-out word.
    for words in (*COLOR_WORDS.values(), *SHAPE_WORDS.values()):
        assert len(SPLIT.train_words(words)) >= 2 and len(SPLIT.train_words(words)) < len(words)


def test_every_training_wording_parses_and_stays_out_of_the_heldout_wording():
    marks = _heldout_marks(SPLIT)
    assert ("ruby",) in marks and ("party", "hat") in marks and ("photo",) in marks
    seen: dict[str, ShapeObject] = {}
    for obj in all_objects():
        wordings = training_wordings(obj, PER_OBJECT, 0, SPLIT)
        assert len(set(wordings)) == PER_OBJECT
        assert wordings[0] == obj.canonical_prompt
        for text in wordings:
            assert parse_prompt(text) == obj, text
            assert validate_prompt(text, max_chars=80) == text
            assert seen.setdefault(text, obj) == obj
            words = [TYPOS.get(w, w) for w in tokens(text)]
            assert not any(_contains(words, mark) for mark in marks), text
    # The sampler varies what it can: templates, words, casing, typos.
    red_cube = training_wordings(ShapeObject("cube", "red"), PER_OBJECT, 0, SPLIT)
    assert {w for text in red_cube for w in tokens(text)} >= {"crimson", "scarlet", "box", "block"}
    assert any(text.isupper() for text in red_cube)
    assert any(w in TYPOS for text in red_cube for w in tokens(text))


def test_every_heldout_wording_parses_and_uses_heldout_wording():
    marks = _heldout_marks(SPLIT)
    trained = {t for obj in all_objects() for t in training_wordings(obj, PER_OBJECT, 0, SPLIT)}
    for obj in all_objects():
        wordings = heldout_wordings(obj, 5, 0, SPLIT)
        assert len(set(wordings)) == 5
        assert not set(wordings) & trained
        for text in wordings:
            assert parse_prompt(text) == obj, text
            assert any(_contains(tokens(text), mark) for mark in marks), text


def test_wordings_are_deterministic_per_seed():
    obj = ShapeObject("torus", "blue")
    assert training_wordings(obj, 20, 3, SPLIT) == training_wordings(obj, 20, 3, SPLIT)
    assert training_wordings(obj, 20, 3, SPLIT) != training_wordings(obj, 20, 4, SPLIT)
    assert heldout_wordings(obj, 4, 0, SPLIT) == heldout_wordings(obj, 4, 0, SPLIT)
    # A prefix of a longer draw: asking for more wordings keeps the earlier ones.
    assert training_wordings(obj, 30, 3, SPLIT)[:20] == training_wordings(obj, 20, 3, SPLIT)
    assert training_wordings(obj, 1, 0, SPLIT) == ["a blue torus"]
    with pytest.raises(ValueError, match=r"only \d+ distinct held-out wordings"):
        heldout_wordings(obj, 100_000, 0, WordingSplit(("azure",), ()))


def test_typos_are_deterministic_single_edits_that_name_no_other_word():
    vocabulary = {w for key in ENTRIES for w in key}
    assert len(TYPOS) > 500
    for form, word in TYPOS.items():
        assert len(word) >= 5 and form not in vocabulary and _one_edit(form, word), (form, word)
    assert "colored" not in TYPOS  # "coloured" minus its "u" is the word "colored", not a typo
    assert TYPOS["crimsn"] == "crimson" and TYPOS["sphree"] == "sphere" and TYPOS["cylindder"] == "cylinder"
    text = "a scarlet cylinder on a white background"
    first = [add_typo(text, random.Random(k)) for k in range(20)]
    assert first == [add_typo(text, random.Random(k)) for k in range(20)]
    for typo in first:
        assert typo != text and parse_prompt(typo) == ShapeObject("cylinder", "red")
        changed = [a for a, b in zip(tokens(typo), tokens(text), strict=True) if a != b]
        assert len(changed) == 1 and TYPOS[changed[0]] in tokens(text)
    assert add_typo("a red cube", random.Random(0)) == "a red cube"  # no word of 5+ letters


def test_casings():
    assert [apply_casing("a 3D model of a red cube", c) for c in ("lower", "sentence", "title", "upper")] == [
        "a 3D model of a red cube",
        "A 3D model of a red cube",
        "A 3D Model Of A Red Cube",
        "A 3D MODEL OF A RED CUBE",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A photo of an AZURE doughnut.", ("torus", "blue")),
        ("a glossy crimson square-based pyramid against a plain backdrop", ("pyramid", "red")),
        ("there is a jade party hat under studio lights", ("cone", "green")),
        ("a traffic cone, lime", ("cone", "green")),
        ("a 3d model of a slate medicine capsule", ("capsule", "gray")),
        ("Smooth Pewter Globe In The Studio", ("sphere", "gray")),
        ("a scarlett cylindder", ("cylinder", "red")),
        ("a crimson red cube", ("cube", "red")),  # two words for one colour
    ],
)
def test_parse_understands_the_language(text, expected):
    assert parse_names(text) == expected
    assert parse_prompt(text) == ShapeObject(*expected)


@pytest.mark.parametrize(
    "text",
    [
        "a white cube",  # white only inside scene phrases
        "a red cube on a table",
        "a hat",
        "a party red hat",  # a phrase's words apart are not the phrase
        "a traffic red cone",
        "a red cube and a blue ball",
        "a crimson navy cube",
        "a red cube pyramid",
        "a red pyramid based square",
        "a red cubee",  # "cube" has 4 letters: no typo form
        "a reed cube",
        "a scralett cube",  # two edits
        "a hamburger",
        "asdfgh qwerty",
    ],
)
def test_words_outside_the_language_give_none(text):
    assert parse_names(text) is None and parse_prompt(text) is None


def test_old_phrasings_still_parse():
    """The bundled prior's 816 phrasings are all in the language."""
    for obj in all_objects():
        for text in obj.prompts:
            assert parse_prompt(text) == obj
