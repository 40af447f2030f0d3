"""The numba hash-grid kernel: bit-identical to the PyTorch encoding, and a clean fallback without it."""

from __future__ import annotations

import logging

import pytest
import torch

from att3d import encoding, hashgrid_cpu
from att3d.config import EncodingConfig, FieldConfig
from att3d.field import AmortizedField
from att3d.meshing import query

needs_kernel = pytest.mark.skipif(hashgrid_cpu.status() is not None, reason=str(hashgrid_cpu.status()))


def _tables(config: EncodingConfig, prompts: int, width: int, dtype=torch.float32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randn(prompts * size, width, generator=generator).to(dtype)
        for size in encoding.level_table_sizes(config)
    ]


@needs_kernel
@pytest.mark.parametrize("prompts", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_features_equal_the_pytorch_encoding_bit_for_bit(prompts, dtype):
    # Dense and hashed levels (log2 table size 10: levels above resolution 9 hash), 3 features.
    config = EncodingConfig(levels=6, features_per_level=3, log2_table_size=10, base_resolution=4)
    resolutions, sizes = encoding.level_resolutions(config), encoding.level_table_sizes(config)
    dense = [(r + 1) ** 3 <= s for r, s in zip(resolutions, sizes, strict=True)]
    assert any(dense) and not all(dense)
    tables = _tables(config, prompts, 3, dtype)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(5000, 3, generator=generator) * 1.2 - 0.1  # some points outside [0, 1]: clamped
    x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.25, 1.0], [1.0, 0.0, 0.5]])
    prompt = torch.randint(0, prompts, (len(x),), generator=generator) if prompts > 1 else None
    with torch.no_grad():
        expected = encoding.encode_levels(tables, x, resolutions, sizes, prompt)
        reference = encoding.reference_encode_levels(tables, x, resolutions, sizes, prompt)
    packed = hashgrid_cpu.PackedTables(tables, resolutions, sizes)
    features = hashgrid_cpu.encode(packed, x, prompt)
    assert features.shape == (len(x), len(resolutions), 3) and features.is_contiguous()
    assert torch.equal(features, expected)
    torch.testing.assert_close(features, reference, rtol=1e-6, atol=1e-6)


def test_packing_rejects_a_hashed_level_of_odd_size():
    with pytest.raises(ValueError, match="power-of-two"):
        hashgrid_cpu.PackedTables([torch.zeros(100, 2)], [8], [100])


@needs_kernel
def test_batch_query_with_the_kernel_equals_the_pytorch_query():
    field = AmortizedField(FieldConfig(text_dim=8, encoding=EncodingConfig(log2_table_size=10))).eval()
    embeddings = torch.randn(2, 8, generator=torch.Generator().manual_seed(2))
    points = torch.rand(3000, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1
    counts = [1000, 2000]
    kernel = query.BatchFieldQuery(field, embeddings, torch.float32, implementation="numba")
    reference = query.BatchFieldQuery(field, embeddings, torch.float32, implementation="torch")
    assert kernel.implementation == "numba" and reference.implementation == "torch"
    assert query.resolve_implementation("auto", "cpu") == "numba"
    for got, want in zip(kernel(points, counts), reference(points, counts), strict=True):
        assert torch.equal(got, want)


def test_a_failed_compile_falls_back_to_pytorch_with_one_log_line(monkeypatch, caplog):
    def broken():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(hashgrid_cpu, "_compile", broken)
    monkeypatch.setattr(hashgrid_cpu, "_tried", False)
    monkeypatch.setattr(hashgrid_cpu, "_kernel", None)
    monkeypatch.setattr(hashgrid_cpu, "_status", "not loaded")
    with caplog.at_level(logging.WARNING, logger="att3d.hashgrid_cpu"):
        assert not hashgrid_cpu.warm()
        assert query.resolve_implementation("auto", "cpu") == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "the numba hash-grid kernel is unavailable (ImportError: No module named 'numba'); "
        "using the PyTorch encoding"
    ]
    with pytest.raises(RuntimeError, match="numba hash-grid kernel is unavailable"):
        query.resolve_implementation("numba", "cpu")
    with pytest.raises(RuntimeError, match="unavailable"):
        hashgrid_cpu.encode(None, torch.zeros(1, 3))  # type: ignore[arg-type]


def test_the_kernel_is_refused_off_the_cpu():
    with pytest.raises(RuntimeError, match="CPU only"):
        query.resolve_implementation("numba", "cuda")
