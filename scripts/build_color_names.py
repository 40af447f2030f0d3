"""Write ``att3d/assets/color_names.json``: English colour names and their sRGB values.

Sources (facts, with their origin): the 949 names of the xkcd colour survey (Randall Munroe, 2010; results
released under CC0: https://xkcd.com/color/rgb/) and the 148 CSS Color Module Level 4 named colours (W3C),
read from the copies matplotlib ships (``matplotlib.colors.XKCD_COLORS`` / ``CSS4_COLORS``; matplotlib is a
dev dependency only, the service reads the JSON). An xkcd name wins over a CSS name: the survey records what
people call a colour, CSS names are partly historical ("azure" is near-white in CSS, a sky blue in the
survey). Names with characters other than letters, spaces and hyphens ("green/blue") are left out.

    python scripts/build_color_names.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from matplotlib.colors import CSS4_COLORS, XKCD_COLORS

OUT = Path(__file__).resolve().parents[1] / "att3d" / "assets" / "color_names.json"
NAME = re.compile(r"^[a-z]+(?:[ -][a-z]+)*$")


def main() -> None:
    names: dict[str, str] = {}
    for key, value in XKCD_COLORS.items():
        name = key.removeprefix("xkcd:")
        if NAME.match(name):
            names[name] = value.lower()
    for name, value in CSS4_COLORS.items():
        if NAME.match(name):
            names.setdefault(name, value.lower())
    document = {
        "description": "English colour names -> sRGB hex: the xkcd colour survey (CC0), then CSS Color 4 "
        "named colours (W3C) for names the survey lacks. Written by scripts/build_color_names.py.",
        "names": dict(sorted(names.items())),
    }
    OUT.write_text(json.dumps(document, indent=0) + "\n")
    print(f"{len(names)} names -> {OUT}")


if __name__ == "__main__":
    main()
