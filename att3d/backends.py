"""Optional CUDA backends: tiny-cuda-nn for the hash grid, nvdiffrast for rasterization.

Neither package is imported at module top (nothing here needs a GPU build to import); each is imported on
first use and :func:`tcnn_status` / :func:`nvdiffrast_status` say why one is unusable. The pure-PyTorch
paths stay the reference: every function here has a parity test against it (skipped, with the reason,
where the package or a GPU is missing).

- **tiny-cuda-nn hash grid** (:class:`TcnnBatchQuery`, chosen by ``att3d.fast_inference.build_query`` when
  ``encoding.backend`` resolves to ``tcnn``). tcnn places grid vertex ``j`` of a level at
  ``(j - 0.5) / scale`` and derives all level resolutions from one geometric series, while
  ``att3d.encoding`` puts vertex ``i`` at ``i / R_l`` with ``R_l = floor(base * growth^l)``. One
  multi-level tcnn encoding therefore cannot hold our grids; one single-level encoding per level can:
  base resolution ``R_l + 1`` and scale 1 give ``scale = R_l``, the input is shifted by ``-0.5 / R_l``,
  and the dense-vs-hash rule, the dense index order and the hash (coherent primes 1, 2654435761,
  805459861, xor) are the same as ours, so the materialized tables are copied in unchanged.
- **FullyFusedMLP does not fit** the field's head: tcnn's fused MLPs have no bias terms and no SiLU
  activation, and the head uses both (``att3d.field.FieldHead``), so the head stays in PyTorch (cuBLAS,
  reduced precision under autocast). :func:`fused_mlp_unsupported_reason` says so for a given head.
- **nvdiffrast**: :func:`bake_uv_texture` rasterizes a mesh in UV space (the GPU counterpart of
  ``att3d.mesh``'s texture baker, same texel conventions) and :func:`rasterize_mesh` renders meshes with
  the project's camera conventions (``att3d.cameras``), for a mesh stage of surface refinement.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from att3d.cameras import Cameras
from att3d.fast_inference import evaluate_head
from att3d.field import AmortizedField, FieldHead

AlbedoFn = Callable[[Tensor], Tensor]
"""World points ``[N, 3]`` → albedo ``[N, 3]`` in [0, 1]."""


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


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


def _require(status: str | None) -> None:
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


# --------------------------------------------------------------------------------------------------
# tiny-cuda-nn hash grid
# --------------------------------------------------------------------------------------------------


class TcnnLevel:
    """One level of an ``att3d.encoding`` grid as a single-level tcnn encoding (see module docstring)."""

    def __init__(self, resolution: int, table_size: int, features: int, log2_table_size: int) -> None:
        import tinycudann as tcnn

        self.resolution = resolution
        self.table_size = table_size
        self.features = features
        self.encoding = tcnn.Encoding(
            n_input_dims=3,
            encoding_config={
                "otype": "Grid",
                "type": "Hash",
                "n_levels": 1,
                "n_features_per_level": features,
                "log2_hashmap_size": log2_table_size,
                "base_resolution": resolution + 1,
                "per_level_scale": 1.0,
                "interpolation": "Linear",
            },
            dtype=torch.float32,
        )
        # tcnn rounds a level's entries up to a multiple of 8; the extra entries are never read.
        if self.encoding.params.numel() < table_size * features:
            raise RuntimeError(
                f"tcnn level (resolution {resolution}) has {self.encoding.params.numel()} parameters, "
                f"fewer than the {table_size * features} of the att3d table: incompatible tcnn version"
            )

    @torch.no_grad()
    def load(self, table: Tensor) -> None:
        """Copy one prompt's table ``[T, F]`` into the encoding."""
        params = self.encoding.params.data
        params.zero_()
        params[: table.numel()] = table.reshape(-1).to(params.dtype)

    def __call__(self, x: Tensor) -> Tensor:
        """Features ``[N, F]`` of points ``x [N, 3]`` in [0, 1]^3 (as ``att3d.encoding`` clamps them)."""
        return self.encoding(x.clamp(0.0, 1.0) - 0.5 / self.resolution).float()


