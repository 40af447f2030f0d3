"""The CPU rewrites of issue #16 leave the meshes unchanged: the active-sample mask built axis by axis
equals the 8-gather one, and a tiny model meshed with the previous encoder, mask and head gives the same
vertices and faces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from att3d import encoding
from att3d.field import FieldHead, trunc_exp
from att3d.generate import Generator
from att3d.meshing.grid import BlockRefinement, axis_blocks, block_corners


def eight_gather_samples(state: BlockRefinement) -> torch.Tensor:
    """The previous ``BlockRefinement.samples``: one full-grid gather per (left/right)^3 block pick."""
    mask = torch.zeros_like(state.queried)
    for pick in range(8):
        ix, iy, iz = (state.blocks[axis][pick >> axis & 1] for axis in range(3))
        mask |= state.active[ix[:, None, None], iy[None, :, None], iz[None, None, :]]
    return mask


def out_of_place_head(self: FieldHead, features: torch.Tensor, points: torch.Tensor):
    """The previous ``FieldHead.forward``."""
    raw = self.mlp(features)
    density_raw = raw[..., 0] + self.config.density_bias + self.blob(points)
    if self.config.density_activation == "trunc_exp":
        density = trunc_exp(density_raw)
    else:
        density = F.softplus(density_raw)
    return density, torch.sigmoid(raw[..., 1:])


@pytest.mark.parametrize("shape", [(37, 29, 16), (9, 5, 2)])
@pytest.mark.parametrize("block", [1, 3, 4])
def test_axis_by_axis_mask_equals_the_eight_gathers(shape, block) -> None:
    corners = [block_corners(n, block, torch.device("cpu")) for n in shape]
    blocks = [axis_blocks(c, n) for c, n in zip(corners, shape, strict=True)]
    gen = torch.Generator().manual_seed(block)
    active = torch.rand(*(len(c) - 1 for c in corners), generator=gen) < 0.15
    active.view(-1)[0], active.view(-1)[-1] = True, False
    state = BlockRefinement(blocks, active, torch.zeros(shape, dtype=torch.bool), torch.zeros(shape))
    mask = state.samples()
    assert mask.any() and not mask.all()
    assert torch.equal(mask, eight_gather_samples(state))


def test_mesh_equals_the_previous_implementation(tiny_checkpoint, monkeypatch) -> None:
    generator = Generator.from_checkpoint(tiny_checkpoint)
    config = generator.config.mesh
    assert config.grid_query == "coarse_to_fine"
    new = generator.generate("a red cube", config)
    monkeypatch.setattr(encoding, "encode_levels", encoding.reference_encode_levels)
    monkeypatch.setattr(BlockRefinement, "samples", eight_gather_samples)
    monkeypatch.setattr(FieldHead, "forward", out_of_place_head)
    old = generator.generate("a red cube", config)
    assert len(new.faces) > 100
    np.testing.assert_array_equal(new.vertices, old.vertices)
    np.testing.assert_array_equal(new.faces, old.faces)
    np.testing.assert_array_equal(new.visual.vertex_colors, old.visual.vertex_colors)
