"""Amortized field: mapping-network mixing equals the materialized single-prompt grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from att3d.config import ConfigError, EncodingConfig, FieldConfig
from att3d.field import AmortizedField, trunc_exp


def tiny_config(**overrides) -> FieldConfig:
    enc = EncodingConfig(
        levels=4, features_per_level=2, log2_table_size=10, base_resolution=4, growth_factor=2.0
    )
    return FieldConfig(encoding=enc, text_dim=8, num_bases=3, hidden_dim=16, **overrides)


@pytest.fixture()
def field_and_embeddings() -> tuple[AmortizedField, torch.Tensor]:
    torch.manual_seed(0)
    field = AmortizedField(tiny_config()).eval()
    return field, torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)


@pytest.mark.parametrize("points_per_prompt", [4, 2000])  # both mixing strategies (features / tables)
def test_materialize_equals_mixed_evaluation(field_and_embeddings, points_per_prompt) -> None:
    field, emb = field_and_embeddings
    points = torch.rand(3, points_per_prompt, 3) * 2 - 1
    density, albedo = field(points, emb)
    for i in range(3):
        d, a = field.materialize(emb[i])(points[i])
        torch.testing.assert_close(d, density[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, albedo[i], rtol=1e-5, atol=1e-6)


def test_output_ranges_and_shapes(field_and_embeddings) -> None:
    field, emb = field_and_embeddings
    density, albedo = field(torch.rand(3, 10, 3) * 2 - 1, emb)
    assert density.shape == (3, 10) and albedo.shape == (3, 10, 3)
    assert (density >= 0).all() and ((albedo >= 0) & (albedo <= 1)).all()


def test_density_blob_makes_centre_denser_than_corners(field_and_embeddings) -> None:
    field, emb = field_and_embeddings
    density, _ = field(torch.tensor([[[0.0, 0.0, 0.0], [0.9, 0.9, 0.9]]]), emb[:1])
    assert density[0, 0] > 100 * density[0, 1]


def test_different_prompts_give_different_fields(field_and_embeddings) -> None:
    field, emb = field_and_embeddings
    points = torch.rand(1, 100, 3) * 2 - 1
    d0, _ = field(points, emb[:1])
    d1, _ = field(points, emb[1:2])
    assert not torch.allclose(d0, d1)


def test_spectral_norm_bounds_the_text_to_grid_map() -> None:
    """Normalized W2 has spectral norm mixing_gain * sqrt(rows): entry RMS <= gain per unit v."""
    torch.manual_seed(0)
    field = AmortizedField(tiny_config(mixing_gain=1.0)).eval()
    k, f = 3, 2
    w2 = torch.cat([t.detach().view(-1, k, f).permute(0, 2, 1).reshape(-1, k) for t in field.bases.tables])
    scaled = w2 * field.output_scale().detach() / w2.shape[0] ** 0.5
    assert abs(torch.linalg.matrix_norm(scaled, ord=2).item() - 1.0) < 1e-2  # power iteration


def test_gradients_reach_mapping_bases_and_head(field_and_embeddings) -> None:
    field, emb = field_and_embeddings
    field.train()
    density, albedo = field(torch.rand(3, 64, 3) * 2 - 1, emb)
    (density.mean() + albedo.mean()).backward()
    named = dict(field.named_parameters())
    assert any("mapping" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items())
    assert all(t.grad is not None for t in field.bases.tables)
    assert all(p.grad is not None for p in field.head.parameters())


def test_trunc_exp_gradient_is_clamped() -> None:
    x = torch.tensor([0.0, 100.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert x.grad[1] == pytest.approx(torch.exp(torch.tensor(15.0)).item(), rel=1e-5)


def test_unknown_density_activation_is_rejected() -> None:
    message = r"^field\.density_activation: must be one of trunc_exp, softplus, got 'relu'"
    with pytest.raises(ConfigError, match=message):
        AmortizedField(tiny_config(density_activation="relu"))


@pytest.mark.parametrize("activation", ["trunc_exp", "softplus"])
def test_head_in_place_activations_give_the_autograd_values(activation) -> None:
    """Without autograd the head works in place; its outputs equal those of the out-of-place pass."""
    torch.manual_seed(0)
    field = AmortizedField(tiny_config(density_activation=activation))
    features, points = torch.randn(500, 8), torch.rand(500, 3) * 2 - 1
    density, albedo = field.head(features, points)
    assert density.requires_grad  # the out-of-place pass
    with torch.no_grad():
        fast_density, fast_albedo = field.head(features, points)
    assert torch.equal(fast_density, density.detach()) and torch.equal(fast_albedo, albedo.detach())
    # The reference: the layers applied one after the other, out of place.
    raw = field.head.mlp(features).detach()
    density_raw = raw[:, 0] + field.config.density_bias + field.head.blob(points)
    expected = (
        torch.exp(density_raw.clamp(max=15.0)) if activation == "trunc_exp" else F.softplus(density_raw)
    )
    assert torch.equal(fast_density, expected)
    assert torch.equal(fast_albedo, torch.sigmoid(raw[:, 1:]))


@pytest.mark.parametrize("activation", ["trunc_exp", "softplus"])
@pytest.mark.parametrize("chunk", [64, 100, 1000])
def test_head_infer_in_chunks_equals_the_forward_pass(activation, chunk) -> None:
    """Inference in cache-sized chunks (the meshing path on the CPU) gives the forward pass's values bit
    for bit, including a last chunk of one point (513 = 8 x 64 + 1)."""
    torch.manual_seed(1)
    field = AmortizedField(tiny_config(density_activation=activation, hidden_layers=3))
    features, points = torch.randn(513, 8), torch.rand(513, 3) * 2 - 1
    with torch.no_grad():
        density, albedo = field.head(features.clone(), points)
    fast_density, fast_albedo = field.head.infer(features, points, chunk=chunk)
    assert fast_density.shape == (513,) and fast_albedo.shape == (513, 3)
    assert torch.equal(fast_density, density) and torch.equal(fast_albedo, albedo)
    assert not fast_density.requires_grad


def test_head_infer_without_hidden_layers_and_in_double_precision() -> None:
    """A head with no hidden layer still works; float64 features take the plain forward pass."""
    torch.manual_seed(2)
    field = AmortizedField(tiny_config(hidden_layers=0))
    features, points = torch.randn(33, 8), torch.rand(33, 3) * 2 - 1
    with torch.no_grad():
        expected = field.head(features.clone(), points)
    assert all(
        torch.equal(a, b) for a, b in zip(field.head.infer(features, points, chunk=16), expected, strict=True)
    )
    double = field.head.to(torch.float64)
    density, _ = double.infer(features.double(), points.double())
    assert density.dtype == torch.float64
