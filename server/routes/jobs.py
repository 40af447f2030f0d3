"""``/v1/jobs``: queue, list, inspect, cancel and resume training jobs (``server.jobs`` runs them)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi import Path as PathParam
from fastapi.responses import Response

from server.deps import JobsDep
from server.errors import BODY_ERROR_RESPONSES, ERROR_RESPONSES, V1_ERROR_RESPONSES
from server.jobs.refine_requests import PREVIEW_FILE, REFINE, job_kind
from server.schemas import ErrorResponse, JobRequest, JobStatus

_STORE_ERRORS = {503: {"model": ErrorResponse, "description": "job_store_unavailable; see Retry-After."}}
router = APIRouter(prefix="/v1", responses={**V1_ERROR_RESPONSES, **_STORE_ERRORS})
JobIdPath = Annotated[str, PathParam(min_length=1, max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retries with the same key and body return the same job.",
    ),
]
_CREATE_ERRORS = {
    **BODY_ERROR_RESPONSES,
    429: {"model": ErrorResponse, "description": "Too many queued jobs; see Retry-After."},
}
_JOB_ERRORS = {
    404: ERROR_RESPONSES[404],
    409: {"model": ErrorResponse, "description": "Not possible in the job's state."},
}


@router.post("/jobs", response_model=JobStatus, status_code=202, tags=["jobs"], responses=_CREATE_ERRORS)
def create_job(
    response: Response, body: JobRequest, jobs: JobsDep, idempotency_key: IdempotencyKey = None
) -> Any:
    """Queue a training job on a prompt set; it runs in its own process (one at a time by default)."""
    row, created = jobs.submit(body, idempotency_key)
    response.headers["Location"] = f"/v1/jobs/{row['id']}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_status(row)


@router.get("/jobs", response_model=list[JobStatus], tags=["jobs"])
def list_jobs(
    jobs: JobsDep,
    state: Annotated[
        str | None, Query(pattern="^(queued|running|succeeded|failed|canceled|interrupted)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Recent jobs, newest first."""
    return [job_status(row) for row in jobs.store.list(state, limit)]


@router.get("/jobs/{job_id}", response_model=JobStatus, tags=["jobs"], responses=_JOB_ERRORS)
def get_job(job_id: JobIdPath, jobs: JobsDep) -> Any:
    """State, progress (0-100), step, loss, timestamps and error of a job."""
    return job_status(jobs.get(job_id))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobStatus,
    tags=["jobs"],
    responses={
        **_JOB_ERRORS,
        202: {"model": JobStatus, "description": "Cancel requested; the job is stopping."},
    },
)
def cancel_job(response: Response, job_id: JobIdPath, jobs: JobsDep) -> Any:
    """Cancel a job: a queued one at once (200); a running one saves a checkpoint and stops (202)."""
    row = jobs.cancel(job_id)
    if row["state"] == "running":
        response.status_code = 202
    return job_status(row)


@router.post(
    "/jobs/{job_id}/resume", response_model=JobStatus, status_code=202, tags=["jobs"], responses=_JOB_ERRORS
)
def resume_job(job_id: JobIdPath, jobs: JobsDep) -> Any:
    """Queue an interrupted (or failed) job again; it continues from its latest checkpoint."""
    return job_status(jobs.resume(job_id))


def job_status(row: dict[str, Any], base_url: str = "") -> dict[str, Any]:
    """The API view of a job row (``server.schemas.JobStatus``)."""
    kind = job_kind(json.loads(row["config"]))
    total = max(int(row["total_steps"]), 1)
    progress = 100.0 if row["state"] == "succeeded" else min(100.0, 100.0 * row["step"] / total)
    return {
        "id": row["id"],
        "kind": kind,
        "state": row["state"],
        "progress": round(progress, 2),
        "step": row["step"],
        "total_steps": row["total_steps"],
        "loss": row["loss"],
        "error": row["error"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "updated_at": _iso(row["updated_at"]),
        "finished_at": _iso(row["finished_at"]),
        "attempts": row["attempts"],
        "checkpoint_available": row["checkpoint"] is not None,
        "cancel_requested": bool(row["cancel_requested"]),
        "status_url": f"{base_url}/v1/jobs/{row['id']}",
        "result_url": f"{base_url}/v1/jobs/{row['id']}/result" if kind == REFINE else None,
        "preview_url": f"{base_url}/v1/jobs/{row['id']}/preview" if kind == REFINE else None,
        "preview_available": kind == REFINE and (Path(row["run_dir"]) / PREVIEW_FILE).is_file(),
    }


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
