"""ShapesWorld: analytic shapes × named colours, with exact signed distances and prompts.

Every object is one primitive standing upright (+z up) and centred at the origin, with one uniform
colour. Shapes are sized so that the whole object lies within radius ~0.62 of the origin: with the
default camera (distance 2.8, fovy 40°) it fills roughly half the image and never leaves the
scene box ``[-1, 1]^3``.

Signed distances are **exact** Euclidean distances in world units (negative inside), not bounds, so
sphere tracing is tight, surface projection ``p - sdf(p) ∇sdf(p)`` lands on the surface in one step
and ``|sdf|`` can be used as a distance in metrics. Two families carry most shapes:

- solids of revolution about +z (cylinder, cone, torus, capsule) are a 2D profile in the
  ``(r, z)`` half-plane, mirrored about the axis; their SDF is the profile's 2D SDF evaluated at
  ``(sqrt(x² + y²), z)``;
- convex polyhedra (pyramid) use the distance to the nearest face outside and the largest signed
  plane distance inside (exact for convex solids).

The cube and the pyramid are not symmetric about the vertical axis on purpose: a view-conditioned
prior must learn how they change with azimuth (the feasibility probe in DESIGN.md §3 produced an
azimuth-averaged cylinder when the only non-symmetric shape was rarely distinguishable).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from att3d.shapes.language import parse_names, with_articles

SdfFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------------------------------
# Exact SDF building blocks
# --------------------------------------------------------------------------------------------------


def _check_points(points: Tensor) -> Tensor:
    if not isinstance(points, Tensor):
        raise TypeError(f"points must be a torch.Tensor, got {type(points).__name__}")
    if points.shape[-1] != 3:
        raise ValueError(f"points must have shape [..., 3], got {tuple(points.shape)}")
    if not points.is_floating_point():
        points = points.float()
    return points


def _box_sdf_2d(q: Tensor, half: tuple[float, float]) -> Tensor:
    """Exact SDF of the axis-aligned rectangle ``|q_0| <= half[0], |q_1| <= half[1]`` at ``q [..., 2]``."""
    d = q.abs() - q.new_tensor(half)
    return d.clamp_min(0.0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0.0)


def _segment_distance(x: Tensor, y: Tensor, z: Tensor, a: Sequence[float], b: Sequence[float]) -> Tensor:
    """Distance from the points ``(x, y, z)`` to the segment from ``a`` to ``b`` (3D constants)."""
    e = [bi - ai for ai, bi in zip(a, b, strict=True)]
    w = [x - a[0], y - a[1], z - a[2]]
    t = ((w[0] * e[0] + w[1] * e[1] + w[2] * e[2]) / (e[0] ** 2 + e[1] ** 2 + e[2] ** 2)).clamp(0.0, 1.0)
    return torch.stack([w[i] - t * e[i] for i in range(3)], dim=-1).norm(dim=-1)


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------

SPHERE_RADIUS = 0.45
CUBE_HALF_SIZE = 0.35
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.3, 0.4
CONE_RADIUS, CONE_HALF_HEIGHT = 0.4, 0.4
TORUS_MAJOR, TORUS_MINOR = 0.35, 0.15
CAPSULE_RADIUS, CAPSULE_HALF_LENGTH = 0.25, 0.25
PYRAMID_HALF_BASE, PYRAMID_HALF_HEIGHT = 0.35, 0.35


def sphere_sdf(points: Tensor) -> Tensor:
    """Sphere of radius ``SPHERE_RADIUS``."""
    return points.norm(dim=-1) - SPHERE_RADIUS


def cube_sdf(points: Tensor) -> Tensor:
    """Axis-aligned cube of half-size ``CUBE_HALF_SIZE`` (faces face ±x, ±y, ±z)."""
    q = points.abs() - CUBE_HALF_SIZE
    return q.clamp_min(0.0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0.0)


def cylinder_sdf(points: Tensor) -> Tensor:
    """Upright cylinder: radius ``CYLINDER_RADIUS``, z in ``±CYLINDER_HALF_HEIGHT``."""
    q = torch.stack([points[..., :2].norm(dim=-1), points[..., 2]], dim=-1)
    return _box_sdf_2d(q, (CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT))


def cone_sdf(points: Tensor) -> Tensor:
    """Upright cone, apex up: base radius ``CONE_RADIUS`` at ``z = -CONE_HALF_HEIGHT``, apex at ``+``."""
    # In the (r, z) half-plane the profile is the triangle (±R, -h), (0, h). For r >= 0 the nearest
    # points lie on the base segment or the right slanted side (the mirrored side is never nearer).
    r, z = points[..., :2].norm(dim=-1), points[..., 2]
    radius, h = CONE_RADIUS, CONE_HALF_HEIGHT
    base = torch.hypot((r - radius).clamp_min(0.0), z + h)
    er, ez = -radius, 2 * h  # slanted side from (R, -h) to the apex (0, h)
    wr, wz = r - radius, z + h
    t = ((wr * er + wz * ez) / (er * er + ez * ez)).clamp(0.0, 1.0)
    side = torch.hypot(wr - t * er, wz - t * ez)
    inside = (z >= -h) & (er * wz - ez * wr >= 0)
    distance = torch.minimum(base, side)
    return torch.where(inside, -distance, distance)


def torus_sdf(points: Tensor) -> Tensor:
    """Torus lying flat in the xy-plane: tube centre radius ``TORUS_MAJOR``, tube radius ``TORUS_MINOR``."""
    q = torch.stack([points[..., :2].norm(dim=-1) - TORUS_MAJOR, points[..., 2]], dim=-1)
    return q.norm(dim=-1) - TORUS_MINOR


def capsule_sdf(points: Tensor) -> Tensor:
    """Upright capsule: radius ``CAPSULE_RADIUS`` around the z-segment ``±CAPSULE_HALF_LENGTH``."""
    z = points[..., 2].clamp(-CAPSULE_HALF_LENGTH, CAPSULE_HALF_LENGTH)
    axis_point = torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=-1)
    return (points - axis_point).norm(dim=-1) - CAPSULE_RADIUS


def pyramid_sdf(points: Tensor) -> Tensor:
    """Square pyramid, apex up: base half-width ``PYRAMID_HALF_BASE``, z in ``±PYRAMID_HALF_HEIGHT``.

    The pyramid is mirror-symmetric about x = 0, y = 0 and x = y, and the nearest surface point of a
    point in the wedge ``x >= y >= 0`` lies in the same wedge (else its mirror image would be nearer).
    So points are folded into that wedge, where only the base and the +x side face can be nearest.
    Inside, the SDF is the larger of the two plane distances (exact for a convex solid); outside, the
    distance to the nearer of the two faces.
    """
    a, h = PYRAMID_HALF_BASE, PYRAMID_HALF_HEIGHT
    xy = points[..., :2].abs()
    x, y, z = xy.amax(dim=-1), xy.amin(dim=-1), points[..., 2]
    # +x side face: triangle A = (a, -a, -h), B = (a, a, -h), C = (0, 0, h); outward unit normal n.
    length = (4 * h * h + a * a) ** 0.5
    nx, nz = 2 * h / length, a / length
    side_height = nx * (x - a) + nz * (z + h)
    base_height = -(z + h)
    plane_max = torch.maximum(side_height, base_height)

    # Base square z = -h, |x|, |y| <= a.
    base = torch.stack([(x - a).clamp_min(0.0), (y - a).clamp_min(0.0), z + h], dim=-1).norm(dim=-1)
    # Side triangle: plane distance where the point projects inside it (in-plane edge normals
    # m = n × (b - a) give the test without projecting), else the nearest edge. The edge C→A is the
    # mirror image of B→C across y = 0 and never nearer for y >= 0.
    in_ab = nx * (z + h) - nz * (x - a) >= 0
    in_bc = (a * nz + 2 * h * nx) * (a - y) + a * nz * (x - a) - a * nx * (z + h) >= 0
    in_ca = a * nz * x + (a * nz + 2 * h * nx) * y - a * nx * (z - h) >= 0
    edges = torch.minimum(
        torch.stack([x - a, (y - a).clamp_min(0.0), z + h], dim=-1).norm(dim=-1),
        _segment_distance(x, y, z, (a, a, -h), (0.0, 0.0, h)),
    )
    side = torch.where(in_ab & in_bc & in_ca, side_height.abs(), edges)
    return torch.where(plane_max > 0, torch.minimum(base, side), plane_max)


@dataclass(frozen=True)
class Shape:
    """One primitive of the world."""

    name: str
    """Canonical name, used in canonical prompts and split files."""
    nouns: tuple[str, ...]
    """Words that name the shape in prompts; the first is the canonical noun."""
    sdf: SdfFn
    """Exact signed distance ``[..., 3] -> [...]`` in world units (negative inside)."""
    bounding_radius: float
    """Radius of a sphere around the origin that contains the whole shape."""
    volume: float
    """Exact volume (world units cubed), for tests and sanity checks."""


_PI = 3.141592653589793

SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("sphere", ("sphere", "ball", "orb"), sphere_sdf, SPHERE_RADIUS, 4 / 3 * _PI * SPHERE_RADIUS**3),
        Shape("cube", ("cube", "box", "block"), cube_sdf, 3**0.5 * CUBE_HALF_SIZE, (2 * CUBE_HALF_SIZE) ** 3),
        Shape(
            "cylinder",
            ("cylinder", "can", "drum"),
            cylinder_sdf,
            (CYLINDER_RADIUS**2 + CYLINDER_HALF_HEIGHT**2) ** 0.5,
            _PI * CYLINDER_RADIUS**2 * 2 * CYLINDER_HALF_HEIGHT,
        ),
        Shape(
            "cone",
            ("cone",),
            cone_sdf,
            (CONE_RADIUS**2 + CONE_HALF_HEIGHT**2) ** 0.5,
            _PI * CONE_RADIUS**2 * 2 * CONE_HALF_HEIGHT / 3,
        ),
        Shape(
            "torus",
            ("torus", "ring", "donut", "doughnut"),
            torus_sdf,
            TORUS_MAJOR + TORUS_MINOR,
            2 * _PI**2 * TORUS_MAJOR * TORUS_MINOR**2,
        ),
        Shape(
            "capsule",
            ("capsule", "pill"),
            capsule_sdf,
            CAPSULE_RADIUS + CAPSULE_HALF_LENGTH,
            _PI * CAPSULE_RADIUS**2 * (2 * CAPSULE_HALF_LENGTH + 4 / 3 * CAPSULE_RADIUS),
        ),
        Shape(
            "pyramid",
            ("pyramid",),
            pyramid_sdf,
            (2 * PYRAMID_HALF_BASE**2 + PYRAMID_HALF_HEIGHT**2) ** 0.5,
            (2 * PYRAMID_HALF_BASE) ** 2 * 2 * PYRAMID_HALF_HEIGHT / 3,
        ),
    )
}
"""All shapes, in the fixed order used by split files and class indices."""

SHAPE_NAMES: tuple[str, ...] = tuple(SHAPES)


# --------------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Color:
    """One named colour of the world."""

    name: str
    """Canonical name."""
    rgb: tuple[float, float, float]
    """Albedo in [0, 1]."""
    synonyms: tuple[str, ...] = ()
    """Other names of the colour (all of them, and more, are words of ``att3d.shapes.language``)."""


COLORS: dict[str, Color] = {
    c.name: c
    for c in (
        Color("red", (0.85, 0.10, 0.10)),
        Color("orange", (1.00, 0.50, 0.00)),
        Color("yellow", (0.95, 0.95, 0.10)),
        Color("green", (0.10, 0.65, 0.15)),
        Color("cyan", (0.00, 0.75, 0.85), ("turquoise",)),
        Color("blue", (0.10, 0.20, 0.90)),
        Color("purple", (0.55, 0.10, 0.70), ("violet",)),
        Color("gray", (0.50, 0.50, 0.50), ("grey",)),
    )
}
"""All colours, in the fixed order used by split files and class indices.

