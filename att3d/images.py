"""PNG output shared by training previews and the ShapesWorld contact sheets."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from att3d.atomic import atomic_write

if TYPE_CHECKING:
    from PIL import Image


def save_png(image: Image.Image | np.ndarray, path: str | Path) -> Path:
    """Write a PNG atomically (temp file in the same folder + fsync + rename), so a viewer polling the
    file never reads half an image. ``image`` is a PIL image or a ``uint8 [H, W, 3]`` array."""
    from PIL import Image  # lazy: keeps importing the trainer light

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path}")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
