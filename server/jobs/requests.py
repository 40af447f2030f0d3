"""A job request becomes a validated ``TrainConfig``; ``request_digest`` tells an idempotent retry from a
reused ``Idempotency-Key``."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import yaml
from pydantic import BaseModel

from att3d.config import ConfigError, TrainConfig, apply_overrides, from_dict, to_dict
from server.errors import ServiceError
from server.schemas import JOB_SERVER_KEYS, JobRequest
from server.settings import ServerSettings


def build_train_config(request: JobRequest, settings: ServerSettings) -> TrainConfig:
    """The full ``TrainConfig`` of a job request, or :class:`ServiceError` (422) naming the bad field."""
    data = to_dict(TrainConfig())
    for key, value in request.config.items():
        if any(key == k or key.startswith(k + ".") for k in JOB_SERVER_KEYS):
            raise ServiceError(
                422, "invalid_request", f"config.{key}: set by the server, not by a job", "config"
            )
        data = _override(data, key, value)
    if request.prompts is not None:
        data["prompts"] = {"source": "list", "prompts": list(request.prompts), "heldout": request.heldout}
    else:
        data["prompts"] = {
            "source": "template",
            "template": request.template,
            "slots": request.slots,
            "heldout": request.heldout,
        }
    data["device"] = settings.job_device
    data["progress_bar"] = False
    try:
        config = from_dict(TrainConfig, data, path="config")  # checks every value, naming config.<key>
    except ConfigError as err:
        raise ServiceError(422, "invalid_request", str(err), "config") from None
    if config.prior not in settings.job_priors:
        raise ServiceError(
            422,
            "invalid_request",
            f"config.prior: {config.prior!r} is not allowed here (allowed: {', '.join(settings.job_priors)})",
            "config",
        )
    if config.workers > settings.max_job_workers:
        raise ServiceError(
            422,
            "invalid_request",
            f"config.workers: {config.workers} training processes; this server's limit is "
            f"{settings.max_job_workers} (ATT3D_MAX_JOB_WORKERS)",
            "config",
        )
    from att3d.prompts import load_prompt_set

    try:
        prompt_set = load_prompt_set(
            config.prompts, max_chars=config.model.text.max_prompt_chars, max_prompts=settings.max_job_prompts
        )
    except (ConfigError, ValueError) as err:
        field = "template" if request.template is not None else "prompts"
        raise ServiceError(422, "invalid_request", str(err), field) from None  # it names prompts.<key>
    if len(prompt_set) > settings.max_job_prompts:
        raise ServiceError(
            422,
            "invalid_request",
            f"prompts: {len(prompt_set)} prompts; this server's limit is {settings.max_job_prompts}",
            "prompts",
        )
    return config


def _override(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``data`` with the dotted ``key`` set to ``value``, through the CLI's :func:`apply_overrides`.

    The JSON value travels as YAML text: ``yaml.safe_dump`` output loads back to the very same value.
    """
    try:
        return apply_overrides(data, [f"{key}={yaml.safe_dump(value)}"])
    except ConfigError as err:  # a dotted key through a value that is not a section
        reason = str(err).removeprefix(f"override '{key}': ")
        raise ServiceError(422, "invalid_request", f"config.{key}: {reason}", "config") from None


def request_digest(request: BaseModel) -> str:
    """sha256 of the canonical request, to tell an idempotent retry from a reused key."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
