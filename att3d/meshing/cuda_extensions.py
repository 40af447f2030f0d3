"""Optional CUDA extensions (tiny-cuda-nn, nvdiffrast): whether each can run here, and why not.

Neither package is imported at module top, so everything imports on a machine without a GPU build; the
pure-PyTorch paths stay the reference, and every CUDA path has a parity test against it (skipped, with the
reason from :func:`tcnn_status` / :func:`nvdiffrast_status`, where the package or a GPU is missing).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from att3d.field import FieldHead


@functools.cache
def _import_status(module: str) -> str | None:
    """``None`` if ``module`` imports, else why not (cached: a failed CUDA-extension import is slow)."""
    try:
        __import__(module)
    except Exception as error:  # a broken build raises OSError/RuntimeError, not only ImportError
        return f"{module} is not importable ({type(error).__name__}: {error})"
    return None


def tcnn_status() -> str | None:
    """``None`` when tiny-cuda-nn can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "tinycudann needs a CUDA device and none is available"
    return _import_status("tinycudann")


def nvdiffrast_status() -> str | None:
    """``None`` when nvdiffrast's CUDA rasterizer can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "nvdiffrast needs a CUDA device and none is available"
    return _import_status("nvdiffrast.torch")


def require(status: str | None) -> None:
    """Raise ``RuntimeError(status)`` unless the extension can run (``status is None``)."""
    if status is not None:
        raise RuntimeError(status)


def fused_mlp_unsupported_reason(head: FieldHead) -> str | None:
    """Why tcnn's FullyFusedMLP cannot reproduce ``head`` (``None`` if it could)."""
    layers = list(head.mlp)
    if any(isinstance(m, torch.nn.Linear) and m.bias is not None for m in layers):
        return "the head's linear layers have biases; tcnn's fused MLPs have none"
    if any(isinstance(m, torch.nn.SiLU) for m in layers):
        return "the head uses SiLU, which tcnn's fused MLPs do not offer"
    widths = {m.out_features for m in layers[:-1] if isinstance(m, torch.nn.Linear)}
    if not widths <= {16, 32, 64, 128}:
        return f"hidden widths {sorted(widths)} are not among tcnn's fused widths 16, 32, 64, 128"
    return None


@functools.cache
def raster_context(device: torch.device) -> Any:
    """nvdiffrast's CUDA rasterizer context for ``device`` (one per device, created on first use)."""
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=device)
