"""``/v1/models``: the loaded models, their prompt sets, and loading a succeeded job's checkpoint."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from server.deps import EngineDep, JobsDep
from server.engine import Engine
from server.errors import BODY_ERROR_RESPONSES, ERROR_RESPONSES, V1_ERROR_RESPONSES, ServiceError, not_ready
from server.jobs.refine_requests import REFINE, job_kind
from server.schemas import ErrorResponse, LoadModelRequest, ModelInfo, ModelList, PromptList

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", responses=V1_ERROR_RESPONSES)
ModelNamePath = Annotated[str, PathParam(max_length=64)]


def _model_or_404(engine: Engine, name: str) -> dict[str, Any]:
    if not engine.models():
        raise not_ready(engine.load_error)
    info = engine.model_info(name)
    if info is None:
        raise ServiceError(404, "not_found", f"model {name!r} is not loaded", "name")
    return info


@router.get("/models", response_model=ModelList, tags=["models"], responses={503: ERROR_RESPONSES[503]})
async def list_models(engine: EngineDep) -> dict[str, Any]:
    """The loaded models (name, weights hash, prompt-set size, training steps)."""
    if not engine.models():
        raise not_ready(engine.load_error)
    return {"models": engine.models()}


@router.get(
    "/models/{name}",
    response_model=ModelInfo,
    tags=["models"],
    responses={404: ERROR_RESPONSES[404], 503: ERROR_RESPONSES[503]},
)
async def get_model(name: ModelNamePath, engine: EngineDep) -> dict[str, Any]:
    """One loaded model."""
    return _model_or_404(engine, name)


@router.get(
    "/models/{name}/prompts",
    response_model=PromptList,
    tags=["models"],
    responses={404: ERROR_RESPONSES[404], 503: ERROR_RESPONSES[503]},
)
async def model_prompts(
    name: ModelNamePath,
    engine: EngineDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """The prompt set a model was trained on, a page at a time."""
    _model_or_404(engine, name)
    prompts = engine.model_prompts(name) or []
    return {
        "name": name,
        "total": len(prompts),
        "offset": offset,
        "prompts": prompts[offset : offset + limit],
    }


@router.post(
    "/models",
    response_model=ModelInfo,
    status_code=201,
    tags=["models"],
    responses={
        **BODY_ERROR_RESPONSES,
        404: ERROR_RESPONSES[404],
        409: {"model": ErrorResponse, "description": "Name taken or job not finished."},
        500: {"model": ErrorResponse, "description": "The checkpoint could not be loaded."},
        503: ERROR_RESPONSES[503],
    },
)
async def load_model(
    request: Request, body: LoadModelRequest, engine: EngineDep, jobs: JobsDep
) -> dict[str, Any]:
    """Load a succeeded job's final checkpoint as model ``name`` (it then serves like any other model, and
    is loaded again after a restart)."""
    if not engine.models():
        raise not_ready(engine.load_error)
    row = await asyncio.to_thread(jobs.store.get, body.job_id)
    if row is None:
        raise ServiceError(404, "not_found", f"no job with id {body.job_id!r}", "job_id")
    if job_kind(json.loads(row["config"])) == REFINE:
        raise ServiceError(
            409,
            "conflict",
            f"job {body.job_id} is a refine job: its result is one prompt's mesh "
            f"(GET /v1/jobs/{body.job_id}/result), not a model; give a training job's id",
            "job_id",
        )
    if row["state"] != "succeeded" or not row["checkpoint"]:
        raise ServiceError(
            409, "conflict", f"job {body.job_id} is {row['state']}; only a succeeded job's model loads"
        )
    if engine.model_info(body.name) is not None:
        raise ServiceError(409, "conflict", f"a model named {body.name!r} is already loaded", "name")
    try:
        info = await asyncio.wrap_future(engine.load_model(body.name, row["checkpoint"]))
    except ServiceError:
        raise
    except Exception as err:
        logger.exception("loading job %s's checkpoint failed", body.job_id)
        raise ServiceError(500, "internal_error", f"cannot load the job's checkpoint: {err}") from None
    try:  # so that a restart loads it again
        await asyncio.to_thread(request.app.state.saved_models.add, body.name, body.job_id, row["checkpoint"])
    except OSError:
        logger.exception("model %r is loaded but could not be saved: a restart will not load it", body.name)
    return info
