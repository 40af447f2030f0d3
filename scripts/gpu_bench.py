#!/usr/bin/env python3
"""GPU benchmark of the inference and training paths, as one self-contained command (no network).

Run on a GPU machine (from the repository root; see scripts/gpu_bench.sh, which installs carried wheels)::

    bash scripts/gpu_bench.sh --out gpu_bench.md

or on the CPU, small sizes only (what tests/test_gpu_bench.py runs)::

    python scripts/gpu_bench.py --device cpu --quick --out /tmp/bench.md

It prints ONE table (and writes it to ``--out``, rewritten after every section so partial results survive):

- **prompt → GLB**: text embedding → mesh → GLB bytes with ``att3d.meshing.coarse_to_fine.CoarseToFineMesher``
  at 128³ and 256³, batches of 1, 8 and 32, p50/p95 latency per batch over >= ``--prompts`` prompts and
  meshes/s; plus the reference path (``att3d.meshing.dense.extract_mesh`` with scikit-image, one prompt at a
  time) at 128³, and CoarseToFineMesher's block sizes (``block``, ``coarse_block``) against querying every
  sample;
- **precision**: occupancy IoU of the float16/bfloat16 query against float32 on a dense grid;
- **marching cubes**: ``att3d.meshing.marching_cubes`` on the device vs scikit-image on the host, same grid;
- **training**: one ShapesWorld step (render + SDS with the bundled prior, random weights if none is
  bundled, + Adam); one SDS step at batch 8 × 64×64 renders in fp16 with randomly initialized full-size
  Stable Diffusion 2.1 (UNet + VAE, configs below) and DeepFloyd IF-I-XL (UNet), alone and as part of a
  full training step; peak GPU memory for each row.

Text embeddings are random unit vectors, or precomputed MiniLM embeddings from ``--embeddings`` (a
safetensors file with an ``embeddings`` tensor ``[N, 384]``; make one on a machine with the bundled
MiniLM: ``python scripts/gpu_bench.py --write-embeddings .whl/embeddings.safetensors``). Nothing here
imports MiniLM, xatlas or fastapi unless ``--write-embeddings`` is given.

Robustness: every section runs in try/except (errors are printed and the run goes on), output is flushed
line by line, and a global time guard (``--budget-s``) skips sections that would not fit; a section that
runs long stops its loops at the deadline and reports what it measured.

Wheels the GPU image lacks (diffusers, trimesh; importlib_metadata is listed by diffusers), downloaded on a
machine with network into the git-ignored ``.whl/`` folder::

    python3 -m pip download --no-deps -d .whl diffusers==0.42.1 trimesh==5.2.0 importlib_metadata
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 -d .whl xxhash==4.1.0   # optional: faster GLB export
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import math
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a checkout without installing the package

import numpy as np  # noqa: E402
import torch  # noqa: E402

from att3d.atomic import write_text_atomic  # noqa: E402  (standard library only)

# --------------------------------------------------------------------------------------------------
# Published model configurations (diffusers constructor arguments), so no weights are needed
# --------------------------------------------------------------------------------------------------

SD21_UNET = {
    # stabilityai/stable-diffusion-2-1-base, unet/config.json (865.9 M parameters)
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}
SD21_VAE = {
    # stabilityai/stable-diffusion-2-1-base, vae/config.json (83.7 M parameters)
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD21_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}
IF_I_XL_UNET = {
    # DeepFloyd/IF-I-XL-v1.0 stage I UNet (diffusers conversion of model_channels 704, channel_mult
    # 1,2,3,4, 3 res blocks, attention at 32/16/8 px, T5-XXL 4096 -> 2560 projection): 4.28 B parameters,
    # the model card's 4.3 B.
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 6,
    "layers_per_block": 3,
    "block_out_channels": (704, 1408, 2112, 2816),
    "down_block_types": (
        "ResnetDownsampleBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
        "SimpleCrossAttnDownBlock2D",
    ),
    "up_block_types": (
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "SimpleCrossAttnUpBlock2D",
        "ResnetUpsampleBlock2D",
    ),
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "cross_attention_dim": 2560,
    "encoder_hid_dim": 4096,
    "encoder_hid_dim_type": "text_proj",
    "attention_head_dim": 64,
    "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64,
    "act_fn": "gelu",
    "cross_attention_norm": "group_norm",
    "resnet_time_scale_shift": "scale_shift",
    "upcast_attention": False,
    "use_linear_projection": False,
}
IF_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_schedule": "squaredcos_cap_v2",
    "variance_type": "learned_range",
    "prediction_type": "epsilon",
}
TEXT_TOKENS = 77
"""Token count of the CLIP (SD) and T5 (IF) conditioning."""

# Tiny stand-ins with the same block types, for --quick (CPU tests).
QUICK_SD_UNET = {
    **SD21_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": (2, 4),
}
QUICK_SD_VAE = {
    **SD21_VAE,
    "block_out_channels": (32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "sample_size": 16,
}
QUICK_IF_UNET = {
    **IF_I_XL_UNET,
    "sample_size": 16,
    "layers_per_block": 1,
    "block_out_channels": (32, 64),
    "down_block_types": ("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
    "up_block_types": ("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "cross_attention_dim": 32,
    "encoder_hid_dim": 48,
    "attention_head_dim": 8,
    "addition_embed_type_num_heads": 2,
}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Problem sizes of a run (full on a GPU, tiny with --quick)."""

    resolutions: tuple[int, ...]
    batches: tuple[int, ...]
    prompts: int
    coarse_resolution: int
    reference_prompts: int
    precision_resolution: int
    mc_resolution: int
    precision_prompts: int
    train_steps: int
    train_prompts: int
    train_image: int
    samples_per_ray: int
    warmup_steps: int
    sds_steps: int
    sds_batch: int
    render_size: int
    sd_unet: dict
    sd_vae: dict
    if_unet: dict
    small_field: bool = False
    """Use a 4-level, 2^12-entry field instead of the default (quick CPU runs)."""
    training_rows: bool = True
    """Also time full training steps (render + SDS + Adam) with the SD and IF priors."""


