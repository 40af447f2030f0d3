"""Noun definitions (att3d.noun_glosses): the bundled WordNet table and how a word is looked up."""

from __future__ import annotations

import gzip
import json

from att3d.noun_glosses import GLOSSES_FILE, NounGlosses


def test_bundled_table_holds_definitions_and_wordnets_license() -> None:
    table = json.loads(gzip.decompress(GLOSSES_FILE.read_bytes()))
    assert len(table["nouns"]) > 50_000
    assert "Princeton University" in table["license"] and "WordNet 3.1 Copyright" in table["license"]
    assert all(1 <= len(defs) <= 3 for defs in table["nouns"].values())
    glosses = NounGlosses.bundled()
    assert glosses.get("die")[0] == "a small cube with 1 to 6 spots on the six faces"
    assert "doughnut-shaped" in glosses.get("bagel")[0]


def test_get_reads_any_case_and_regular_plurals() -> None:
    glosses = NounGlosses({"cube": ["a solid"], "box": ["a container"], "berry": ["a fruit"], "glass": ["x"]})
    assert glosses.get("Cube") == glosses.get("CUBES") == ["a solid"]
    assert glosses.get("boxes") == ["a container"]
    assert glosses.get("berries") == ["a fruit"]
    assert glosses.get("glass") == ["x"] and glosses.get("glas") == []
    assert glosses.get("zebra") == [] and glosses.get("") == []
