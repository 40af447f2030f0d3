"""Hash-grid encoding: shapes, gradients, dense vs hashed levels, interpolation exactness, and parity of
the corner-major int32 implementation with the previous one (``reference_encode_levels``)."""

from __future__ import annotations

import pytest
import torch

from att3d.config import EncodingConfig
from att3d.encoding import (
    HashGridEncoding,
    _corner_plan,  # the plan with prompt offsets (internal)
    encode_levels,
    interpolate_levels,
    interpolation_plan,
    level_resolutions,
    level_table_sizes,
    reference_encode_levels,
)

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
    assert index.shape == weight.shape == (8, (r + 1) ** 3) and index.dtype == torch.int32
    dominant = index.gather(0, weight.argmax(0, keepdim=True))[0]
    assert dominant.unique().numel() == (r + 1) ** 3


def test_hashed_level_stays_in_table() -> None:
    index, weight = interpolation_plan(torch.rand(1000, 3), 64, 1024)
    assert index.min() >= 0 and index.max() < 1024
    torch.testing.assert_close(weight.sum(0), torch.ones(1000))


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
    assert index.shape == (8, coords.shape[0])


# ---- parity with the previous implementation ----------------------------------------------------------

# Default-like levels: dense coarse levels, hashed fine ones with R * T above 2**16 (the int32 reduction
# of the primes matters), and points outside [0, 1]^3 (clamped).
PARITY = EncodingConfig(
    levels=6, features_per_level=2, log2_table_size=12, base_resolution=5, growth_factor=1.9
)


def parity_inputs(width: int, prompts: int = 1, points: int = 3000, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    sizes = level_table_sizes(PARITY)
    tables = [torch.randn(prompts * size, width, generator=gen).requires_grad_() for size in sizes]
    x = torch.rand(points, 3, generator=gen) * 1.2 - 0.1
    prompt = torch.randint(0, prompts, (points,), generator=gen) if prompts > 1 else None
    return tables, x, level_resolutions(PARITY), sizes, prompt


@pytest.mark.parametrize("width, prompts", [(2, 1), (2, 5), (32, 1), (6, 3)])
def test_values_and_table_gradients_match_the_reference(width, prompts) -> None:
    tables, x, resolutions, sizes, prompt = parity_inputs(width, prompts)
    new = encode_levels(tables, x, resolutions, sizes, prompt)
    ref = reference_encode_levels(tables, x, resolutions, sizes, prompt)
    assert new.shape == ref.shape == (len(x), len(sizes), width)
    # Same products summed in the same order (bit-identical with x86 PyTorch builds; the tolerance leaves
    # room for a build whose bmm fuses multiply-adds).
    torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-6)
    upstream = torch.randn_like(ref)
    grads = torch.autograd.grad(new, tables, upstream)
    ref_grads = torch.autograd.grad(ref, tables, upstream)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        # Scatter-adds in another order: equal up to float32 summation rounding.
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-5)


def test_point_gradients_match_the_reference() -> None:
    tables, x, resolutions, sizes, prompt = parity_inputs(2, prompts=2)
    tables = [t.detach() for t in tables]
    x_new, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(len(x), len(sizes), 2)
    (grad,) = torch.autograd.grad(encode_levels(tables, x_new, resolutions, sizes, prompt), x_new, upstream)
    (ref,) = torch.autograd.grad(
        reference_encode_levels(tables, x_ref, resolutions, sizes, prompt), x_ref, upstream
    )
    assert grad.abs().sum() > 0
    torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-4)


def test_no_grad_and_reduced_precision_match_the_reference() -> None:
    tables, x, resolutions, sizes, prompt = parity_inputs(2, prompts=3)
    with torch.no_grad():
        torch.testing.assert_close(
            encode_levels(tables, x, resolutions, sizes, prompt),
            reference_encode_levels(tables, x, resolutions, sizes, prompt),
            rtol=1e-6,
            atol=1e-6,
        )
        half = [t.to(torch.bfloat16) for t in tables]
        new = encode_levels(half, x, resolutions, sizes, prompt)
        assert new.dtype == torch.float32
        ref = reference_encode_levels(half, x, resolutions, sizes, prompt)
        torch.testing.assert_close(new, ref, rtol=1e-6, atol=1e-6)


def test_batched_tables_match_one_grid_per_prompt() -> None:
    gen = torch.Generator().manual_seed(3)
    sizes = level_table_sizes(PARITY)
    tables = [torch.randn(4, size, 2, generator=gen) for size in sizes]
    x = torch.rand(4, 500, 3, generator=gen)
    resolutions = level_resolutions(PARITY)
    batched = interpolate_levels(tables, x, resolutions, sizes)
    assert batched.shape == (4, 500, len(sizes), 2)
    for p in range(4):
        one = interpolate_levels([t[p] for t in tables], x[p], resolutions, sizes)
        assert torch.equal(batched[p], one)


def test_int32_reduction_of_the_primes_equals_the_int64_hash() -> None:
    """Hashed level, R * T near 2**31: int32 with primes mod T gives the full int64 hash's slots."""
    resolution, size = 2**10 - 1, 2**21  # R * T < 2**31: int32
    x = torch.rand(2000, 3, generator=torch.Generator().manual_seed(4))
    index, _ = interpolation_plan(x, resolution, size)
    assert index.dtype == torch.int32
    base = (x * resolution).floor().clamp(0, resolution - 1).long()
    primes = (1, 2654435761, 805459861)
    for corner in range(8):
        c = [base[:, a] + (corner >> (2 - a) & 1) for a in range(3)]
        expected = ((c[0] * primes[0]) ^ (c[1] * primes[1]) ^ (c[2] * primes[2])) & (size - 1)
        assert torch.equal(index[corner].long(), expected)
    # R * T past 2**31: int64, same slots.
    index64, _ = interpolation_plan(x, 2**11, size)
    assert index64.dtype == torch.int64 and index64.max() < size


def test_large_batched_offsets_fall_back_to_int64() -> None:
    """Stacked tables whose last rows lie past 2**31 get int64 indices, offset by ``prompt * size``."""
    x = torch.rand(3, 50, generator=torch.Generator().manual_seed(5))
    for resolution, size in [(8, 9**3), (64, 2**12)]:  # a dense and a hashed level
        local, _ = _corner_plan(x, resolution, size)
        rows = 2**31 // size + 2
        prompt = torch.tensor([0, rows - 1]).repeat(25)
        index, _ = _corner_plan(x, resolution, size, prompt, rows)
        assert local.dtype == torch.int32 and index.dtype == torch.int64
        assert torch.equal(index, local.long() + prompt * size)
        assert index.max() >= 2**31