Pairwise RGB distances are at least 0.43 (red–orange), so the nearest named colour of a roughly
right albedo is unambiguous. There is deliberately no white and no black:

- white on the white background vanishes wherever the surface faces the light
  (``albedo · shade = 1 = background``), so its silhouette, which carries most of the shape signal
  for SDS, is lost, and an empty scene scores almost as well as the object;
- black shows no shading (``0 · shade = 0``), so its 3D form is readable only from the silhouette.

Gray stands in as the achromatic colour: it differs from the background even when fully lit and
still shows shading.
"""

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)


# --------------------------------------------------------------------------------------------------
# Objects and prompts
# --------------------------------------------------------------------------------------------------

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a {color} {noun}",
    "{color} {noun}",
    "the {color} {noun}",
    "a {noun} that is {color}",
    "a {noun} in {color}",
    "a {color} colored {noun}",
)
"""The phrasings the bundled prior was trained on (``ShapeObject.prompts``); the first one, with the canonical
noun, is the canonical prompt. The whole prompt language (more words, templates, typos) is
``att3d.shapes.language``."""


@dataclass(frozen=True)
class ShapeObject:
    """One object of the world: a shape with a uniform colour."""

    shape: str
    """Canonical shape name (a key of ``SHAPES``)."""
    color: str
    """Canonical colour name (a key of ``COLORS``)."""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; known shapes: {', '.join(SHAPE_NAMES)}")
        if self.color not in COLORS:
            raise ValueError(f"unknown color {self.color!r}; known colors: {', '.join(COLOR_NAMES)}")

    @property
    def rgb(self) -> Tensor:
        """Albedo ``(3,)`` in [0, 1]."""
        return torch.tensor(COLORS[self.color].rgb)

    @property
    def bounding_radius(self) -> float:
        """Radius of a sphere around the origin that contains the object."""
        return SHAPES[self.shape].bounding_radius

    def sdf(self, points: Tensor) -> Tensor:
        """Exact signed distance ``[..., 3] -> [...]`` in world units, negative inside."""
        return SHAPES[self.shape].sdf(_check_points(points))

    def occupancy(self, points: Tensor) -> Tensor:
        """Boolean inside test ``[..., 3] -> [...]`` (points on the surface count as inside)."""
        return self.sdf(points) <= 0

    @property
    def canonical_prompt(self) -> str:
        """``a red cube``: the one phrasing used for captions, caches and class names."""
        return with_articles(PROMPT_TEMPLATES[0].format(color=self.color, noun=self.shape))

    @property
    def prompts(self) -> list[str]:
        """Every supported phrasing with every noun for the shape (canonical prompt first)."""
        result = []
        for template in PROMPT_TEMPLATES:
            for noun in SHAPES[self.shape].nouns:
                text = with_articles(template.format(color=self.color, noun=noun))
                if text not in result:
                    result.append(text)
        return result

    @property
    def shape_index(self) -> int:
        """Position of the shape in ``SHAPE_NAMES`` (class index)."""
        return SHAPE_NAMES.index(self.shape)

    @property
    def color_index(self) -> int:
        """Position of the colour in ``COLOR_NAMES`` (class index)."""
        return COLOR_NAMES.index(self.color)


def all_objects() -> list[ShapeObject]:
    """Every (shape, colour) combination, shape-major in the canonical orders."""
    return [ShapeObject(shape, color) for shape in SHAPE_NAMES for color in COLOR_NAMES]


def parse_prompt(text: str) -> ShapeObject | None:
    """The object a prompt names, or ``None`` if it is not a ShapesWorld prompt.

    Understands the whole prompt language (``att3d.shapes.language``: colour shades, everyday nouns,
    templates, descriptive and scene words, known typos), case-, punctuation- and hyphen-insensitively.
    The parse is strict: any word outside the language, or two different shapes or colours, gives
    ``None`` rather than a guess, so this can serve as an oracle for "which object does this prompt ask
    for".
    """
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    names = parse_names(text)
    return None if names is None else ShapeObject(*names)


__all__ = [
    "COLORS",
    "COLOR_NAMES",
    "PROMPT_TEMPLATES",
    "SHAPES",
    "SHAPE_NAMES",
    "Color",
    "SdfFn",
    "Shape",
    "ShapeObject",
    "all_objects",
    "parse_prompt",
]
