"""ShapesWorld: analytic objects with known answers (exact SDF, renders, metrics, prompt splits)."""

from att3d.shapes.world import (
    COLOR_NAMES,
    COLORS,
    SHAPE_NAMES,
    SHAPES,
    ShapeObject,
    Splits,
    all_objects,
    load_splits,
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
