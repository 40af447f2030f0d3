"""ShapesWorld objects: exact SDFs, colours, prompts and splits."""

import itertools
import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes

from att3d.shapes import world
from att3d.shapes.world import (
    COLORS,
    SHAPE_NAMES,
    SHAPES,
    ShapeObject,
    all_objects,
    parse_prompt,
)


def _grid(resolution: int, bound: float) -> tuple[torch.Tensor, float]:
    """Cell centres ``[R, R, R, 3]`` of a grid over ``[-bound, bound]^3`` and the cell side."""
    step = 2 * bound / resolution
    axis = -bound + step * (torch.arange(resolution) + 0.5)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1), step


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_sdf_is_exact_distance(name):
    """|sdf| equals the brute-force distance to the zero level set away from the surface.

    Reference: marching cubes of the SDF's sign on an 80³ grid, densely sampled (spacing ~0.006).
    Marching cubes chamfers sharp edges by at most about half a cell (0.009), so 0.015 is the
    tolerance; it cuts pointed tips by more, so the tips (known exactly) join the reference points.
    A bound-only SDF (e.g. max of face planes outside the pyramid) misses by 0.05–0.2.
    """
    shape = SHAPES[name]
    points, step = _grid(80, 0.7)
    values = shape.sdf(points.reshape(-1, 3)).reshape(points.shape[:-1]).numpy()
    verts, faces, _, _ = marching_cubes(values, level=0.0, spacing=(step, step, step))
    mesh = trimesh.Trimesh(verts - 0.7 + step / 2, faces, process=False)
    samples, _ = trimesh.sample.sample_surface(mesh, 100_000, seed=0)
    tips = {"cone": [(0.0, 0.0, world.CONE_HALF_HEIGHT)], "pyramid": [(0.0, 0.0, world.PYRAMID_HALF_HEIGHT)]}
    tree = cKDTree(np.concatenate([samples, np.reshape(tips.get(name, []), (-1, 3))]))

    generator = torch.Generator().manual_seed(0)
    queries = (torch.rand(4000, 3, generator=generator) * 2 - 1) * 0.9
    sdf = shape.sdf(queries)
    keep = sdf.abs() > 0.03
    distance, _ = tree.query(queries[keep].numpy())
    assert keep.sum() > 1000
    assert (sdf[keep] < 0).any() and (sdf[keep] > 0).any()
    np.testing.assert_allclose(sdf[keep].abs().numpy(), distance, atol=0.015)


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_volume_and_extent(name):
    shape = SHAPES[name]
    points, step = _grid(64, 0.7)
    # One random point per cell (stratified sampling): cell centres alone are biased by up to half a
    # cell times the area of a flat face that lines up with the grid.
    jitter = torch.rand(points.shape, generator=torch.Generator().manual_seed(3)) - 0.5
    inside = shape.sdf(points + step * jitter) <= 0
    assert inside.sum().item() * step**3 == pytest.approx(shape.volume, rel=0.02)
    inside = shape.sdf(points) <= 0
    # Everything inside the stated bounding sphere, which itself is well inside the scene box.
    assert points[inside].norm(dim=-1).max() <= shape.bounding_radius + 1e-6
    assert 0.4 <= shape.bounding_radius <= 0.62
    # Upright and centred: the vertical extent is symmetric about z = 0 (up to the cells a pointed
    # tip needs to cover a cell centre).
    z = points[inside][:, 2]
    assert z.max().item() == pytest.approx(-z.min().item(), abs=2 * step)


def test_sdf_hand_checked_values():
    """Distances worked out by hand for the pyramid and the cone: tips, bases, rims, slanted faces."""
    a, h = world.PYRAMID_HALF_BASE, world.PYRAMID_HALF_HEIGHT
    n = torch.tensor([2 * h, 0.0, a]) / math.hypot(2 * h, a)  # outward normal of the +x face
    face_centre = torch.tensor([2 * a / 3, 0.0, -h / 3])
    off_face = face_centre + 0.05 * n
    points = torch.stack(
        [
            torch.tensor([0.0, 0.0, h + 0.1]),  # above the apex
            torch.tensor([0.1, -0.2, -h - 0.2]),  # below the base
            torch.tensor([a + 0.1, a + 0.1, -h - 0.1]),  # beyond a base corner
            off_face,  # off the +x face
            face_centre - 0.05 * n,  # inside, nearest the +x face
            torch.tensor([0.0, 0.0, -h + 0.02]),  # inside, just above the base
            # Images of the off-face point under the pyramid's symmetries (other side faces).
            off_face[[1, 0, 2]],
            off_face * torch.tensor([-1.0, 1.0, 1.0]),
            off_face[[1, 0, 2]] * torch.tensor([1.0, -1.0, 1.0]),
        ]
    )
    expected = torch.tensor([0.1, 0.2, 0.1 * 3**0.5, 0.05, -0.05, -0.02, 0.05, 0.05, 0.05])
    torch.testing.assert_close(SHAPES["pyramid"].sdf(points), expected, atol=1e-6, rtol=0)

    r, h = world.CONE_RADIUS, world.CONE_HALF_HEIGHT
    length = math.hypot(2 * h, r)
    nr, nz = 2 * h / length, r / length  # outward normal of the slanted side in the (r, z) plane
    side_r, side_z = r / 2 + 0.1 * nr, 0.0 + 0.1 * nz  # 0.1 outside the side's midpoint (r/2, 0)
    points = torch.tensor(
        [
            [0.0, 0.0, h + 0.3],  # above the apex
            [0.0, 0.2, -h - 0.1],  # below the base
            [r + 0.3, 0.0, -h - 0.4],  # beyond the base rim
            [0.0, 0.0, 0.0],  # centre: nearer the side than the base
            [0.6 * side_r, 0.8 * side_r, side_z],  # off the slanted side, at azimuth atan(4/3)
        ]
    )
    expected = torch.tensor([0.3, 0.1, 0.5, -h * r / length, 0.1])
    torch.testing.assert_close(SHAPES["cone"].sdf(points), expected, atol=1e-6, rtol=0)


