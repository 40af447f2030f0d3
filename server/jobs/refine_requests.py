"""A refine request becomes a refine job's stored config, and a job's config tells its kind.

A refine job keeps the same row as a training job (``server.jobs.store``); its ``config`` column holds
``{"kind": "refine", ...}`` (the prompt, the model snapshot to start from, the mesh settings of the result
and the ``att3d.refine.RefineConfig``) instead of a ``TrainConfig``. The model is snapshotted once per
weights hash under ``<data_dir>/refine-models/<hash>`` before the job is queued, so a job process never
depends on what the server has loaded when it starts (or resumes, after a restart).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.errors import ServiceError
from server.schemas import RefineRequest
from server.settings import ServerSettings

REFINE = "refine"
TRAIN = "train"
MODELS_DIR = "refine-models"
"""Sub-folder of the data folder holding model snapshots refine jobs start from."""
PREVIEW_FILE = "preview.glb"
"""A refine job's latest intermediate mesh, in its run folder."""
RESULT_STEM = "result"
"""A refine job's refined mesh is ``result.<format>`` in its run folder."""
PREVIEW_RESOLUTION = 64
"""Marching-cubes resolution of previews (at most the result's): a preview must be cheap."""
PREVIEWS_PER_JOB = 8


def job_kind(config: dict[str, Any]) -> str:
    """``refine`` or ``train``, from a job's stored config."""
    return REFINE if isinstance(config, dict) and config.get("kind") == REFINE else TRAIN


def model_snapshot_dir(settings: ServerSettings, model_hash: str) -> Path:
    return settings.data_dir / MODELS_DIR / model_hash


def build_refine_job(
    request: RefineRequest, settings: ServerSettings, model: dict[str, Any], prior: str
) -> dict[str, Any]:
    """The stored config of a refine job on the loaded model ``model`` (its ``GET /v1/models`` info)."""
    from att3d.config import ConfigError, to_dict
    from att3d.refine import RefineConfig

    resolution = request.resolution or model["default_resolution"]
    if resolution > settings.max_resolution:
        raise ServiceError(
            422,
            "invalid_request",
            f"resolution: {resolution} is above this server's limit {settings.max_resolution}",
            "resolution",
        )
    every = request.preview_every
    if every is None:
        every = max(1, request.steps // PREVIEWS_PER_JOB)
    try:
        config = RefineConfig(
            steps=request.steps,
            freeze_head=request.freeze_head,
            seed=request.seed,
            **({} if request.prior_text is None else {"prior_text": request.prior_text}),
            preview_every=every,
            checkpoint_every=max(1, request.steps // PREVIEWS_PER_JOB),
        )
    except ConfigError as err:  # the schema's bounds are the config's: a mismatch is a bug, said clearly
        raise ServiceError(422, "invalid_request", str(err), "steps") from None
    return {
        "kind": REFINE,
        "prompt": request.prompt,
        "model": model["name"],
        "model_hash": model["model_hash"],
        "model_dir": str(model_snapshot_dir(settings, model["model_hash"])),
        "prior": prior,
        "device": settings.job_device,
        "format": request.format,
        "resolution": resolution,
        "preview_resolution": min(PREVIEW_RESOLUTION, resolution),
        "refine": to_dict(config),
    }


def snapshot_model(generator: Any, path: Path, allowed_priors: tuple[str, ...]) -> str:
    """Save ``generator`` (a ``Generator``) at ``path`` unless a snapshot of these weights is there already;
    returns the prior a refine of it uses: the one it was trained with when allowed here, else the first
    allowed one."""
    train_config = generator.metadata.get("train_config")
    prior = train_config.get("prior") if isinstance(train_config, dict) else None
    if prior not in allowed_priors:
        prior = allowed_priors[0] if allowed_priors else "shapes"
    if not (path / "manifest.json").is_file():
        generator.save(path)  # atomic: a crash leaves no half snapshot to be taken for a whole one
    return str(prior)
