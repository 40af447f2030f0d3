"""``/v1/refine`` and the meshes of refine jobs: start a refine job, fetch its result and its latest preview.

A refine job is a job like a training job (``/v1/jobs``: progress, cancel, resume, restart recovery, one
queue and one running-jobs cap for both kinds); these routes add what only a refine has, a mesh.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response

from server.deps import EngineDep, JobsDep
from server.errors import BODY_ERROR_RESPONSES, ERROR_RESPONSES, V1_ERROR_RESPONSES, ServiceError, not_ready
from server.jobs.refine_requests import (
    PREVIEW_FILE,
    REFINE,
    RESULT_STEM,
    build_refine_job,
    job_kind,
    model_snapshot_dir,
)
from server.routes.jobs import _STORE_ERRORS, IdempotencyKey, JobIdPath, job_status
from server.schemas import MEDIA_TYPES, ErrorResponse, JobStatus, RefineRequest

IfNoneMatch = Annotated[str | None, Header(alias="If-None-Match", max_length=1024)]
router = APIRouter(prefix="/v1", responses={**V1_ERROR_RESPONSES, **_STORE_ERRORS})
_MESH = {"content": {t: {} for t in dict.fromkeys(MEDIA_TYPES.values())}, "description": "The mesh."}
_RESULT_ERRORS = {
    200: _MESH,
    404: ERROR_RESPONSES[404],
    409: {"model": ErrorResponse, "description": "Not a refine job, or not succeeded (X-Job-State)."},
}


@router.post(
    "/refine",
    response_model=JobStatus,
    status_code=202,
    tags=["jobs"],
    responses={
        **BODY_ERROR_RESPONSES,
        429: {"model": ErrorResponse, "description": "Too many queued jobs; see Retry-After."},
    },
)
async def create_refine(
    response: Response,
    body: RefineRequest,
    engine: EngineDep,
    jobs: JobsDep,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Queue a refine job: per-prompt SDS starting from the model's output for ``prompt``."""
    if not engine.models():
        raise not_ready(engine.load_error)
    name = body.model or engine.default_model
    info = engine.model_info(name)
    if info is None:
        loaded = ", ".join(m["name"] for m in engine.models())
        message = f"model: {name!r} is not loaded (loaded: {loaded})"
        raise ServiceError(422, "invalid_request", message, "model")
    settings = jobs.settings
    path = model_snapshot_dir(settings, info["model_hash"])
    # On the model worker (with the Ray backend: a generation replica, writing to the shared data folder).
    prior = await asyncio.wrap_future(engine.snapshot_model(name, path, settings.job_priors))
    config = build_refine_job(body, settings, info, prior)
    row, created = await asyncio.to_thread(jobs.submit_refine, body, config, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{row['id']}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_status(row)


def _refine_job(jobs, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    row = jobs.get(job_id)
    config = json.loads(row["config"])
    if job_kind(config) != REFINE:
        raise ServiceError(
            409,
            "conflict",
            f"job {job_id} is a training job: it has no mesh (POST /v1/models loads its checkpoint)",
            headers={"X-Job-State": row["state"]},
        )
    return row, config


@router.get("/jobs/{job_id}/result", tags=["jobs"], response_class=Response, responses=_RESULT_ERRORS)
def refine_result(job_id: JobIdPath, jobs: JobsDep) -> Response:
    """The refined mesh in the requested format, once the refine job has succeeded (409 before)."""
    row, config = _refine_job(jobs, job_id)
    if row["state"] != "succeeded":
        raise ServiceError(
            409,
            "conflict",
            f"job {job_id} is {row['state']}; its result exists once it has succeeded",
            headers={"X-Job-State": row["state"]},
        )
    fmt = config["format"]
    return _file(Path(row["run_dir"]) / f"{RESULT_STEM}.{fmt}", MEDIA_TYPES[fmt], f"refined.{fmt}", row)


@router.get("/jobs/{job_id}/preview", tags=["jobs"], response_class=Response, responses=_RESULT_ERRORS)
def refine_preview(job_id: JobIdPath, jobs: JobsDep, if_none_match: IfNoneMatch = None) -> Response:
    """The latest intermediate mesh of a refine job (GLB), to watch it improve; 404 until the first.
    ``If-None-Match`` with the ETag of the preview a client has answers 304 until a newer one is written."""
    row, _ = _refine_job(jobs, job_id)
    return _file(Path(row["run_dir"]) / PREVIEW_FILE, MEDIA_TYPES["glb"], "preview.glb", row, if_none_match)


def _file(
    path: Path, media_type: str, filename: str, row: dict[str, Any], if_none_match: str | None = None
) -> Response:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        message = f"job {row['id']} has no {path.name} yet"
        raise ServiceError(404, "not_found", message, "job_id", {"X-Job-State": row["state"]}) from None
    headers = {
        "Content-Disposition": f'attachment; filename="{filename}"',
        # The file is replaced atomically, so its bytes (not its mtime) name the version a client has.
        "ETag": f'"{hashlib.sha256(data).hexdigest()[:32]}"',
        "X-Job-State": row["state"],
        "X-Job-Step": str(row["step"]),
        "Cache-Control": "no-cache",
    }
    if if_none_match is not None and headers["ETag"] in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)
