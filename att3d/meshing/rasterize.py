"""Rasterize meshes with nvdiffrast in the project's camera conventions (for a mesh stage of surface
refinement): the images line up with the volume renderer's (``att3d.render``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from att3d.cameras import Cameras
from att3d.meshing.cuda_extensions import nvdiffrast_status, raster_context, require


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
    require(nvdiffrast_status())
    import nvdiffrast.torch as dr

    device = vertices.device
    homogeneous = torch.cat([vertices.float(), torch.ones_like(vertices[:, :1], dtype=torch.float32)], dim=1)
    clip = torch.einsum("bij,nj->bni", projection_matrices(cameras.to(device)), homogeneous).contiguous()
    tri = faces.to(device=device, dtype=torch.int32).contiguous()
    rast, _ = dr.rasterize(raster_context(device), clip, tri, resolution=[size, size])
    rgb, _ = dr.interpolate(colors.float()[None].contiguous(), rast, tri)
    alpha = (rast[..., 3:] > 0).float()
    bg = torch.tensor(background, dtype=torch.float32, device=device)
    rgb = rgb * alpha + bg * (1.0 - alpha)
    if antialias:
        rgb = dr.antialias(rgb.contiguous(), rast, clip, tri)
    # nvdiffrast's first row is clip y = -1, the bottom of the image.
    rgb, alpha = rgb.flip(1), alpha.flip(1)
    return rgb.permute(0, 3, 1, 2), alpha.permute(0, 3, 1, 2)
