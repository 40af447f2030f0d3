"""The error both extraction paths raise when a field has nothing to mesh (light: no torch import)."""

from __future__ import annotations

import numpy as np


class NoSurfaceError(ValueError):
    """The field has no point with density above the iso-level, so there is nothing to mesh."""


def no_surface_error(density: np.ndarray, threshold: float, where: str) -> NoSurfaceError:
    """The error for a ``density`` grid with no sample above ``threshold``, naming the grid and its max."""
    return NoSurfaceError(
        f"no surface found: max density {float(density.max()):.4g} on the {where} does not exceed "
        f"the threshold {threshold:.4g} (mesh.density_threshold)"
    )