class TcnnBatchQuery:
    """A ``BatchQuery`` (``att3d.fast_inference``) whose grid lookups run in tiny-cuda-nn.

    Each level's tcnn encoding is loaded with one prompt's materialized table at a time, so a batch costs
    ``prompts × levels`` fused kernels; the head runs in PyTorch in ``dtype``.
    """

    def __init__(self, field: AmortizedField, embeddings: Tensor, dtype: torch.dtype) -> None:
        _require(tcnn_status())
        if field.training:
            raise ValueError("the field must be in eval mode (training mode updates spectral-norm state)")
        self.field = field
        self.dtype = dtype
        self.num_prompts = embeddings.shape[0]
        config = field.config.encoding
        with torch.no_grad():
            self.tables = field.mixed_tables(field.mixing_weights(embeddings))  # [P, T_l, F] per level
        self.levels = [
            TcnnLevel(r, s, config.features_per_level, config.log2_table_size)
            for r, s in zip(field.bases.resolutions, field.bases.table_sizes, strict=True)
        ]

    @torch.no_grad()
    def __call__(self, points: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
        if len(counts) != self.num_prompts:
            raise ValueError(f"got {len(counts)} point runs for {self.num_prompts} prompts")
        bound = self.field.config.bound
        x = (points + bound) / (2.0 * bound)
        features = torch.empty(len(points), len(self.levels), self.levels[0].features, device=points.device)
        start = 0
        for prompt, count in enumerate(counts):
            if count:
                for level, grid in enumerate(self.levels):
                    grid.load(self.tables[level][prompt])
                    features[start : start + count, level] = grid(x[start : start + count])
            start += count
        return evaluate_head(self.field, features.reshape(len(points), -1), points, self.dtype)


# --------------------------------------------------------------------------------------------------
# nvdiffrast
# --------------------------------------------------------------------------------------------------


@functools.cache
def _raster_context(device: torch.device) -> Any:
    import nvdiffrast.torch as dr

    return dr.RasterizeCudaContext(device=device)


def bake_uv_texture(
    vertices: np.ndarray,
    faces: np.ndarray,
    uv: np.ndarray,
    albedo: AlbedoFn,
    size: int,
    device: torch.device | str = "cuda",
) -> np.ndarray:
    """Bake ``albedo`` into a ``size × size`` RGB uint8 texture by rasterizing the mesh in UV space.

    Same conventions as ``att3d.mesh``'s CPU baker: texel ``(row, col)`` has its centre at
    ``u = (col + 0.5) / size``, ``v = 1 - (row + 0.5) / size`` (image rows top to bottom, ``v`` bottom to
    top); a covered texel gets the albedo at the 3D point its centre maps to; uncovered texels copy the
    nearest covered texel, so no background colour bleeds into filtered lookups.
    """
    _require(nvdiffrast_status())
    import nvdiffrast.torch as dr
    from scipy import ndimage

    device = torch.device(device)
    uv_t = torch.as_tensor(uv, dtype=torch.float32, device=device)
    # Clip y = 1 - 2v puts image row 0 (v = 1) at nvdiffrast's first output row (clip y = -1).
    clip = torch.stack(
        [uv_t[:, 0] * 2 - 1, 1 - uv_t[:, 1] * 2, torch.zeros_like(uv_t[:, 0]), torch.ones_like(uv_t[:, 0])],
        dim=-1,
    )
    tri = torch.as_tensor(faces, dtype=torch.int32, device=device).contiguous()
    rast, _ = dr.rasterize(_raster_context(device), clip[None].contiguous(), tri, resolution=[size, size])
    world = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    points, _ = dr.interpolate(world[None].contiguous(), rast, tri)
    covered = rast[0, ..., 3] > 0
    image = torch.zeros(size, size, 3, device=device)
    with torch.no_grad():
        image[covered] = albedo(points[0][covered]).float().clamp(0.0, 1.0)
    image_np, covered_np = image.cpu().numpy(), covered.cpu().numpy()
    if covered_np.any():
        nearest = ndimage.distance_transform_edt(~covered_np, return_distances=False, return_indices=True)
        image_np = image_np[nearest[0], nearest[1]]
    return np.round(image_np * 255.0).astype(np.uint8)


def projection_matrices(cameras: Cameras, near: float = 0.1, far: float = 100.0) -> Tensor:
    """World → clip matrices ``[B, 4, 4]`` (OpenGL) for the cameras' pose and vertical field of view."""
    f = 1.0 / torch.tan(0.5 * torch.deg2rad(cameras.fovy.float()))
    proj = torch.zeros(len(cameras), 4, 4, device=cameras.c2w.device)
    proj[:, 0, 0] = f
    proj[:, 1, 1] = f
    proj[:, 2, 2] = (far + near) / (near - far)
    proj[:, 2, 3] = 2 * far * near / (near - far)
    proj[:, 3, 2] = -1.0
    return proj @ torch.linalg.inv(cameras.c2w.float())


def rasterize_mesh(
    vertices: Tensor,
    faces: Tensor,
    colors: Tensor,
    cameras: Cameras,
    size: int,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    antialias: bool = True,
) -> tuple[Tensor, Tensor]:
    """Render a vertex-coloured mesh: rgb ``[B, 3, size, size]`` and coverage ``[B, 1, size, size]``.

    Pixel ``(i, j)`` is the one ``att3d.cameras.camera_rays`` shoots through (row 0 at the top), so the
    images line up with the volume renderer's. Differentiable with respect to vertices and colours.
    """
    _require(nvdiffrast_status())
    import nvdiffrast.torch as dr

    device = vertices.device
    homogeneous = torch.cat([vertices.float(), torch.ones_like(vertices[:, :1], dtype=torch.float32)], dim=1)
    clip = torch.einsum("bij,nj->bni", projection_matrices(cameras.to(device)), homogeneous).contiguous()
    tri = faces.to(device=device, dtype=torch.int32).contiguous()
    rast, _ = dr.rasterize(_raster_context(device), clip, tri, resolution=[size, size])
    rgb, _ = dr.interpolate(colors.float()[None].contiguous(), rast, tri)
    alpha = (rast[..., 3:] > 0).float()
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    rgb = rgb * alpha + bg * (1.0 - alpha)
    if antialias:
        rgb = dr.antialias(rgb.contiguous(), rast, clip, tri)
    # nvdiffrast's first row is clip y = -1, the bottom of the image.
    rgb, alpha = rgb.flip(1), alpha.flip(1)
    return rgb.permute(0, 3, 1, 2), alpha.permute(0, 3, 1, 2)