FULL = Sizes(
    resolutions=(128, 256),
    batches=(1, 8, 32),
    prompts=50,
    coarse_resolution=48,
    reference_prompts=10,
    precision_resolution=128,
    mc_resolution=256,
    precision_prompts=8,
    train_steps=20,
    train_prompts=4,  # TrainConfig defaults: 4 prompts x 1 view at 32 px, 48 samples per ray
    train_image=32,
    samples_per_ray=48,
    warmup_steps=2,
    sds_steps=10,
    sds_batch=8,
    render_size=64,
    sd_unet=SD21_UNET,
    sd_vae=SD21_VAE,
    if_unet=IF_I_XL_UNET,
)
QUICK = Sizes(
    resolutions=(16,),
    batches=(1, 2),
    prompts=2,
    coarse_resolution=12,
    reference_prompts=1,
    precision_resolution=16,
    mc_resolution=24,
    precision_prompts=2,
    train_steps=1,
    train_prompts=1,
    train_image=8,
    samples_per_ray=8,
    warmup_steps=0,
    sds_steps=1,
    sds_batch=1,
    render_size=16,
    sd_unet=QUICK_SD_UNET,
    sd_vae=QUICK_SD_VAE,
    if_unet=QUICK_IF_UNET,
    small_field=True,
    training_rows=False,
)


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclasses.dataclass
class Row:
    """One line of the result table."""

    benchmark: str
    setting: str
    p50: str = ""
    p95: str = ""
    throughput: str = ""
    memory: str = ""
    notes: str = ""


COLUMNS = ("benchmark", "setting", "p50", "p95", "throughput", "peak GPU memory", "notes")


