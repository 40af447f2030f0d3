"""Build a prior by name, hub id or local folder.

Accepted forms:

- ``shapes``: the bundled ShapesWorld prior (offline, CPU or GPU);
- ``stable-diffusion`` or ``stable-diffusion:<hub id or folder>`` (default
  ``stabilityai/stable-diffusion-2-1-base``);
- ``deepfloyd-if`` or ``deepfloyd-if:<hub id or folder>`` (default ``DeepFloyd/IF-I-XL-v1.0``);
- a local folder whose ``model_index.json`` names a supported ``_class_name`` (a saved diffusers
  ``StableDiffusionPipeline`` or ``IFPipeline``, or a saved ``ShapesPrior``).

Each prior module is imported only when asked for (diffusers is slow to import).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from att3d.priors.base import DiffusionPrior

PRIOR_NAMES = ("shapes", "stable-diffusion", "deepfloyd-if")
"""Names :func:`load_prior` accepts (optionally followed by ``:<hub id or folder>`` for the hub priors)."""

FOLDER_CLASSES = {
    "StableDiffusionPipeline": "stable-diffusion",
    "IFPipeline": "deepfloyd-if",
    "ShapesPrior": "shapes",
}
"""``model_index.json`` ``_class_name`` of a local folder -> the prior that loads it."""


def load_prior(
    name_or_path: str | Path,
    device: torch.device | str | None = None,
    **kwargs: Any,
) -> DiffusionPrior:
    """The prior named by ``name_or_path`` on ``device``; ``kwargs`` go to its ``from_pretrained``."""
    name, source = _resolve(str(name_or_path))
    if name == "shapes":
        from att3d.priors.shapes import ShapesPrior

        if source is None:
            return ShapesPrior.from_pretrained(device=device, **kwargs)
        return ShapesPrior.from_pretrained(source, device=device, **kwargs)
    if name == "stable-diffusion":
        from att3d.priors.stable_diffusion import DEFAULT_MODEL_ID, StableDiffusionPrior

        return StableDiffusionPrior.from_pretrained(source or DEFAULT_MODEL_ID, device=device, **kwargs)
    from att3d.priors.deepfloyd import DEFAULT_MODEL_ID, DeepFloydPrior

    return DeepFloydPrior.from_pretrained(source or DEFAULT_MODEL_ID, device=device, **kwargs)


def _resolve(name_or_path: str) -> tuple[str, str | None]:
    """(prior name, hub id or folder or ``None`` for the default)."""
    name, _, source = name_or_path.partition(":")
    if name in PRIOR_NAMES:
        if name == "shapes" and source:
            raise ValueError(f"the 'shapes' prior is bundled and takes no source, got {name_or_path!r}")
        return name, source or None
    folder = Path(name_or_path)
    if folder.is_dir():
        return _folder_prior(folder), name_or_path
    raise ValueError(
        f"unknown prior {name_or_path!r}: expected one of {', '.join(PRIOR_NAMES)} (hub priors optionally "
        "as NAME:<hub id or folder>) or an existing local folder with a model_index.json"
    )


def _folder_prior(folder: Path) -> str:
    """The prior that loads ``folder``, from its ``model_index.json``."""
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"{folder} has no model_index.json, so the prior type is unknown")
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{index} is not a JSON object: {err}") from None
    if class_name not in FOLDER_CLASSES:
        raise ValueError(
            f"{index}: _class_name {class_name!r} is not a supported prior "
            f"(supported: {', '.join(FOLDER_CLASSES)})"
        )
    return FOLDER_CLASSES[class_name]
