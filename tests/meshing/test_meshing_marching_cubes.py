"""The PyTorch marching cubes against scikit-image on the same grids (CPU)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes as skimage_marching_cubes

from att3d.config import ConfigError, MeshConfig
from att3d.meshing.dense import extract_mesh
from att3d.meshing.marching_cubes import CENTRE, marching_cubes, resolve_method, triangle_table


def grid(n: int, fn) -> torch.Tensor:
    """``fn(x, y, z)`` sampled on ``n^3`` points of [-1, 1]^3, padded with an outside layer (-1)."""
    axis = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.nn.functional.pad(fn(x, y, z).float(), (1,) * 6, value=-1.0)


def sphere(x, y, z):
    return 0.6 - (x**2 + y**2 + z**2).sqrt()


def torus(x, y, z):
    return 0.2 - ((x**2 + y**2).sqrt() - 0.55).hypot(z)


def smooth_noise(seed: int):
    """A random smooth field: trilinear upsampling of 6^3 Gaussian noise."""
    coarse = torch.randn(1, 1, 6, 6, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def fn(x, y, z):
        fine = torch.nn.functional.interpolate(coarse, size=x.shape, mode="trilinear", align_corners=True)
        return fine[0, 0]

    return fn


FIELDS = {"sphere": sphere, "torus": torus, "noise0": smooth_noise(0), "noise1": smooth_noise(1)}


def reference(volume: torch.Tensor, level: float) -> trimesh.Trimesh:
    vertices, faces, _, _ = skimage_marching_cubes(
        volume.numpy(), level=level, gradient_direction="ascent", allow_degenerate=False
    )
    return trimesh.Trimesh(vertices, faces, process=False)


def ours(volume: torch.Tensor, level: float) -> trimesh.Trimesh:
    vertices, faces = marching_cubes(volume, level)
    assert vertices.dtype == torch.float32 and faces.dtype == torch.int64
    return trimesh.Trimesh(vertices.numpy(), faces.numpy(), process=False)


def closest_points_on_triangles(p: np.ndarray, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Closest point of triangle ``(a, b, c)`` to ``p``, row by row (Voronoi regions of the triangle)."""
    ab, ac = b - a, c - a
    d1, d2 = ((ab * (p - a)).sum(1), (ac * (p - a)).sum(1))
    d3, d4 = ((ab * (p - b)).sum(1), (ac * (p - b)).sum(1))
    d5, d6 = ((ab * (p - c)).sum(1), (ac * (p - c)).sum(1))
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = va + vb + vc
        out = a + ab * (vb / denom)[:, None] + ac * (vc / denom)[:, None]  # interior
        regions = [
            ((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + ab * (d1 / (d1 - d3))[:, None]),  # edge ab
            ((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + ac * (d2 / (d2 - d6))[:, None]),  # edge ac
            ((va <= 0) & (d4 >= d3) & (d5 >= d6), b + (c - b) * ((d4 - d3) / (d4 - d3 + d5 - d6))[:, None]),
            ((d1 <= 0) & (d2 <= 0), a),
            ((d3 >= 0) & (d4 <= d3), b),
            ((d6 >= 0) & (d5 <= d6), c),
        ]
    for mask, points in regions:
        out[mask] = points[mask]
    return out


def one_sided_distance(a: trimesh.Trimesh, b: trimesh.Trimesh, samples: int = 20000, k: int = 16) -> float:
    """Max distance from points on ``a`` (vertices and random samples) to the surface ``b``.

    Each point is tested against the ``k`` triangles of ``b`` with the nearest centres; missing the true
    closest triangle can only overestimate, so a bound that holds here holds for the surfaces.
    """
    points = np.concatenate([a.vertices, trimesh.sample.sample_surface(a, samples, seed=0)[0]])
    triangles = b.triangles
    _, nearest = cKDTree(triangles.mean(axis=1)).query(points, k=k)
    p, t = np.repeat(points, k, axis=0), triangles[nearest.reshape(-1)]
    closest = closest_points_on_triangles(p, t[:, 0], t[:, 1], t[:, 2])
    return float(np.linalg.norm(p - closest, axis=1).reshape(-1, k).min(axis=1).max())


def test_distance_helper_on_a_known_triangle():
    # Interior, vertex b, vertex a, edge bc, edge ab regions of the triangle (0,0,0), (1,0,0), (0,1,0).
    p = np.array([[0.25, 0.25, 2.0], [2.0, -1.0, 0.0], [-1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.5, -3.0, 1.0]])
    corners = [
        np.repeat(np.array([v], dtype=float), len(p), axis=0) for v in ([0, 0, 0], [1, 0, 0], [0, 1, 0])
    ]
    closest = closest_points_on_triangles(p, *corners)
    expected = [[0.25, 0.25, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.0]]
    np.testing.assert_allclose(closest, expected, atol=1e-12)


@pytest.mark.parametrize("name", list(FIELDS))
def test_matches_scikit_image_on_the_same_grid(name):
    volume = grid(40, FIELDS[name])
    mesh, ref = ours(volume, 0.0), reference(volume, 0.0)
    assert len(ref.vertices) > 500
    # One vertex per crossing edge, as Lewiner's implementation: identical on smooth fields.
    assert abs(len(mesh.vertices) - len(ref.vertices)) <= 0.01 * len(ref.vertices)
    assert abs(len(mesh.faces) - len(ref.faces)) <= 0.01 * len(ref.faces)
    hausdorff = max(one_sided_distance(mesh, ref), one_sided_distance(ref, mesh))
    assert hausdorff < 0.5  # voxels
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(ref.volume, rel=0.01)


def test_sphere_geometry_and_outward_normals():
    n = 48
    volume = grid(n, sphere)
    mesh = ours(volume, 0.0)
    voxel = 2.0 / (n - 1)
    centre = np.full(3, 1.0 + (n - 1) / 2)  # the padded grid's centre, in index units
    radii = np.linalg.norm(mesh.vertices - centre, axis=1) * voxel
    assert np.abs(radii - 0.6).max() < 0.01
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - centre)
    assert (outward > 0).all()
    assert mesh.volume * voxel**3 == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.01)


