"""Coarse-to-fine batched extraction against the reference path (att3d.meshing.dense.extract_mesh), on
the CPU."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
import trimesh

from att3d.config import ConfigError, EncodingConfig, FieldConfig, MeshConfig
from att3d.field import AmortizedField
from att3d.meshing.coarse_to_fine import CoarseToFineMesher, CoarseToFineOptions
from att3d.meshing.dense import extract_mesh
from att3d.meshing.errors import NoSurfaceError
from att3d.meshing.export import mesh_to_bytes
from att3d.meshing.query import BatchFieldQuery, TorchBatchQuery, query_chunked

from conftest import assert_same_mesh
from gltf_validator import assert_valid_glb

TEXT_DIM = 16


def tiny_field(density_gain: float = 40.0, density_bias: float = 0.0) -> AmortizedField:
    """A small field whose surface follows the hash grid (not just the density blob): the MLP's density
    output is amplified so the random grid features shape a lumpy surface."""
    torch.manual_seed(0)
    config = FieldConfig(
        encoding=EncodingConfig(levels=4, log2_table_size=10, base_resolution=4, growth_factor=1.5),
        text_dim=TEXT_DIM,
        num_bases=4,
        hidden_dim=16,
        blob_density=4.0,
        blob_radius=0.8,
        density_bias=density_bias,
    )
    field = AmortizedField(config).eval()
    with torch.no_grad():
        field.head.mlp[-1].weight[0] *= density_gain
        field.head.mlp[-1].bias[0] = 0.0
    return field


@pytest.fixture(scope="module")
def field() -> AmortizedField:
    return tiny_field()


@pytest.fixture(scope="module")
def embeddings() -> torch.Tensor:
    return torch.randn(2, TEXT_DIM, generator=torch.Generator().manual_seed(1))


MESH = MeshConfig(resolution=24, coarse_resolution=16, marching_cubes="torch", min_component_fraction=0.02)


def test_same_surface_as_the_reference_path(field, embeddings):
    # block=1 queries every fine sample; coarse-to-fine blocks are checked against the reference below.
    meshes = CoarseToFineMesher(field, MESH, CoarseToFineOptions(dtype="float32", block=1)).meshes(embeddings)
    assert len(meshes) == 2
    for embedding, mesh in zip(embeddings, meshes, strict=True):
        ref = extract_mesh(field.materialize(embedding), MESH)
        assert len(ref.vertices) > 1000  # a lumpy surface, not the bare blob
        assert_same_mesh(mesh, ref)
        assert mesh.is_watertight and mesh.volume > 0
        # The normals computed on the device agree with the winding (and so point outward).
        from_faces = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False).vertex_normals
        assert np.einsum("ij,ij->i", mesh.vertex_normals, from_faces).min() > 0.5


def test_queried_region_grows_where_the_surface_leaves_it(field, embeddings, monkeypatch):
    import att3d.meshing.coarse_to_fine as coarse_to_fine

    sizes = []
    original = coarse_to_fine.query_chunked

    def counting(query, points, counts, chunk):
        sizes.append(len(points))
        return original(query, points, counts, chunk)

    monkeypatch.setattr(coarse_to_fine, "query_chunked", counting)
    options = CoarseToFineOptions(dtype="float32", block=4, dilation=0)
    meshes = CoarseToFineMesher(field, MESH, options).meshes(embeddings)
    # coarse, block corners, straddling blocks, >= 1 growth round, vertex albedo
    assert len(sizes) >= 5
    for embedding, mesh in zip(embeddings, meshes, strict=True):
        assert_same_mesh(mesh, extract_mesh(field.materialize(embedding), MESH))


def test_coarse_pass_is_refined_like_the_fine_one(field, embeddings, monkeypatch):
    import att3d.meshing.coarse_to_fine as coarse_to_fine

    sizes = []
    original = coarse_to_fine.query_chunked

    def counting(query, points, counts, chunk):
        sizes[-1].append(len(points))
        return original(query, points, counts, chunk)

    monkeypatch.setattr(coarse_to_fine, "query_chunked", counting)
    reference = extract_mesh(field.materialize(embeddings[0]), MESH)
    for coarse_block in (1, 4):
        sizes.append([])
        options = CoarseToFineOptions(dtype="float32", coarse_block=coarse_block)
        assert_same_mesh(CoarseToFineMesher(field, MESH, options).meshes(embeddings[:1])[0], reference)
    n = MESH.coarse_resolution
    assert sizes[0][0] == n**3  # coarse_block=1: every coarse sample at once, as extract_mesh queries them
    assert sizes[1][0] == 5**3  # coarse_block=4: the block corners 0, 4, 8, 12, 15 along each axis first
    assert sum(sizes[1]) < sum(sizes[0])


def test_floaters_are_dropped_as_in_the_reference(embeddings):
    # A rougher field makes small separate pieces; both paths must keep the same ones.
    field = tiny_field(density_gain=300.0, density_bias=-2.0)
    config = MeshConfig(
        resolution=32, coarse_resolution=16, marching_cubes="torch", min_component_fraction=0.3
    )
    mesh = CoarseToFineMesher(field, config, CoarseToFineOptions(dtype="float32", block=1)).meshes(
        embeddings[:1]
    )[0]
    ref = extract_mesh(field.materialize(embeddings[0]), config)
    unfiltered = extract_mesh(
        field.materialize(embeddings[0]), dataclasses.replace(config, min_component_fraction=0.0)
    )
    assert len(unfiltered.faces) > len(ref.faces)  # the case really has floaters
    assert_same_mesh(mesh, ref)


def test_batch_matches_single_prompts_and_groups(field, embeddings):
    batched = CoarseToFineMesher(field, MESH, CoarseToFineOptions(dtype="float32")).meshes(embeddings)
    # One prompt per marching-cubes group, with the queries still batched.
    grouped = CoarseToFineMesher(field, MESH, CoarseToFineOptions(dtype="float32", max_stack_samples=1))
    single = CoarseToFineMesher(field, MESH, CoarseToFineOptions(dtype="float32"))
    for i, mesh in enumerate(grouped.meshes(embeddings)):
        assert_same_mesh(mesh, batched[i])
    assert_same_mesh(single.meshes(embeddings[1:])[0], batched[1])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_keeps_the_occupancy(field, embeddings, dtype):
    axis = torch.linspace(-1, 1, 24)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    counts = [len(points)] * len(embeddings)
    level = MESH.density_threshold
    exact, _ = TorchBatchQuery(field, embeddings, torch.float32)(points.repeat(2, 1), counts)
    approx, albedo = TorchBatchQuery(field, embeddings, getattr(torch, dtype))(points.repeat(2, 1), counts)
    inside, inside_approx = exact > level, approx > level
    iou = (inside & inside_approx).sum() / (inside | inside_approx).sum()
    assert iou > 0.98
    assert approx.dtype == torch.float32 and albedo.dtype == torch.float32


def test_glb_export_is_valid(field, embeddings):
    mesh = CoarseToFineMesher(field, MESH, CoarseToFineOptions(dtype="float32")).meshes(embeddings[:1])[0]
    data = mesh_to_bytes(mesh, "glb")
    assert_valid_glb(data)
    loaded = trimesh.load(trimesh.util.wrap_as_stream(data), file_type="glb", force="mesh")
    assert len(loaded.faces) == len(mesh.faces)


def test_no_surface_is_reported_per_batch_item(field, embeddings):
    empty = tiny_field(density_gain=1.0, density_bias=-100.0)
    mesher = CoarseToFineMesher(empty, MESH, CoarseToFineOptions(dtype="float32"))
    with pytest.raises(NoSurfaceError, match="batch item 0: no surface found"):
        mesher.meshes(embeddings)
    results = mesher.meshes(embeddings, return_exceptions=True)
    assert all(isinstance(r, NoSurfaceError) for r in results)


def test_query_chunked_matches_one_call(field, embeddings):
    query = BatchFieldQuery(field, embeddings, torch.float32)
    points = torch.rand(101, 3) * 2 - 1
    counts = [37, 64]
    density, albedo = query(points, counts)
    chunked_density, chunked_albedo = query_chunked(query, points, counts, chunk=10)
    torch.testing.assert_close(chunked_density, density)
    torch.testing.assert_close(chunked_albedo, albedo)
    # Each run really uses its own prompt's grid.
    first, _ = query(points[:37], [37, 0])
    torch.testing.assert_close(first, density[:37])
    other, _ = query(points[:37], [0, 37])
    assert not torch.allclose(other, first)


def test_bad_input(field):
    mesher = CoarseToFineMesher(field, MESH)
    with pytest.raises(ValueError, match=r"embeddings must be \[P, 16\]"):
        mesher.meshes(torch.zeros(3))
    with pytest.raises(ValueError, match=r"^block: must be >= 1"):
        CoarseToFineMesher(field, MESH, CoarseToFineOptions(block=0))
    with pytest.raises(ValueError, match=r"^coarse_block: must be >= 1, got 0"):
        CoarseToFineMesher(field, MESH, CoarseToFineOptions(coarse_block=0))
    with pytest.raises(
        ValueError, match=r"^dtype: must be one of auto, float32, bfloat16, float16, got 'int8'"
    ):
        CoarseToFineMesher(field, MESH, CoarseToFineOptions(dtype="int8"))
    with pytest.raises(ValueError, match="eval mode"):
        TorchBatchQuery(AmortizedField(field.config), torch.zeros(1, TEXT_DIM), torch.float32)
    query = BatchFieldQuery(field, torch.zeros(2, TEXT_DIM), torch.float32)
    with pytest.raises(ValueError, match="got 1 point runs for 2 prompts"):
        query(torch.zeros(4, 3), [4])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dilation": -1}, r"^dilation: must be >= 0, got -1$"),
        ({"chunk_points": 0}, r"^chunk_points: must be >= 1, got 0$"),
        ({"max_stack_samples": 0}, r"^max_stack_samples: must be >= 1, got 0$"),
        ({"block": 2.5}, r"^block: expected an integer, got 2\.5$"),
        ({"compile": "yes"}, r"^compile: expected true/false, got 'yes'$"),
    ],
)
def test_options_are_checked_where_declared(change, message):
    with pytest.raises(ConfigError, match=message):
        CoarseToFineOptions(**change)


def test_auto_dtype():
    options = CoarseToFineOptions()
    assert options.resolved_dtype(torch.device("cpu")) == torch.float32
    assert options.resolved_dtype(torch.device("cuda")) == torch.float16


def test_component_labels_match_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from att3d.meshing.components import component_labels

    generator = torch.Generator().manual_seed(0)
    vertices = 400
    # Random triangles inside 6 disjoint vertex ranges (plus untouched vertices): several components each.
    bounds = torch.linspace(0, vertices - 20, 7).long().tolist()
    faces = torch.cat(
        [torch.randint(lo, hi, (40, 3), generator=generator) for lo, hi in itertools.pairwise(bounds)]
    )
    labels = component_labels(faces, vertices).numpy()
    edges = torch.cat([faces[:, :2], faces[:, 1:]]).numpy()
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(vertices, vertices))
    _, reference = connected_components(graph, directed=False)
    # Our label is the smallest vertex id of the component.
    smallest = {c: np.flatnonzero(reference == c).min() for c in np.unique(reference)}
    np.testing.assert_array_equal(labels, [smallest[c] for c in reference])
    assert len(np.unique(labels)) > 7