def table(rows: list[Row], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (row.benchmark, row.setting, row.p50, row.p95, row.throughput, row.memory, row.notes)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# --------------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------------


class Clock:
    """Wall-clock budget of the whole run."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def peak_memory(device: torch.device, out: list[str]) -> Iterator[None]:
    """Appends the peak GPU memory allocated inside the block (``n/a`` on the CPU) to ``out``."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    yield
    if device.type == "cuda":
        synchronize(device)
        out.append(f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    else:
        out.append("n/a (CPU)")


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# Model and embeddings
# --------------------------------------------------------------------------------------------------


def field_config(small: bool):
    """The default field config, or for quick CPU runs the tiny one of configs/tiny_test.yaml."""
    from att3d.config import FieldConfig, TrainConfig, load_config

    if not small:
        return FieldConfig()
    return load_config(TrainConfig, REPO / "configs" / "tiny_test.yaml").model.field


def load_field(checkpoint: str | None, device: torch.device, small: bool = False):
    """The amortized field: a checkpoint's weights, or the default config with seed 0 (a density blob)."""
    from att3d.config import ModelConfig, from_dict
    from att3d.field import AmortizedField

    if checkpoint:
        from att3d.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        field = AmortizedField(from_dict(ModelConfig, ckpt.config).field)
        field.load_state_dict(ckpt.tensors)
        return field.eval().to(device), f"checkpoint {checkpoint}"
    torch.manual_seed(0)
    name = "small config (quick)" if small else "default config"
    return AmortizedField(field_config(small)).eval().to(device), f"{name}, seeded (untrained)"


def load_embeddings(path: str | None, count: int, dim: int) -> tuple[torch.Tensor, str]:
    if path:
        from safetensors.torch import load_file

        embeddings = load_file(path)["embeddings"].float()
        if embeddings.dim() != 2 or embeddings.shape[1] != dim:
            raise ValueError(f"{path}: embeddings must be [N, {dim}], got {tuple(embeddings.shape)}")
        reps = math.ceil(count / len(embeddings))
        return embeddings.repeat(reps, 1)[:count], f"MiniLM embeddings from {path}"
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(count, dim, generator=generator), dim=1)
    return embeddings, "random unit vectors"


def write_embeddings(path: str) -> None:
    """Encode every ShapesWorld object's canonical prompt with the bundled MiniLM (needs it installed)."""
    from safetensors.torch import save_file

    from att3d.shapes import all_objects
    from att3d.text import get_text_encoder

    prompts = [obj.canonical_prompt for obj in all_objects()]
    embeddings = get_text_encoder("minilm").encode(prompts).float().contiguous()
    save_file({"embeddings": embeddings}, path, metadata={"prompts": "\n".join(prompts)})
    log(f"wrote {len(prompts)} embeddings {tuple(embeddings.shape)} to {path}")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    device: torch.device
    sizes: Sizes
    clock: Clock
    field: torch.nn.Module
    embeddings: torch.Tensor
    compile: bool


def section_environment(ctx: Context) -> list[Row]:
    from att3d.meshing.cuda_extensions import nvdiffrast_status, tcnn_status
    from att3d.meshing.query import resolve_implementation

    name = (
        torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else platform.processor() or "CPU"
    )
    cap = (
        ".".join(map(str, torch.cuda.get_device_capability(ctx.device))) if ctx.device.type == "cuda" else ""
    )
    notes = (
        f"torch {torch.__version__}, python {platform.python_version()}, "
        f"grid backend {resolve_implementation(ctx.field.config.encoding.backend)}; "
        f"tcnn: {tcnn_status() or 'available'}; nvdiffrast: {nvdiffrast_status() or 'available'}"
    )
    return [Row("environment", f"{name} {cap}".strip(), notes=notes)]


def section_glb_latency(ctx: Context) -> list[Row]:
    """Prompt → GLB bytes through CoarseToFineMesher, per resolution and batch size."""
    from att3d.config import MeshConfig
    from att3d.meshing.coarse_to_fine import CoarseToFineMesher, CoarseToFineOptions
    from att3d.meshing.export import mesh_to_bytes

    rows = []
    for resolution in ctx.sizes.resolutions:
        config = MeshConfig(resolution=resolution, coarse_resolution=ctx.sizes.coarse_resolution)
        mesher = CoarseToFineMesher(ctx.field, config, CoarseToFineOptions(compile=ctx.compile), ctx.device)
        for batch in ctx.sizes.batches:
            if ctx.clock.left() < 20:
                rows.append(
                    Row("prompt → GLB", f"{resolution}³, batch {batch}", notes="skipped: time budget")
                )
                continue
            batches = math.ceil(ctx.sizes.prompts / batch)
            latencies, mesh_times, faces, failures = [], [], [], 0
            memory: list[str] = []

            def run(index: int, batch=batch, mesher=mesher, faces=faces, mesh_times=mesh_times) -> None:
                nonlocal failures
                start = (index * batch) % (len(ctx.embeddings) - batch + 1)
                t0 = time.perf_counter()
                meshes = mesher.meshes(ctx.embeddings[start : start + batch], return_exceptions=True)
                t1 = time.perf_counter()
                for mesh in meshes:
                    if isinstance(mesh, Exception):
                        failures += 1
                        continue
                    mesh_to_bytes(mesh, "glb")
                    faces.append(len(mesh.faces))
                mesh_times.append(t1 - t0)

            for _ in range(min(ctx.sizes.warmup_steps, 1)):
                run(0)  # warm-up: kernels, the marching-cubes table, allocator
            mesh_times.clear()
            faces.clear()
            with peak_memory(ctx.device, memory):
                for i in range(batches):
                    latencies.append(timed(lambda i=i: run(i + 1), ctx.device))
                    if ctx.clock.left() < 10:
                        break
            p50, p95 = percentiles(latencies)
            done = len(latencies) * batch
            rows.append(
                Row(
                    "prompt → GLB",
                    f"{resolution}³, batch {batch}",
                    ms(p50),
                    ms(p95),
                    f"{done / sum(latencies):.1f} meshes/s",
                    memory[0],
                    f"{done} prompts in {len(latencies)} batches; meshing p50 {ms(np.median(mesh_times))}, "
                    f"GLB export the rest; median {int(np.median(faces)) if faces else 0} faces"
                    + (f"; {failures} without surface" if failures else ""),
                )
            )
            log(f"prompt → GLB {resolution}³ batch {batch}: p50 {ms(p50)}, p95 {ms(p95)}")
    return rows


def section_reference(ctx: Context) -> list[Row]:
    """The reference path for comparison: extract_mesh (scikit-image) + GLB, one prompt at a time."""
    from att3d.config import MeshConfig
    from att3d.meshing.dense import extract_mesh
    from att3d.meshing.export import mesh_to_bytes

    resolution = ctx.sizes.resolutions[0]
    config = MeshConfig(
        resolution=resolution, coarse_resolution=ctx.sizes.coarse_resolution, marching_cubes="skimage"
    )

    def run(i: int) -> None:
        field = ctx.field.materialize(ctx.embeddings[i])
        mesh_to_bytes(extract_mesh(field, config, ctx.field.config.bound, ctx.device), "glb")

    for _ in range(min(ctx.sizes.warmup_steps, 1)):
        run(0)
    times, memory = [], []
    with peak_memory(ctx.device, memory):
        for i in range(ctx.sizes.reference_prompts):
            times.append(timed(lambda i=i: run(i + 1), ctx.device))
            if ctx.clock.left() < 10:
                break
    p50, p95 = percentiles(times)
    return [
        Row(
            "prompt → GLB, reference",
            f"{resolution}³, batch 1",
            ms(p50),
            ms(p95),
            f"{len(times) / sum(times):.1f} meshes/s",
            memory[0],
            f"extract_mesh with scikit-image, {len(times)} prompts",
        )
    ]


def section_precision(ctx: Context) -> list[Row]:
    """Occupancy IoU of reduced-precision queries against float32 on a dense grid over the scene box."""
    from att3d.config import MeshConfig
    from att3d.meshing.query import TorchBatchQuery, query_chunked

    n = ctx.sizes.precision_resolution
    prompts = ctx.embeddings[: ctx.sizes.precision_prompts].to(ctx.device)
    axis = torch.linspace(-1, 1, n, device=ctx.device)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    counts = [len(points)] * len(prompts)
    level = MeshConfig().density_threshold

    def occupancy(dtype: torch.dtype) -> torch.Tensor:
        query = TorchBatchQuery(ctx.field, prompts, dtype)
        density, _ = query_chunked(query, points.repeat(len(prompts), 1), counts, 1 << 21)
        return (density > level).view(len(prompts), -1)

    exact = occupancy(torch.float32)
    rows = []
    for name, dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        approx = occupancy(dtype)
        iou = (exact & approx).sum(1).float() / (exact | approx).sum(1).clamp_min(1).float()
        rows.append(
            Row(
                "precision",
                f"{name} vs float32, {n}³ grid",
                notes=f"occupancy IoU min {iou.min():.5f}, mean {iou.mean():.5f} over {len(prompts)} prompts",
            )
        )
    return rows


def section_marching_cubes(ctx: Context) -> list[Row]:
    """att3d.meshing.marching_cubes on the device vs scikit-image on the host, same grid (a wavy sphere)."""
    from skimage.measure import marching_cubes as skimage_marching_cubes

    from att3d.meshing.marching_cubes import marching_cubes

    n = ctx.sizes.mc_resolution
    axis = torch.linspace(-1, 1, n, device=ctx.device)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    radius = (x**2 + y**2 + z**2).sqrt()
    volume = 0.6 + 0.05 * torch.sin(8 * x) * torch.sin(8 * y) - radius
    host = volume.cpu().numpy()
    marching_cubes(volume, 0.0)  # builds the table once
    times = [timed(lambda: marching_cubes(volume, 0.0), ctx.device) for _ in range(5)]
    vertices, _ = marching_cubes(volume, 0.0)
    start = time.perf_counter()
    reference, _, _, _ = skimage_marching_cubes(host, level=0.0)
    skimage_s = time.perf_counter() - start
    p50, p95 = percentiles(times)
    return [
        Row(
            "marching cubes",
            f"{n}³, att3d on {ctx.device.type}",
            ms(p50),
            ms(p95),
            notes=f"{len(vertices)} vertices vs scikit-image {len(reference)} in {ms(skimage_s)} (host)",
        )
    ]


def _training_step_factory(ctx: Context, prior, image_size: int, prompts: int, text: torch.Tensor, uncond):
    """A closure running one training step: render prompts × 1 view, SDS against ``prior``, Adam."""
    from att3d.cameras import sample_cameras
    from att3d.config import RenderConfig, SDSConfig, TrainConfig
    from att3d.field import AmortizedField
    from att3d.priors.base import PriorCondition
    from att3d.render import render
    from att3d.sds import sds_loss
    from att3d.training.setup import build_optimizer
    from att3d.training.step import single_power_iteration

    config = TrainConfig()
    field = AmortizedField(field_config(ctx.sizes.small_field)).to(ctx.device).train()
    optimizer = build_optimizer(field, config.optim)
    render_config = dataclasses.replace(
        RenderConfig(), image_size=image_size, samples_per_ray=ctx.sizes.samples_per_ray
    )
    generator = torch.Generator().manual_seed(0)
    embeddings = ctx.embeddings[:prompts].to(ctx.device)

    def step() -> None:
        cameras = sample_cameras(prompts, config.cameras, generator=generator).to(ctx.device)
        out = render(
            single_power_iteration(field, field, embeddings),
            cameras,
            render_config,
            num_prompts=prompts,
            generator=generator,
            bound=config.model.field.bound,
        )
        cond = PriorCondition(text=text, cameras=cameras)
        out_uncond = PriorCondition(text=uncond, cameras=cameras)
        loss = sds_loss(prior, out.rgb, cond, out_uncond, SDSConfig(), generator=generator).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _sds_only_factory(ctx: Context, prior, image_size: int, batch: int, text: torch.Tensor, uncond):
    """A closure running SDS alone on leaf renders (prior cost only: encode + guided UNet + backward)."""
    from att3d.config import SDSConfig
    from att3d.priors.base import PriorCondition
    from att3d.sds import sds_loss

    images = torch.rand(batch, 3, image_size, image_size, device=ctx.device, requires_grad=True)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        loss = sds_loss(
            prior, images, PriorCondition(text), PriorCondition(uncond), SDSConfig(), generator=generator
        )
        loss.loss.backward()
        images.grad = None

    return step


def _time_steps(ctx: Context, step: Callable[[], None], steps: int) -> tuple[list[float], str]:
    for _ in range(ctx.sizes.warmup_steps):
        step()
    memory: list[str] = []
    times = []
    with peak_memory(ctx.device, memory):
        for _ in range(steps):
            times.append(timed(step, ctx.device))
            if ctx.clock.left() < 10:
                break
    return times, memory[0]


def _step_row(benchmark: str, setting: str, times: list[float], memory: str, notes: str) -> Row:
    p50, p95 = percentiles(times)
    return Row(benchmark, setting, ms(p50), ms(p95), f"{len(times) / sum(times):.2f} steps/s", memory, notes)


def section_shapes_training(ctx: Context) -> list[Row]:
    from att3d.priors.shapes import DEFAULT_PRIOR_DIR, ShapesPrior

    if (DEFAULT_PRIOR_DIR / "model_index.json").is_file():
        prior, which = ShapesPrior.from_pretrained(device=ctx.device), "bundled prior"
    else:
        prior, which = ShapesPrior.from_config(device=ctx.device), "random prior (none bundled yet)"
    prompts, size = ctx.sizes.train_prompts, ctx.sizes.train_image
    text = ctx.embeddings[:prompts].to(ctx.device)
    step = _training_step_factory(ctx, prior, size, prompts, text, prior.unconditional_text(prompts))
    times, memory = _time_steps(ctx, step, ctx.sizes.train_steps)
    return [
        _step_row(
            "training step, ShapesWorld",
            f"{prompts} prompts × 1 view, {size}² px, {ctx.sizes.samples_per_ray} samples/ray, fp32",
            times,
            memory,
            f"{which}; render + SDS + Adam, {len(times)} steps",
        )
    ]


def _kind(ctx: Context) -> str:
    return "full-size" if ctx.sizes.sd_unet is SD21_UNET else "tiny stand-in (quick)"


def _build(cls, config: dict, device: torch.device, dtype: torch.dtype):
    """A diffusers model from its config, initialized directly on ``device`` (fast on a GPU)."""
    with torch.device(device):
        model = cls(**config)
    return model.to(dtype).eval().requires_grad_(False)


def _prior_step_rows(
    ctx: Context, name: str, prior, setting: str, notes: str, text: torch.Tensor, uncond: torch.Tensor
) -> list[Row]:
    """The SDS-step row of a hub prior, plus a full training-step row when the sizes ask for one."""
    batch, size = ctx.sizes.sds_batch, ctx.sizes.render_size
    sds_only = _sds_only_factory(ctx, prior, size, batch, text, uncond)
    times, memory = _time_steps(ctx, sds_only, ctx.sizes.sds_steps)
    rows = [_step_row(f"SDS step, {name}", setting, times, memory, notes)]
    if ctx.sizes.training_rows:
        step = _training_step_factory(ctx, prior, size, batch, text, uncond)
        times, memory = _time_steps(ctx, step, ctx.sizes.sds_steps)
        rows.append(_step_row(f"training step, {name}", setting, times, memory, "render + SDS + Adam"))
    return rows


def section_stable_diffusion(ctx: Context) -> list[Row]:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    from att3d.priors.stable_diffusion import StableDiffusionPrior

    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    unet = _build(UNet2DConditionModel, ctx.sizes.sd_unet, ctx.device, dtype)
    vae = _build(AutoencoderKL, ctx.sizes.sd_vae, ctx.device, dtype)
    prior = StableDiffusionPrior(unet, vae, DDPMScheduler(**SD21_SCHEDULER))
    params = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in vae.parameters())
    batch, size = ctx.sizes.sds_batch, ctx.sizes.render_size
    dim = ctx.sizes.sd_unet["cross_attention_dim"]
    text = torch.randn(batch, TEXT_TOKENS, dim, device=ctx.device, dtype=dtype)
    uncond = torch.randn(1, TEXT_TOKENS, dim, device=ctx.device, dtype=dtype)
    setting = f"batch {batch} × {size}² renders → VAE at {prior.image_size}², {str(dtype)[6:]}"
    notes = f"random {_kind(ctx)} UNet + VAE, {params / 1e6:.1f} M params; VAE encode (grad), UNet with CFG"
    return _prior_step_rows(ctx, "Stable Diffusion 2.1", prior, setting, notes, text, uncond)


