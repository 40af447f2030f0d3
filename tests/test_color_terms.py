"""Colour names read through the colour lexicon (att3d.color_terms): finding names in prompts, the bundled
lexicon's content, and reading an unseen colour as the nearest seen one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from att3d.color_terms import (
    CHROMA_MIN,
    COLOR_NAMES_FILE,
    ColorLexicon,
    ColorTerm,
    ColorTermReader,
    fix_article,
)

TRAINING = ["a red cube", "a lemon ball", "a blue cone", "a green box", "a gray ring"]


@pytest.fixture(scope="module")
def lexicon() -> ColorLexicon:
    return ColorLexicon.bundled()


@pytest.fixture(scope="module")
def reader(lexicon) -> ColorTermReader:
    return ColorTermReader(TRAINING, lexicon)


def test_bundled_lexicon_holds_survey_and_css_names() -> None:
    names = json.loads(COLOR_NAMES_FILE.read_text())["names"]
    assert len(names) > 1000
    assert all(len(v) == 7 and v[0] == "#" and int(v[1:], 16) >= 0 for v in names.values())
    # The survey's names win over CSS's: azure is a sky blue there, near-white in CSS (#f0fff0-ish).
    assert names["azure"] == "#069af3" and names["gray"] == "#808080" and names["grey"] == "#929591"


def test_find_takes_the_longest_name_and_reports_offsets(lexicon) -> None:
    prompt = "A Sky Blue ball on a white background"
    terms = lexicon.find(prompt)
    assert terms == [ColorTerm(2, 10, "sky blue"), ColorTerm(21, 26, "white")]
    assert prompt[2:10] == "Sky Blue" and prompt[21:26] == "white"
    assert lexicon.find("a slate-grey cube") == [ColorTerm(2, 12, "slate grey")]  # hyphen as a space
    assert lexicon.find("a cube, no colours") == []


def test_find_reads_one_edit_typos_of_long_words_only(lexicon) -> None:
    assert lexicon.find("a canray orb") == [ColorTerm(2, 8, "canary")]  # neighbours swapped
    assert lexicon.find("a vermilion box")[0].name == "vermillion"  # the survey's spelling
    assert lexicon.find("a red block") == [ColorTerm(2, 5, "red")]  # 'block' is not read as 'black'
    # A word the model was trained on is never a typo.
    assert lexicon.find("a canray orb", plain_words=frozenset({"canray"})) == []


def test_distance_is_ciede2000_with_half_weight_lightness(lexicon) -> None:
    assert lexicon.distance("red", "red") == pytest.approx(0.0, abs=1e-9)
    assert lexicon.distance("red", "blue") == pytest.approx(lexicon.distance("blue", "red"))
    # vermillion (#f4320c) is a red, not an orange
    assert lexicon.distance("vermillion", "red") < lexicon.distance("vermillion", "orange")


def test_reader_knows_the_training_colours(reader) -> None:
    assert reader.known == ("blue", "gray", "green", "lemon", "red")


@pytest.mark.parametrize(
    ("prompt", "read"),
    [
        ("a canary orb", "a lemon orb"),
        ("A CANARY ORB", "A LEMON ORB"),
        ("An Azure Ball", "A Blue Ball"),  # the article follows the new word
        ("a ruby cube", "a red cube"),
        ("a jade capsule", "a green capsule"),
        ("a charcoal cone", "a gray cone"),
        ("a canray orb", "a lemon orb"),
        ("a slate-grey cube", "a gray cube"),
    ],
)
def test_unseen_colour_becomes_the_nearest_seen(reader, prompt, read) -> None:
    assert reader.read(prompt) == read


@pytest.mark.parametrize(
    "prompt",
    [
        "a red cube",
        "a red cube on a white background",  # the first colour is the object's; it is known
        "a blue brick",  # 'brick' is a colour name too, but not the first one
        "a cube",
        "an elephant",
    ],
)
def test_prompts_without_an_unseen_first_colour_are_unchanged(reader, prompt) -> None:
    assert reader.read(prompt) == prompt


def test_only_colours_given_to_objects_are_known(lexicon) -> None:
    training = ["a red cube on a white background", "a silver ball", "a crimmson ring"]
    training += [
        "a purplee cone isolated on white"
    ]  # a misspelling too ambiguous to read (purple, purpley, purply)
    reader = ColorTermReader(training, lexicon)
    assert reader.named == ("crimson", "red", "silver", "white")  # the readable typo read as its name
    assert reader.known == ("crimson", "red", "silver")  # white was the object's colour in one prompt of two
    assert reader.read("a white cube") == "a silver cube"
    assert reader.read("a red cube on a white background") == "a red cube on a white background"
    # white stays where the training prompts put it; elsewhere it is an object's colour
    assert reader.read("a cube on a white background") == "a cube on a white background"
    assert reader.read("a ball isolated on white") == "a ball isolated on white"
    assert reader.read("a ball in white") == "a ball in silver"
    assert reader.read("a white ball on a white background") == "a silver ball on a white background"
    # the trained misspelling is the object's colour, not the white of the background
    assert reader.read("a crimmson box isolated on white") == "a crimmson box isolated on white"
    assert reader.read("a CRIMMSON box") == "a CRIMMSON box"


def test_hues_and_greys_are_read_as_their_kind(lexicon) -> None:
    # Nearest in CIEDE2000 alone, sky blue is silver and black is navy: pale tints sit near the greys,
    # the darkest shades near the darkest hue.
    reader = ColorTermReader(["a navy cube", "a silver ball", "a red cone", "a blue ring"], lexicon)
    assert lexicon.distance("sky blue", "silver") < lexicon.distance("sky blue", "blue")
    assert lexicon.distance("black", "navy") < lexicon.distance("black", "silver")
    assert reader.read("a sky blue ball") == "a blue ball"
    assert reader.read("a baby blue ball") == "a blue ball"
    assert reader.read("a black cube") == "a silver cube"
    assert reader.read("a charcoal cube") == "a silver cube"
    assert reader.read("a crimson cube") == "a red cube"
    # A model that knows only hues still reads a grey as the nearest of them.
    assert ColorTermReader(["a red cone", "a navy ring"], lexicon).read("a black cube") == "a navy cube"


def test_chroma_min_separates_the_lexicons_grey_names_from_its_hue_names(lexicon) -> None:
    greys, hues = (
        {"grey", "gray", "silver", "white", "black"},
        {
            *("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown"),
            *("violet", "teal", "turquoise", "magenta"),
        },
    )
    grey = np.array([lexicon.chroma(n) for n in lexicon.names if n.split()[-1] in greys])
    hue = np.array([lexicon.chroma(n) for n in lexicon.names if n.split()[-1] in hues])
    assert len(grey) > 20 and len(hue) > 500
    thresholds = np.arange(5.0, 30.0, 0.25)
    errors = np.array([(grey >= t).sum() + (hue < t).sum() for t in thresholds])
    assert errors[thresholds == CHROMA_MIN][0] == errors.min() == 12
    assert lexicon.chroma("gray") < 0.01 and lexicon.chroma("red") > 60


def test_a_model_trained_without_colour_names_reads_as_written(lexicon) -> None:
    reader = ColorTermReader(["a cube", "a ball"], lexicon)
    assert reader.known == () and reader.read("a canary orb") == "a canary orb"


def test_fix_article() -> None:
    assert fix_article("there is an ", "blue") == "there is a "
    assert fix_article("A ", "Orange") == "An "
    assert fix_article("AN ", "BLUE") == "A "
    assert fix_article("banana ", "orange") == "banana "  # no article: unchanged
