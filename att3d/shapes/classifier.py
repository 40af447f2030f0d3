"""The ShapesWorld R-precision analogue: a small CNN that names the shape and colour in a render.

CLIP R-precision asks whether a render is retrieved by its own prompt; in ShapesWorld the prompt *is* a
(shape, colour) pair, so a classifier with one head per factor answers the same question exactly. It is
trained on ground-truth renders from the training camera distribution (random light jitter included, plus
mild noise and blur so the slightly soft renders of generated objects and prior samples are in
distribution) and shipped beside the prior as ``classifier.safetensors`` + ``classifier.json``.

The shape head has one class more than the world: :data:`BACKGROUND` ("nothing there"), trained on empty
and near-empty images (``att3d.shapes.classifier_data``). Without it an empty white view had to be named
as some object, so an empty scene could score. For a background image the colour head is not trained
and its answer means nothing.

:func:`r_precision` is the metric: the fraction of views of an object classified as the right
(shape, colour).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from att3d.atomic import write_text_atomic
from att3d.shapes.world import COLOR_NAMES, SHAPE_NAMES, ShapeObject

DEFAULT_CLASSIFIER_DIR = Path(__file__).resolve().parent.parent / "assets" / "shapes-prior"
"""Folder of the classifier shipped with the package (beside the prior)."""

WEIGHTS_FILE = "classifier.safetensors"
SETTINGS_FILE = "classifier.json"
FORMAT = "att3d-shapes-classifier"
FORMAT_VERSION = 2
"""2: the shape head has the :data:`BACKGROUND` class after the world's shapes."""

BACKGROUND = "none"
"""Shape class of an image with no object in it (an empty or near-empty scene)."""
CLASSIFIER_SHAPES: tuple[str, ...] = (*SHAPE_NAMES, BACKGROUND)
"""Classes of the shape head: the world's shapes, then :data:`BACKGROUND`."""
IGNORE = -100
"""Colour label of a background image: ignored by the colour loss and the colour accuracy."""


@dataclass
class ClassifierConfig:
    """Architecture of the classifier (stored in ``classifier.json``)."""

    image_size: int = 32
    """Inputs are resized (antialiased) to this square size."""
    channels: tuple[int, ...] = (16, 32, 64)
    """Conv channels per level; each level is conv 3×3 -> GroupNorm -> SiLU -> 2× average pooling."""
    hidden: int = 128
    """Width of the shared fully connected layer before the two heads."""
    shape_names: tuple[str, ...] = CLASSIFIER_SHAPES
    """Classes of the shape head, in output order (the world's shapes, then :data:`BACKGROUND`)."""
    color_names: tuple[str, ...] = COLOR_NAMES
    """Classes of the colour head, in output order."""


@dataclass
class ClassifierTrainConfig:
    """How :func:`train_classifier` fits the classifier."""

    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 128
    """Images per step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (cosine decay to zero)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    noise_std: float = 0.04
    """Augmentation: Gaussian pixel noise with a standard deviation drawn uniformly in [0, noise_std]."""
    blur_prob: float = 0.3
    """Augmentation: probability of a 3×3 box blur (renders of generated objects are softer than GT)."""


class ShapesClassifier(nn.Module):
    """Images ``[B, 3, H, W]`` in [0, 1] -> (shape logits ``[B, S]``, colour logits ``[B, C]``)."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ClassifierConfig()
        layers: list[nn.Module] = []
        previous = 3
        for width in config.channels:
            layers += [
                nn.Conv2d(previous, width, 3, padding=1),
                nn.GroupNorm(min(8, width), width),
                nn.SiLU(),
                nn.AvgPool2d(2),
            ]
            previous = width
        self.features = nn.Sequential(*layers)
        cells = (config.image_size // 2 ** len(config.channels)) ** 2
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(previous * cells, config.hidden), nn.SiLU())
        self.shape_head = nn.Linear(config.hidden, len(config.shape_names))
        self.color_head = nn.Linear(config.hidden, len(config.color_names))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = _prepare(images, self.config.image_size) * 2.0 - 1.0
        h = self.trunk(self.features(x))
        return self.shape_head(h), self.color_head(h)


def _prepare(images: Tensor, size: int) -> Tensor:
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be [B, 3, H, W] in [0, 1], got {shape}")
    images = images.float()
    if images.shape[-2:] != (size, size):
        shrinking = images.shape[-1] > size
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking
        )
    return images


# --------------------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------------------


