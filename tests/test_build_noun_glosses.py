"""scripts/build_noun_glosses.py on a three-noun WordNet: what it keeps of each definition."""

from __future__ import annotations

import gzip
import json

import pytest
from script_loader import loaded_script

# ruff: noqa: E501 (WordNet's lines are as long as they are)
DATA_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
  3 WordNet 3.1 Copyright 2011 by Princeton University.  All rights reserved.
00000001 06 n 01 die 0 000 | a small cube with 1 to 6 spots on the six faces; used in gambling; "he rolled the dice"
00000002 06 n 01 die 1 000 | a device used for shaping metal
00000003 06 n 01 die 2 000 | a cutting tool
00000004 06 n 01 die 3 000 | a fourth sense, never kept
00000005 06 n 01 globe 0 000 | a sphere on which a map (especially of the earth) is represented and that is mounted on a stand
00000006 06 n 01 ox 0 000 | an animal with a short name
00000007 06 n 01 ice_cream 0 000 | a frozen dessert
"""
INDEX_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by
die n 4 1 @ 4 1 00000001 00000002 00000003 00000004
globe n 1 2 @ ~ 1 0 00000005
ice_cream n 1 0 1 0 00000007
ox n 1 0 1 0 00000006
"""


@pytest.fixture(scope="module")
def script():
    yield from loaded_script("build_noun_glosses")


def test_build_keeps_first_clauses_of_the_first_senses(script, tmp_path) -> None:
    (tmp_path / "data.noun").write_text(DATA_NOUN, encoding="latin-1")
    (tmp_path / "index.noun").write_text(INDEX_NOUN, encoding="latin-1")
    out = tmp_path / "glosses.json.gz"
    assert script.main([str(tmp_path), "--out", str(out)]) == 0
    table = json.loads(gzip.decompress(out.read_bytes()))
    assert table["license"].startswith("This software and database") and "Copyright 2011" in table["license"]
    nouns = table["nouns"]
    assert sorted(nouns) == ["die", "globe"]  # "ox" is too short, "ice_cream" is two words
    assert nouns["die"] == [
        "a small cube with 1 to 6 spots on the six faces",  # the first clause, no usage example
        "a device used for shaping metal",
        "a cutting tool",
    ]  # three senses, most frequent first
    (globe,) = nouns["globe"]
    assert len(globe) <= script.MAX_CHARS and globe.startswith("a sphere on which a map")
    assert not globe.endswith(" ") and "(especially of the earth) is represented and that is" in globe