def test_white_noise_stays_watertight():
    # Every ambiguous face and loop shape occurs here; the surface must still close up.
    noise = torch.rand(24, 24, 24, generator=torch.Generator().manual_seed(3))
    volume = torch.nn.functional.pad(noise, (1,) * 6, value=-1.0)
    mesh, ref = ours(volume, 0.5), reference(volume, 0.5)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    # Lewiner adds cell-centre vertices in more ambiguous cases than we do.
    assert abs(len(mesh.vertices) - len(ref.vertices)) <= 0.03 * len(ref.vertices)
    assert mesh.volume == pytest.approx(ref.volume, rel=0.02)


def test_vertices_lie_on_crossing_edges_at_the_interpolated_level():
    volume = grid(16, smooth_noise(5))
    vertices, faces = marching_cubes(volume, 0.1)
    # Sample the volume trilinearly at each vertex: on a grid edge that is linear interpolation.
    grid_input = vertices.flip(-1) / (torch.tensor(volume.shape).flip(0) - 1) * 2 - 1
    sampled = torch.nn.functional.grid_sample(
        volume[None, None], grid_input[None, None, None], align_corners=True
    ).flatten()
    assert torch.allclose(sampled, torch.full_like(sampled, 0.1), atol=1e-5)
    # Each vertex has exactly one non-integer coordinate (it sits on an edge).
    fractional = (vertices - vertices.round()).abs() > 1e-6
    assert (fractional.sum(dim=1) <= 1).all()
    assert faces.min() >= 0 and faces.max() < len(vertices)


def test_table_simple_cases():
    triangles, centres = triangle_table()
    assert (triangles[0] == -1).all() and (triangles[255 * 64] == -1).all()
    # Corner 0 alone inside: one triangle on its three edges (x: 0, y: 4, z: 8), wound x -> y -> z.
    assert triangles[1 * 64, 0].tolist() == [0, 4, 8]
    assert (triangles[1 * 64, 1:] == -1).all()
    # Corners 0 and 1 inside (the x = 0..1 edge): a quad on the four y/z edges at both ends.
    assert ((triangles[3 * 64] >= 0).all(axis=1)).sum() == 2
    assert triangles.max() < CENTRE + 2 and not centres[: 64 * 3].any()


def test_empty_and_full_volumes():
    for value in (-1.0, 1.0):
        vertices, faces = marching_cubes(torch.full((5, 5, 5), value), 0.0)
        assert vertices.shape == (0, 3) and faces.shape == (0, 3)


def test_half_precision_volume_is_accepted():
    volume = grid(20, sphere)
    full = marching_cubes(volume, 0.0)
    half = marching_cubes(volume.half(), 0.0)
    assert len(half[0]) == pytest.approx(len(full[0]), rel=0.02)


@pytest.mark.parametrize(
    ("volume", "message"),
    [
        (torch.zeros(4, 4), "3D grid"),
        (torch.zeros(1, 4, 4), "3D grid"),
        (torch.zeros(4, 4, 4, dtype=torch.int32), "floating-point"),
        (torch.tensor(float("nan")).expand(3, 3, 3), "NaN"),
    ],
)
def test_bad_input(volume, message):
    with pytest.raises(ValueError, match=message):
        marching_cubes(volume, 0.0)


def test_resolve_method():
    assert resolve_method("auto", "cpu") == "skimage"
    assert resolve_method("auto", torch.device("cuda", 0)) == "torch"  # no GPU needed to decide
    assert resolve_method("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match=r"mesh\.marching_cubes must be one of auto, skimage, torch"):
        resolve_method("mcubes", "cpu")


def test_extract_mesh_dispatches_to_torch():
    def ball(points):
        density = torch.relu(10.0 + 100.0 * (0.4 - points.norm(dim=-1)))
        return density, points.abs().clamp(max=1.0)

    config = MeshConfig(resolution=32, coarse_resolution=16, min_component_fraction=0.0)
    reference_mesh = extract_mesh(ball, dataclasses.replace(config, marching_cubes="skimage"))
    mesh = extract_mesh(ball, dataclasses.replace(config, marching_cubes="torch"))
    assert len(mesh.vertices) == len(reference_mesh.vertices)
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.volume == pytest.approx(reference_mesh.volume, rel=0.01)
    np.testing.assert_allclose(
        np.sort(mesh.vertices, axis=0), np.sort(reference_mesh.vertices, axis=0), atol=1e-5
    )
    with pytest.raises(ConfigError, match=r"mesh\.marching_cubes"):
        extract_mesh(ball, dataclasses.replace(config, marching_cubes="gpu"))