def test_shapes_cover_vertical_asymmetry():
    """Cube and pyramid change under rotation about +z; the solids of revolution do not."""
    points = (torch.rand(2000, 3, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.6
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    rotated = points @ rotation.T
    for name in SHAPE_NAMES:
        difference = (SHAPES[name].sdf(rotated) - SHAPES[name].sdf(points)).abs().max().item()
        if name in ("cube", "pyramid"):
            assert difference > 0.05, name
        elif name != "sphere":
            assert difference < 1e-5, name
    assert len(SHAPES) >= 6


def test_object_api():
    obj = ShapeObject("cube", "red")
    assert obj.canonical_prompt == "a red cube"
    torch.testing.assert_close(obj.rgb, torch.tensor([0.85, 0.10, 0.10]))
    points = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.5], [0.35, 0.0, 0.0]])
    torch.testing.assert_close(obj.sdf(points), torch.tensor([-0.35, 0.15, 0.0]))
    assert obj.occupancy(points).tolist() == [True, False, True]
    assert obj.sdf(points.reshape(1, 3, 3)).shape == (1, 3)
    assert obj.sdf(torch.zeros(3, 3, dtype=torch.float64)).dtype == torch.float64
    assert (obj.shape_index, obj.color_index) == (SHAPE_NAMES.index("cube"), 0)
    assert ShapeObject("cube", "orange").canonical_prompt == "an orange cube"


def test_object_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown shape 'hexagon'; known shapes: sphere, cube"):
        ShapeObject("hexagon", "red")
    with pytest.raises(ValueError, match="unknown color 'white'"):
        ShapeObject("cube", "white")
    with pytest.raises(ValueError, match=r"points must have shape \[..., 3\], got \(4, 2\)"):
        ShapeObject("cube", "red").sdf(torch.zeros(4, 2))
    with pytest.raises(TypeError, match=r"points must be a torch\.Tensor"):
        ShapeObject("cube", "red").sdf(np.zeros((4, 3)))


def test_colors_are_far_apart_and_valid():
    assert len(COLORS) >= 8
    rgb = torch.tensor([c.rgb for c in COLORS.values()])
    assert rgb.min() >= 0 and rgb.max() <= 1
    distances = [(rgb[i] - rgb[j]).norm().item() for i, j in itertools.combinations(range(len(rgb)), 2)]
    assert min(distances) > 0.4
    # Nothing close to the white background.
    assert (rgb - 1).norm(dim=-1).min() > 0.5


def test_prompts_round_trip():
    seen = {}
    for obj in all_objects():
        prompts = obj.prompts
        assert prompts[0] == obj.canonical_prompt
        assert len(prompts) >= 6
        for prompt in prompts:
            assert parse_prompt(prompt) == obj, prompt
            assert parse_prompt(prompt.upper() + ".") == obj
            assert seen.setdefault(prompt, obj) == obj, f"{prompt!r} names two objects"
    red_cube = ShapeObject("cube", "red").prompts
    for phrasing in ("a red cube", "a cube that is red", "red cube", "a red box", "the red block"):
        assert phrasing in red_cube
    assert "a red donut" in ShapeObject("torus", "red").prompts
    assert "a blue ball" in ShapeObject("sphere", "blue").prompts


def test_parse_prompt_synonyms_and_rejections():
    assert parse_prompt("A grey doughnut!") == ShapeObject("torus", "gray")
    assert parse_prompt("a violet-colored pill") == ShapeObject("capsule", "purple")
    assert parse_prompt("  an  orange   can ") == ShapeObject("cylinder", "orange")
    assert parse_prompt("a red cube on a table") is None
    assert parse_prompt("a red cube and a blue sphere") is None
    assert parse_prompt("a red blue cube") is None
    assert parse_prompt("a cube") is None
    assert parse_prompt("") is None
    with pytest.raises(TypeError, match="prompt must be a string"):
        parse_prompt(None)
