"""The bundled ShapesWorld prior: a small pixel-space, view-conditioned diffusion model.

A ~1 M-parameter convolutional diffusers ``UNet2DConditionModel`` (no attention) denoises 32×32 RGB images
of ShapesWorld objects on a white background. It is conditioned through the UNet's class embedding
(``class_embed_type="projection"``, added to the timestep embedding) on one vector per image:

    [ MiniLM prompt embedding (384) | sin/cos(k·azimuth), k = 1..K | sin/cos(elevation) | distance ]

so any MiniLM vector is a valid condition, including interpolations between prompts. Three choices come
from the feasibility probe in DESIGN.md §3:

- the UNet predicts the clean image (``prediction_type="sample"``); :meth:`ShapesPrior.noise_pred` converts
  to ``eps`` so score distillation sees one form. With noise prediction and a few minutes of training,
  samples stayed noisy and SDS failed;
- azimuth enters through K harmonics: with only sin/cos(azimuth) the prior never learned how a cube
  changes as it turns, and SDS produced an azimuth-averaged cylinder;
- the unconditional branch of classifier-free guidance is the zero text vector with the camera kept
  (trained with text dropout), so guidance sharpens the prompt without blurring the view.

The network itself (settings, conditioning vector, UNet, schedule) is in :mod:`att3d.priors.shapes_network`,
shared with the prior's training script. ``UNet2DConditionModel`` always takes ``encoder_hidden_states``;
with no attention blocks they are unused, and a constant zero token is passed. diffusers is imported inside
functions: it takes seconds to import.

Folder layout written by :meth:`ShapesPrior.save_pretrained` (the bundled one is
``att3d/assets/shapes-prior/``)::

    model_index.json     {"_class_name": "ShapesPrior", ...} (how ``att3d.priors.registry`` recognizes it)
    shapes_prior.json    ShapesPriorConfig + free-form training metadata
    unet/                diffusers UNet2DConditionModel (config.json + safetensors)
    scheduler/           diffusers DDPMScheduler config
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from att3d.cameras import Cameras
from att3d.priors.base import DiffusionPrior, PriorCondition, eps_from_sample, freeze, guided
from att3d.priors.images import to_pixel_space
from att3d.priors.shapes_network import (
    ShapesPriorConfig,
    build_scheduler,
    build_unet,
    condition_vector,
    denoise,
)

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from att3d.text import TextEncoder

DEFAULT_PRIOR_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-prior"
"""The prior shipped with the package."""

SETTINGS_FILE = "shapes_prior.json"
MODEL_INDEX_FILE = "model_index.json"
FORMAT = "att3d-shapes-prior"
FORMAT_VERSION = 1


def read_settings(path: str | Path) -> tuple[ShapesPriorConfig, dict[str, Any]]:
    """``(config, metadata)`` from a prior folder's ``shapes_prior.json``."""
    file = Path(path) / SETTINGS_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a ShapesWorld prior folder: {SETTINGS_FILE} is missing")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: invalid JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{file}: not an {FORMAT} settings file")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{file}: unsupported format_version {data.get('format_version')!r}")
    raw = data.get("config", {})
    known = {f.name for f in dataclasses.fields(ShapesPriorConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{file}: unknown config keys {', '.join(unknown)}")
    if "block_out_channels" in raw:
        raw = {**raw, "block_out_channels": tuple(raw["block_out_channels"])}
    return ShapesPriorConfig(**raw), dict(data.get("metadata", {}))


def _write_text_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------
# The prior
# --------------------------------------------------------------------------------------------------


class ShapesPrior(DiffusionPrior):
    """The bundled ShapesWorld prior (see the module docstring).

    ``PriorCondition.text`` holds MiniLM embeddings ``[B, 384]`` (from :meth:`encode_text`, a cache, or
    interpolations of either); ``PriorCondition.cameras`` is required, since the prior is view-conditioned.
    """

    space = "pixel"
    view_conditioned = True

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        config: ShapesPriorConfig | None = None,
        text_encoder: TextEncoder | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Wrap built components (already on their device).

        Args:
            unet: the denoiser; frozen here (eval mode, no gradients).
            scheduler: its DDPM schedule; must have ``prediction_type="sample"``.
            config: conditioning settings; default ``ShapesPriorConfig()``.
            text_encoder: encoder for :meth:`encode_text`; default the cached bundled MiniLM (loaded on
                first use).
            metadata: free-form training facts saved beside the weights.
        """
        config = config or ShapesPriorConfig()
        if scheduler.config.prediction_type != "sample":
            raise ValueError(
                f"the ShapesWorld prior predicts the clean sample; scheduler prediction_type is "
                f"{scheduler.config.prediction_type!r}"
            )
        if unet.config.class_embed_type != "projection" or (
            unet.config.projection_class_embeddings_input_dim != config.condition_dim
        ):
            raise ValueError(
                f"UNet must take a projected class embedding of size {config.condition_dim} "
                f"(text {config.text_dim} + camera {config.camera_dim})"
            )
        freeze(unet)
        self.unet = unet
        self.scheduler = scheduler
        self.config = config
        self.metadata = dict(metadata or {})
        self._text_encoder = text_encoder
        self.image_size = config.image_size
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.alphas_cumprod = scheduler.alphas_cumprod.to(unet.device, torch.float32)

    # ---------------------------------------------------------------------------------- loading

    @classmethod
    def from_config(
        cls, config: ShapesPriorConfig | None = None, device: torch.device | str | None = None, **kwargs: Any
    ) -> ShapesPrior:
        """A randomly initialized prior (tests; training starts from ``build_unet``)."""
        config = config or ShapesPriorConfig()
        unet = build_unet(config).to(device or "cpu")
        return cls(unet, build_scheduler(config), config, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        text_encoder: TextEncoder | None = None,
    ) -> ShapesPrior:
        """Load a saved prior; default: the one bundled in ``att3d/assets/shapes-prior``.

        ``device`` defaults to CUDA when available. fp32 is the default everywhere: the model is tiny.
        """
        from diffusers import DDPMScheduler, UNet2DConditionModel

        path = Path(path) if path is not None else DEFAULT_PRIOR_DIR
        config, metadata = read_settings(path)
        device = torch.device(
            device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        # low_cpu_mem_usage=False: the default wants `accelerate` (and warns without it); the UNet is 4 MB.
        unet = UNet2DConditionModel.from_pretrained(
            path, subfolder="unet", torch_dtype=dtype, low_cpu_mem_usage=False
        )
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(unet.to(device), scheduler, config, text_encoder=text_encoder, metadata=metadata)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the prior folder atomically: built beside ``path``, then renamed over it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes an owner-only folder; a prior is read by everyone
        try:
            self.unet.save_pretrained(tmp / "unet")
            self.scheduler.save_pretrained(tmp / "scheduler")
            settings = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "config": dataclasses.asdict(self.config),
                "metadata": self.metadata,
            }
            _write_text_synced(tmp / SETTINGS_FILE, json.dumps(settings, indent=1) + "\n")
            index = {"_class_name": "ShapesPrior", "unet": ["diffusers", "UNet2DConditionModel"]}
            index["scheduler"] = ["diffusers", "DDPMScheduler"]
            _write_text_synced(tmp / MODEL_INDEX_FILE, json.dumps(index, indent=1) + "\n")
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def to(self, device: torch.device | str) -> ShapesPrior:
        self.unet.to(device)
        self.alphas_cumprod = self.alphas_cumprod.to(device)
        return self

    # ---------------------------------------------------------------------------------- conditioning

    @property
    def text_encoder(self) -> TextEncoder:
        """The prompt encoder (cached bundled MiniLM unless one was injected)."""
        if self._text_encoder is None:
            from att3d.text import get_text_encoder

            self._text_encoder = get_text_encoder("minilm")
        return self._text_encoder

    def encode_text(self, prompts: list[str]) -> Tensor:
        """MiniLM embeddings ``[N, 384]`` on the prior's device."""
        encoder = self.text_encoder
        if encoder.id != self.config.text_encoder:
            raise ValueError(
                f"this prior was trained on {self.config.text_encoder!r} embeddings, not {encoder.id!r}"
            )
        return encoder.encode(prompts).to(self.device)

    def known_prompts(self) -> list[str]:
        """Every phrasing of every object of the prior split: what the bundled prior was trained on
        (``scripts/train_shapes_prior.py``); a word outside them conditions it on little more than noise."""
        from att3d.shapes.splits import load_splits

        return [prompt for obj in load_splits().prior for prompt in obj.prompts]

    def unconditional_text(self, batch: int) -> Tensor:
        """The zero text vector ``[batch, 384]`` the prior was trained with for text dropout."""
        return torch.zeros(batch, self.config.text_dim, device=self.device)

    def encode_images(self, images: Tensor) -> Tensor:
        """Renders in [0, 1] -> ``[B, 3, image_size, image_size]`` in [-1, 1] (differentiable)."""
        return to_pixel_space(images, self.image_size)

    # ---------------------------------------------------------------------------------- denoising

    @torch.no_grad()
    def predict_sample(self, x_t: Tensor, t: Tensor, text: Tensor, cameras: Cameras) -> Tensor:
        """The UNet's clean-image prediction ``[B, 3, H, W]`` (unclipped) in ``x_t``'s dtype."""
        if x_t.dim() != 4 or x_t.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"x_t must be [B, 3, {self.image_size}, {self.image_size}], got shape {tuple(x_t.shape)}"
            )
        if t.shape != (x_t.shape[0],):
            raise ValueError(
                f"t must be [B] = [{x_t.shape[0]}] integer timesteps, got shape {tuple(t.shape)}"
            )
        condition = condition_vector(text.to(x_t.device), cameras.to(x_t.device), self.config)
        return denoise(self.unet, x_t, t.to(x_t.device), condition).to(x_t.dtype)

    def guided_sample(
        self, x_t: Tensor, t: Tensor, cond: PriorCondition, uncond: PriorCondition, guidance_scale: float
    ) -> Tensor:
        """Classifier-free-guided clean-image prediction, clipped to [-1, 1].

        Guidance is applied to the x0 predictions; with ``x_t`` shared, ``eps`` is affine in ``x0`` with
        the same coefficients for both branches, so this is the project's single guidance form in ``eps``.
        Clipping to the image range is the usual DDPM x0 clipping; it only removes impossible values.
        """
        if cond.cameras is None:
            raise ValueError("the ShapesWorld prior is view-conditioned: PriorCondition.cameras is required")
        batch = x_t.shape[0]
        text_cond = _batch_text(cond.text, batch, "cond")
        if guidance_scale == 1.0:  # the unconditional branch has weight 0: skip its forward pass
            x0 = self.predict_sample(x_t, t, text_cond, cond.cameras)
        else:
            text_uncond = _batch_text(uncond.text, batch, "uncond")
            cameras = Cameras.cat([cond.cameras, cond.cameras])
            both = self.predict_sample(
                torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([text_uncond, text_cond]), cameras
            )
            x0_uncond, x0_cond = both.chunk(2)
            x0 = guided(x0_uncond, x0_cond, guidance_scale)
        return x0.clamp(-1.0, 1.0)

    @torch.no_grad()
    def noise_pred(
        self, x_t: Tensor, t: Tensor, cond: PriorCondition, uncond: PriorCondition, guidance_scale: float
    ) -> Tensor:
        """Guided ``eps`` for SDS: the guided clean-image prediction converted with ``eps_from_sample``."""
        x0 = self.guided_sample(x_t, t, cond, uncond, guidance_scale)
        alpha_bar = self.alphas_cumprod.to(x_t.device)[t.to(x_t.device)].to(x_t.dtype)
        return eps_from_sample(x_t, x0, alpha_bar)

    @torch.no_grad()
    def sample(
        self,
        prompts: list[str] | Tensor,
        cameras: Cameras,
        steps: int = 50,
        guidance_scale: float = 3.0,
        generator: torch.Generator | None = None,
        sampler: str = "ddim",
    ) -> Tensor:
        """Draw images ``[B, 3, H, W]`` in [0, 1], one per camera.

        Args:
            prompts: ``B`` prompts, or text embeddings ``[B, 384]`` (e.g. interpolations).
            cameras: ``B`` cameras, one per image.
            steps: denoising steps (DDIM is fine with 25–50; DDPM wants hundreds).
            guidance_scale: classifier-free guidance scale (1 = no guidance).
            generator: CPU generator for the initial and per-step noise (reproducible on any device).
            sampler: ``ddim`` (deterministic given the initial noise) or ``ddpm``.
        """
        from diffusers import DDIMScheduler, DDPMScheduler

        text = self.encode_text(list(prompts)) if not isinstance(prompts, Tensor) else prompts.to(self.device)
        if len(cameras) != text.shape[0]:
            raise ValueError(f"got {text.shape[0]} prompts/embeddings for {len(cameras)} cameras")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if sampler == "ddim":
            scheduler = DDIMScheduler.from_config(self.scheduler.config, set_alpha_to_one=True)
        elif sampler == "ddpm":
            scheduler = DDPMScheduler.from_config(self.scheduler.config)
        else:
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        scheduler.set_timesteps(steps)
        cameras = cameras.to(self.device)
        cond = PriorCondition(text, cameras)
        uncond = PriorCondition(self.unconditional_text(text.shape[0]), cameras)
        shape = (text.shape[0], 3, self.image_size, self.image_size)
        x = torch.randn(shape, generator=generator).to(self.device)
        for t in scheduler.timesteps:
            t_batch = torch.full((shape[0],), int(t), device=self.device, dtype=torch.long)
            x0 = self.guided_sample(x, t_batch, cond, uncond, guidance_scale)
            if sampler == "ddim":
                x = scheduler.step(x0, t, x, eta=0.0).prev_sample
            else:
                x = scheduler.step(x0, t, x, generator=generator).prev_sample
        return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).float()


def _batch_text(text: Tensor, batch: int, name: str) -> Tensor:
    """Text vectors ``[batch, D]``; a single ``[1, D]`` row is broadcast."""
    if text.dim() != 2 or text.shape[0] not in (1, batch):
        raise ValueError(f"{name}.text must be [{batch}, D] or [1, D] embeddings, got {tuple(text.shape)}")
    return text.expand(batch, -1)


def _replace_dir(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``: old target moved aside, rename, backup removed."""
    backup = target.with_name(f".{target.name}.old")
    if backup.exists():
        shutil.rmtree(backup)
    if target.exists():
        os.replace(target, backup)
    os.replace(new, target)
    shutil.rmtree(backup, ignore_errors=True)
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
