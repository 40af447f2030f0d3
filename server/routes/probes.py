"""``/livez`` and ``/readyz`` (probes, never behind the API key) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import EngineDep, JobsDep, MetricsDep
from server.errors import ERROR_RESPONSES
from server.jobs.store import JobStoreUnavailable

router = APIRouter(tags=["probes"])


@router.get("/livez")
async def livez() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        503: {"description": "Loading, failed to load, the job store unusable, or the queue is saturated."}
    },
)
async def readyz(engine: EngineDep, jobs: JobsDep) -> JSONResponse:
    """Models loaded and warmed up, the job store usable, and the queue not saturated."""
    body: dict[str, Any] = {
        "queue_depth": engine.queue_depth(),
        "models": [m["name"] for m in engine.models()],
    }
    if not engine.ready:
        reason = engine.load_error or "loading and warming up the models"
        return JSONResponse({"status": "not_ready", "reason": reason, **body}, status_code=503)
    store_problem = await asyncio.to_thread(jobs.store_problem)
    if store_problem is not None:
        return JSONResponse({"status": "not_ready", "reason": store_problem, **body}, status_code=503)
    if engine.saturated():
        return JSONResponse(
            {"status": "not_ready", "reason": "the queue is saturated", **body}, status_code=503
        )
    return JSONResponse({"status": "ready", **body})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: ERROR_RESPONSES[401]},
)
def metrics(jobs: JobsDep, app_metrics: MetricsDep) -> Response:
    """Prometheus metrics (requests by route and status, latencies, queue depth, batch sizes, cache, jobs)."""
    try:
        counts = jobs.store.counts()
    except JobStoreUnavailable:  # still answered: job gauges left out, att3d_job_store_up 0
        app_metrics.jobs.clear()
        app_metrics.job_store_up.set(0)
    else:
        for job_state, count in counts.items():
            app_metrics.jobs.labels(job_state).set(count)
        app_metrics.job_store_up.set(1)
    return Response(generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