def save_classifier(
    model: ShapesClassifier, folder: str | Path, metadata: dict[str, Any] | None = None
) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` into ``folder`` (each atomically)."""
    from att3d.checkpoint import save_tensors_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors_atomic(folder / WEIGHTS_FILE, dict(model.state_dict()))
    settings = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(model.config),
        "metadata": metadata or {},
    }
    write_text_atomic(folder / SETTINGS_FILE, json.dumps(settings, indent=1) + "\n")
    return folder


def load_classifier(folder: str | Path | None = None, device: torch.device | str = "cpu") -> ShapesClassifier:
    """Load a saved classifier (default: the bundled one), in eval mode without gradients.

    Raises ``ValueError`` if its class lists differ from the current world's (a stale classifier would
    silently report wrong names).
    """
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else DEFAULT_CLASSIFIER_DIR
    settings_path, weights_path = folder / SETTINGS_FILE, folder / WEIGHTS_FILE
    if not settings_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no ShapesWorld classifier in {folder} (need {SETTINGS_FILE} and {WEIGHTS_FILE})"
        )
    data = json.loads(settings_path.read_text())
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{settings_path}: not a {FORMAT} v{FORMAT_VERSION} settings file")
    raw = data["config"]
    config = ClassifierConfig(
        image_size=int(raw["image_size"]),
        channels=tuple(raw["channels"]),
        hidden=int(raw["hidden"]),
        shape_names=tuple(raw["shape_names"]),
        color_names=tuple(raw["color_names"]),
    )
    if config.shape_names != CLASSIFIER_SHAPES or config.color_names != COLOR_NAMES:
        raise ValueError(
            f"{settings_path}: classifier classes {list(config.shape_names)} / {list(config.color_names)} "
            f"differ from the world's {list(CLASSIFIER_SHAPES)} / {list(COLOR_NAMES)}; retrain it"
        )
    model = ShapesClassifier(config)
    model.load_state_dict(load_file(weights_path))
    return model.to(device).eval().requires_grad_(False)


@functools.lru_cache(maxsize=4)
def _bundled(device: str) -> ShapesClassifier:
    return load_classifier(DEFAULT_CLASSIFIER_DIR, device)


def default_classifier(device: torch.device | str = "cpu") -> ShapesClassifier:
    """The bundled classifier, loaded once per device."""
    return _bundled(str(torch.device(device)))


# --------------------------------------------------------------------------------------------------
# Inference and the metric
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def classify(
    images: Tensor, classifier: ShapesClassifier | None = None
) -> tuple[list[str], list[str], Tensor]:
    """Name the shape and colour in each image (shape :data:`BACKGROUND` where there is no object).

    Args:
        images: ``[B, 3, H, W]`` in [0, 1] (any size; resized to the classifier's).
        classifier: default the bundled one (on ``images``' device).

    Returns:
        ``(shape_names, color_names, probs)``: the most likely shape and colour per image, and the joint
        probabilities ``probs[b, s, c] = p(shape s) · p(colour c)`` ``[B, S + 1, C]`` (the heads are
        independent; the last shape is :data:`BACKGROUND`, whose colour means nothing).
    """
    model = classifier if classifier is not None else default_classifier(images.device)
    device = next(model.parameters()).device
    shape_logits, color_logits = model(images.to(device))
    p_shape, p_color = shape_logits.softmax(-1), color_logits.softmax(-1)
    shapes = [model.config.shape_names[i] for i in p_shape.argmax(-1).tolist()]
    colors = [model.config.color_names[i] for i in p_color.argmax(-1).tolist()]
    return shapes, colors, p_shape[:, :, None] * p_color[:, None, :]


def r_precision(images: Tensor, obj: ShapeObject, classifier: ShapesClassifier | None = None) -> float:
    """Fraction of ``images`` (views of one object) classified as ``obj``'s (shape, colour).

    A view classified as :data:`BACKGROUND` is a miss (``obj.shape`` is never the background).
    """
    if not isinstance(obj, ShapeObject):
        raise TypeError(f"obj must be a ShapeObject, got {type(obj).__name__}")
    shapes, colors, _ = classify(images, classifier)
    if not shapes:
        raise ValueError("r_precision needs at least one image")
    hits = sum(s == obj.shape and c == obj.color for s, c in zip(shapes, colors, strict=True))
    return hits / len(shapes)


@torch.no_grad()
def accuracy(
    model: ShapesClassifier, images: Tensor, shape_labels: Tensor, color_labels: Tensor, batch_size: int = 512
) -> dict[str, float]:
    """``{"shape", "color", "both"}`` accuracies over a labelled set (``images`` float or uint8).

    Images with colour label :data:`IGNORE` (background) count for ``shape`` and ``both`` (right when
    named background) but not for ``color``.
    """
    device = next(model.parameters()).device
    correct, colored = torch.zeros(3), 0
    for start in range(0, images.shape[0], batch_size):
        batch = _to_float(images[start : start + batch_size]).to(device)
        shape_logits, color_logits = model(batch)
        labels = color_labels[start : start + batch_size]
        has_color = labels != IGNORE
        s_ok = shape_logits.argmax(-1).cpu() == shape_labels[start : start + batch_size]
        c_ok = (color_logits.argmax(-1).cpu() == labels) & has_color
        both = s_ok & (c_ok | ~has_color)
        correct += torch.stack([s_ok.sum(), c_ok.sum(), both.sum()]).float()
        colored += int(has_color.sum())
    total = max(1, images.shape[0])
    values = [correct[0].item() / total, correct[1].item() / max(1, colored), correct[2].item() / total]
    return dict(zip(("shape", "color", "both"), values, strict=True))


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _to_float(images: Tensor) -> Tensor:
    """uint8 images (how datasets are stored) -> float in [0, 1]; float passes through."""
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def augment(images: Tensor, config: ClassifierTrainConfig, generator: torch.Generator) -> Tensor:
    """Random blur and pixel noise (see :class:`ClassifierTrainConfig`); colours are left unchanged."""
    batch = images.shape[0]
    blur = torch.rand(batch, generator=generator) < config.blur_prob
    if blur.any():
        blurred = F.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
        images = torch.where(blur.to(images.device)[:, None, None, None], blurred, images)
    std = torch.rand(batch, 1, 1, 1, generator=generator) * config.noise_std
    noise = torch.randn(images.shape, generator=generator) * std
    return (images + noise.to(images.device)).clamp(0.0, 1.0)


def train_classifier(
    images: Tensor,
    shape_labels: Tensor,
    color_labels: Tensor,
    config: ClassifierTrainConfig | None = None,
    model_config: ClassifierConfig | None = None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> ShapesClassifier:
    """Fit a classifier on labelled renders (``images`` ``[N, 3, H, W]``, uint8 or float in [0, 1]).

    Labels are class indices into the model's ``shape_names`` / ``color_names``; a background image has
    the :data:`BACKGROUND` shape index and colour label :data:`IGNORE`. Deterministic given ``seed``
    on the CPU. Returns the model in eval mode without gradients.
    """
    from tqdm.auto import tqdm

    config = config or ClassifierTrainConfig()
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [N, 3, H, W], got {tuple(images.shape)}")
    if shape_labels.shape != (images.shape[0],) or color_labels.shape != (images.shape[0],):
        raise ValueError("shape_labels and color_labels must be [N] class indices, one per image")
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ShapesClassifier(model_config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.lr, total_steps=max(1, config.steps))
    bar = tqdm(range(config.steps), desc="classifier", disable=not progress)
    for _ in bar:
        index = torch.randint(0, images.shape[0], (config.batch_size,), generator=generator)
        batch = augment(_to_float(images[index]).to(device), config, generator)
        shape_logits, color_logits = model(batch)
        colors = color_labels[index].to(device)
        loss = F.cross_entropy(shape_logits, shape_labels[index].to(device))
        if (colors != IGNORE).any():  # an all-background batch has no colour to learn
            loss = loss + F.cross_entropy(color_logits, colors, ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval().requires_grad_(False)


def object_labels(objects: Sequence[ShapeObject]) -> tuple[Tensor, Tensor]:
    """Class indices ``([N], [N])`` of each object's shape and colour."""
    shapes = torch.tensor([o.shape_index for o in objects], dtype=torch.long)
    colors = torch.tensor([o.color_index for o in objects], dtype=torch.long)
    return shapes, colors


__all__ = [
    "BACKGROUND",
    "CLASSIFIER_SHAPES",
    "DEFAULT_CLASSIFIER_DIR",
    "IGNORE",
    "ClassifierConfig",
    "ClassifierTrainConfig",
    "ShapesClassifier",
    "accuracy",
    "augment",
    "classify",
    "default_classifier",
    "load_classifier",
    "object_labels",
    "r_precision",
    "save_classifier",
    "train_classifier",
]