def section_deepfloyd(ctx: Context) -> list[Row]:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from att3d.priors.deepfloyd import DeepFloydPrior

    dtype = torch.float16 if ctx.device.type == "cuda" else torch.float32
    unet = _build(UNet2DConditionModel, ctx.sizes.if_unet, ctx.device, dtype)
    prior = DeepFloydPrior(unet, DDPMScheduler(**IF_SCHEDULER))
    params = sum(p.numel() for p in unet.parameters())
    batch, size = ctx.sizes.sds_batch, ctx.sizes.render_size
    dim = ctx.sizes.if_unet["encoder_hid_dim"]
    text = torch.randn(batch, TEXT_TOKENS, dim, device=ctx.device, dtype=dtype)
    uncond = torch.randn(1, TEXT_TOKENS, dim, device=ctx.device, dtype=dtype)
    setting = f"batch {batch} × {size}² renders (pixel space), {str(dtype)[6:]}"
    notes = f"random {_kind(ctx)} UNet, {params / 1e6:.1f} M params; UNet with CFG"
    return _prior_step_rows(ctx, "DeepFloyd IF-I-XL", prior, setting, notes, text, uncond)


def section_grid_backends(ctx: Context) -> list[Row]:
    """tiny-cuda-nn vs the PyTorch grid in CoarseToFineMesher (only where tinycudann is usable)."""
    from att3d.config import MeshConfig
    from att3d.meshing.coarse_to_fine import CoarseToFineMesher, CoarseToFineOptions
    from att3d.meshing.cuda_extensions import tcnn_status

    reason = tcnn_status()
    if reason is not None:
        return [Row("grid backend", "tcnn vs torch", notes=f"not measured: {reason}")]
    encoding = ctx.field.config.encoding
    config = MeshConfig(resolution=ctx.sizes.resolutions[0], coarse_resolution=ctx.sizes.coarse_resolution)
    rows, faces = [], {}
    original = encoding.backend
    try:
        for backend in ("torch", "tcnn"):
            encoding.backend = backend  # BatchFieldQuery reads it on every meshes() call
            mesher = CoarseToFineMesher(ctx.field, config, CoarseToFineOptions(), ctx.device)
            mesher.meshes(ctx.embeddings[:1])
            times = [
                timed(lambda i=i, m=mesher: m.meshes(ctx.embeddings[i : i + 1]), ctx.device)
                for i in range(10)
            ]
            faces[backend] = len(mesher.meshes(ctx.embeddings[:1])[0].faces)
            p50, p95 = percentiles(times)
            rows.append(Row("grid backend", f"{backend}, {config.resolution}³, batch 1", ms(p50), ms(p95)))
    finally:
        encoding.backend = original
    rows[
        -1
    ].notes = f"faces torch {faces['torch']} vs tcnn {faces['tcnn']} (same prompt); meshing only, no GLB"
    return rows


