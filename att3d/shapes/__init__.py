"""ShapesWorld: analytic objects with known answers.

- ``world``: shapes, colours, objects with exact SDFs and their prompts; ``splits``: the versioned prompt
  splits;
- ``render``: exact ground-truth renders (sphere tracing) and random-camera datasets;
- ``metrics``: volumetric / mesh IoU and surface colour error against the ground truth.

Only ``world`` and ``splits`` are imported here, so ``import att3d.shapes`` stays light.
"""

from att3d.shapes.splits import Splits, load_splits
from att3d.shapes.world import (
    COLOR_NAMES,
    COLORS,
    SHAPE_NAMES,
    SHAPES,
    ShapeObject,
    all_objects,
    parse_prompt,
)

__all__ = [
    "COLORS",
    "COLOR_NAMES",
    "SHAPES",
    "SHAPE_NAMES",
    "ShapeObject",
    "Splits",
    "all_objects",
    "load_splits",
    "parse_prompt",
]
