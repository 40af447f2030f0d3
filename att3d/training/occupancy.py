"""Empty-space skipping for training: a coarse occupancy grid over the scene box (Instant-NGP's idea).

Most ray samples of a training render lie in empty space in front of and around the object, yet each
costs a field query forward and backward. The grid keeps, per cell, a decaying maximum of the density the
field has shown there for recently drawn prompts; the renderer then queries the field only at samples in
occupied cells and treats the others as empty (density 0). Skipped samples would have contributed
``alpha < 1 - exp(-threshold * delta)`` each, so the rendered image changes by less than that.

One grid serves all prompts (the union of their occupancy): an amortized field draws different prompts
every step, and a per-prompt grid for thousands of prompts would be stale most of the time. Cells are
re-evaluated every ``update_every`` steps at jittered positions, with the step's own prompts, and the
occupied set is dilated by one cell so a surface that grows is still sampled. The grid's values are part of
the training state (saved with checkpoints), so a resumed run is bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from att3d.config import OccupancyConfig


class OccupancyGrid:
    """A ``resolution^3`` grid over ``[-bound, bound]^3`` of recent maximum densities."""

    def __init__(self, config: OccupancyConfig, bound: float, device: torch.device) -> None:
        self.config = config
        self.bound = bound
        size = config.resolution
        # Until the first update every cell is occupied: nothing is skipped.
        self.values = torch.full((size, size, size), float("inf"), device=device)
        self._occupied = torch.ones(size, size, size, dtype=torch.bool, device=device)

    @torch.no_grad()
    def update(
        self,
        density_fn: Callable[[Tensor], Tensor],
        prompts: int,
        generator: torch.Generator,
        distributed: bool = False,
    ) -> None:
        """Re-evaluate every cell at a jittered point per prompt: ``density_fn(points [P, M, 3])`` gives
        density ``[P, M]``; a cell keeps the larger of its decayed value and the new maximum."""
        size = self.config.resolution
        cell = 2 * self.bound / size
        axis = torch.arange(size, dtype=torch.float32)
        corners = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
        jitter = torch.rand((prompts, size**3, 3), generator=generator)
        points = (-self.bound + (corners + jitter) * cell).to(self.values.device)
        density = density_fn(points).amax(dim=0).reshape(size, size, size)
        finite = torch.where(torch.isfinite(self.values), self.values, torch.zeros_like(self.values))
        self.values = torch.maximum(finite * self.config.decay, density.float())
        if distributed:  # every rank skips the same space
            dist.all_reduce(self.values, op=dist.ReduceOp.MAX)
        occupied = (self.values > self.config.threshold).float()[None, None]
        self._occupied = F.max_pool3d(occupied, kernel_size=3, stride=1, padding=1)[0, 0] > 0

    def contains(self, points: Tensor) -> Tensor:
        """Whether each point ``[..., 3]`` lies in an occupied cell (points outside the box: no)."""
        size = self.config.resolution
        scaled = (points + self.bound) / (2 * self.bound) * size
        inside = ((scaled >= 0) & (scaled < size)).all(dim=-1)
        index = scaled.floor().long().clamp_(0, size - 1)
        flat = (index[..., 0] * size + index[..., 1]) * size + index[..., 2]
        return self._occupied.reshape(-1)[flat] & inside

    @property
    def occupied_fraction(self) -> float:
        return float(self._occupied.float().mean())

    def state(self) -> dict[str, Tensor]:
        return {"occupancy.values": self.values.cpu()}

    def load_state(self, tensors: dict[str, Tensor]) -> None:
        if "occupancy.values" not in tensors:
            return
        values = tensors["occupancy.values"].to(self.values.device)
        if values.shape != self.values.shape:
            return  # another grid size: start over (nothing skipped until the next update)
        self.values = values
        occupied = (values > self.config.threshold).float()[None, None]
        self._occupied = F.max_pool3d(occupied, kernel_size=3, stride=1, padding=1)[0, 0] > 0
