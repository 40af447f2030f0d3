"""Hash-grid encoding: shapes, gradients, dense vs hashed levels, interpolation exactness."""

from __future__ import annotations

import torch

from att3d.config import EncodingConfig
from att3d.encoding import HashGridEncoding, interpolation_plan, level_resolutions, level_table_sizes

CONFIG = EncodingConfig(
    levels=4, features_per_level=2, log2_table_size=10, base_resolution=4, growth_factor=2.0
)


def test_levels_and_table_sizes() -> None:
    assert level_resolutions(CONFIG) == [4, 8, 16, 32]
    # (R+1)^3 = 125, 729 fit the 1024-entry table densely; finer levels are hashed.
    assert level_table_sizes(CONFIG) == [125, 729, 1024, 1024]


def test_output_shape_and_gradient() -> None:
    enc = HashGridEncoding(CONFIG, bases=3)
    x = torch.rand(50, 3)
    out = enc(x)
    assert out.shape == (50, 4, 3 * 2)
    out.square().sum().backward()
    for table in enc.tables:
        assert table.grad is not None and torch.isfinite(table.grad).all()
        assert table.grad.abs().sum() > 0


def test_dense_level_indices_are_collision_free() -> None:
    r = 4
    coords = torch.stack(torch.meshgrid(*[torch.arange(r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    index, weight = interpolation_plan(coords.float() / r * 0.999999, r, (r + 1) ** 3)
    # At (almost) exact vertices one corner carries all the weight; each vertex gets its own slot.
    dominant = index.gather(1, weight.argmax(1, keepdim=True))[:, 0]
    assert dominant.unique().numel() == (r + 1) ** 3


def test_hashed_level_stays_in_table() -> None:
    index, weight = interpolation_plan(torch.rand(1000, 3), 64, 1024)
    assert index.min() >= 0 and index.max() < 1024
    torch.testing.assert_close(weight.sum(1), torch.ones(1000))


def test_interpolation_is_trilinear() -> None:
    """A table holding a linear function of the vertex coordinates reproduces it exactly in between."""
    r = 4
    enc = HashGridEncoding(
        EncodingConfig(levels=1, features_per_level=1, base_resolution=r, log2_table_size=10)
    )
    coords = torch.stack(torch.meshgrid(*[torch.arange(r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    index, _ = interpolation_plan(coords.float() / r, r, (r + 1) ** 3)
    values = (coords.float() / r) @ torch.tensor([1.0, -2.0, 0.5])
    with torch.no_grad():
        enc.tables[0].zero_()
        # Every vertex's value into its dense slot (the vertex corner of its own cell or the last cell).
        for i, vertex in enumerate(coords):
            slot = vertex[0] + (r + 1) * (vertex[1] + (r + 1) * vertex[2])
            enc.tables[0][slot, 0] = values[i]
    x = torch.rand(200, 3)
    expected = x @ torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(enc(x)[:, 0, 0], expected, atol=1e-5, rtol=0)
    assert index.shape == (coords.shape[0], 8)