def section_blocks(ctx: Context) -> list[Row]:
    """CoarseToFineMesher's block sizes against querying every sample (which wins on this device)."""
    from att3d.config import MeshConfig
    from att3d.meshing.coarse_to_fine import CoarseToFineMesher, CoarseToFineOptions

    config = MeshConfig(resolution=ctx.sizes.resolutions[0], coarse_resolution=ctx.sizes.coarse_resolution)
    rows = []
    for block, coarse_block in ((4, 4), (4, 1), (1, 1)):
        options = CoarseToFineOptions(block=block, coarse_block=coarse_block, compile=ctx.compile)
        mesher = CoarseToFineMesher(ctx.field, config, options, ctx.device)
        mesher.meshes(ctx.embeddings[:1])
        times = [
            timed(lambda i=i, m=mesher: m.meshes(ctx.embeddings[i : i + 1]), ctx.device) for i in range(10)
        ]
        p50, p95 = percentiles(times)
        setting = f"block {block}, coarse_block {coarse_block}, {config.resolution}³, batch 1"
        rows.append(Row("mesher blocks", setting, ms(p50), ms(p95), notes="meshing only, no GLB"))
    return rows


# name, function, seconds of budget it needs at least (checked on full runs only)
SECTIONS: list[tuple[str, Callable[[Context], list[Row]], float]] = [
    ("environment", section_environment, 0),
    ("prompt → GLB", section_glb_latency, 60),
    ("reference path", section_reference, 20),
    ("mesher blocks", section_blocks, 15),
    ("grid backends", section_grid_backends, 15),
    ("precision", section_precision, 15),
    ("marching cubes", section_marching_cubes, 15),
    ("ShapesWorld training", section_shapes_training, 20),
    ("Stable Diffusion 2.1 SDS", section_stable_diffusion, 60),
    ("DeepFloyd IF-I-XL SDS", section_deepfloyd, 90),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU tests)")
    parser.add_argument("--out", default="", help="also write the table (Markdown) to this file")
    parser.add_argument("--embeddings", default="", help="safetensors file with an 'embeddings' [N, 384]")
    parser.add_argument("--checkpoint", default="", help="generator checkpoint directory (default: seeded)")
    parser.add_argument("--prompts", type=int, default=0, help="prompts per latency setting (default 50)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the whole run")
    parser.add_argument("--compile", action="store_true", help="torch.compile the field query (CUDA only)")
    parser.add_argument("--only", default="", help="comma-separated section names to run (default: all)")
    parser.add_argument("--write-embeddings", default="", help="encode ShapesWorld prompts with MiniLM, exit")
    args = parser.parse_args(argv)
    if args.write_embeddings:
        write_embeddings(args.write_embeddings)
        return 0

    clock = Clock(args.budget_s)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    if args.prompts:
        sizes = dataclasses.replace(sizes, prompts=args.prompts)
    header = (
        f"GPU benchmark ({'quick' if args.quick else 'full'} sizes) on {device}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, arguments: {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    rows: list[Row] = []
    out = Path(args.out) if args.out else None

    def publish() -> None:
        if out is not None:
            write_text_atomic(out, table(rows, header))

    try:
        field, field_note = load_field(args.checkpoint or None, device, sizes.small_field)
        embeddings, embedding_note = load_embeddings(
            args.embeddings or None, max(64, max(sizes.batches) * 2), field.config.text_dim
        )
        ctx = Context(device, sizes, clock, field, embeddings, args.compile and device.type == "cuda")
        log(f"model: {field_note}; embeddings: {embedding_note}")
        only = {name.strip() for name in args.only.split(",") if name.strip()}
        for name, fn, needs_s in SECTIONS:
            if only and name not in only:
                continue
            if not args.quick and clock.left() < needs_s:
                rows.append(Row(name, "", notes=f"skipped: {clock.left():.0f} s left of the time budget"))
                log(f"{name}: skipped (time)")
                continue
            log(f"{name}: start ({clock.left():.0f} s left)")
            try:
                rows.extend(fn(ctx))
            except Exception as error:  # report and carry on with the next section
                traceback.print_exc()
                rows.append(Row(name, "", notes=f"error: {type(error).__name__}: {error}"[:300]))
                log(f"{name}: ERROR {type(error).__name__}: {error}")
            finally:
                free_memory()
            publish()
    except KeyboardInterrupt:  # timeout --signal=INT from gpu_bench.sh: still print what was measured
        rows.append(Row("interrupted", "", notes="the run was interrupted; later sections missing"))
    publish()
    print(table(rows, header), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
