"""The HTTP API (FastAPI): ``create_app`` wires settings, the model engine and the job manager together.

Routes (OpenAPI at ``/docs``; the full reference is docs/API.md):

- ``POST /v1/generate``, ``POST /v1/interpolate``: mesh bytes, with ``ETag``, ``X-Model-Hash``,
  ``X-Generation-Ms`` and ``X-Cache``; ``If-None-Match`` with a current ETag answers 304 without generating;
- ``GET /v1/models``, ``GET /v1/models/{name}``, ``GET /v1/models/{name}/prompts``, ``POST /v1/models``
  (load a finished job's checkpoint under a name; kept in the data folder and loaded again at start-up);
- ``POST /v1/jobs`` (``Idempotency-Key``), ``GET /v1/jobs``, ``GET|DELETE /v1/jobs/{id}``,
  ``POST /v1/jobs/{id}/resume``; ``POST /v1/refine``, ``GET /v1/jobs/{id}/result|preview``;
- ``GET /livez``, ``GET /readyz`` (probes, never behind the API key), ``GET /metrics`` (Prometheus);
- ``HEAD`` on every GET route (the GET's headers, no body); no trailing-slash redirects;
- ``GET /``: the viewer page (static files under ``/static``); ``/docs`` and ``/redoc`` from packaged assets.

The routes live in ``server.routes``, the middleware in ``server.middleware``, the error handling in
``server.errors`` (every error is JSON); routes reach the engine, job manager and settings through
``server.deps``.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware

from att3d import malloc_tuning
from att3d.devices import resolve_device
from att3d.generate import Generator
from server.engine import Engine, ModelSource
from server.errors import add_error_handlers
from server.jobs.scheduler import JobManager
from server.metrics import Metrics
from server.middleware import (
    PROBES,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    HeadMiddleware,
    MetricsMiddleware,
    is_public,
)
from server.routes import jobs as job_routes
from server.routes import meshes as mesh_routes
from server.routes import models as model_routes
from server.routes import probes as probe_routes
from server.routes import refine as refine_routes
from server.routes.docs import add_docs
from server.saved_models import SavedModels
from server.settings import ServerSettings

STATIC_DIR = Path(__file__).parent / "static"


EngineFactory = Callable[[ServerSettings, Metrics], Engine]
"""Builds the object the routes call as the engine, in place of a local :class:`Engine`: one with the
same methods (``server.ray_serve.remote_engine.RemoteEngine`` answers them from Ray Serve replicas)."""


def create_app(
    settings: ServerSettings | None = None,
    models: Mapping[str, ModelSource] | None = None,
    engine_factory: EngineFactory | None = None,
) -> FastAPI:
    """The service. ``models`` maps names to generators or loaders (default: the bundled model);
    ``engine_factory``, when given, supplies the engine instead (``models`` is then not used)."""
    malloc_tuning.tune()  # glibc malloc settings for meshing (att3d.malloc_tuning); idempotent
    settings = settings or ServerSettings.from_env()
    saved_models = SavedModels(settings.data_dir)
    metrics_ = Metrics()
    if engine_factory is not None:
        engine = engine_factory(settings, metrics_)
    else:
        if models is None:
            device = settings.device
            models = {"default": lambda: Generator.default(device=str(resolve_device(device)))}
        # Models added with POST /v1/models come back after the configured ones (the first stays the default).
        models = {**models, **saved_models.loaders(models, settings.device)}
        engine = Engine(settings, models, metrics_)
    jobs = JobManager(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        jobs.start()
        try:
            yield
        finally:
            await asyncio.to_thread(jobs.stop)
            await asyncio.to_thread(engine.stop)

    middleware = [Middleware(MetricsMiddleware, metrics=metrics_)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[
                    "Content-Type",
                    "X-API-Key",
                    "Authorization",
                    "Idempotency-Key",
                    "If-None-Match",
                ],
                expose_headers=[
                    "ETag",
                    "X-Model-Hash",
                    "X-Model-Name",
                    "X-Generation-Ms",
                    "X-Cache",
                    "X-Prompt-Familiarity",
                    "X-Prompt-Familiar",
                    "X-Prompt-Nearest",
                    "X-Prompt-Read-As",
                    "X-Replica",  # the Ray backend's generation replica (server.ray_serve)
                    "Retry-After",
                ],
            )
        )
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    middleware.append(Middleware(ApiKeyMiddleware, api_key=settings.api_key))
    middleware.append(Middleware(HeadMiddleware))

    app = FastAPI(
        title="att3d",
        version=importlib.metadata.version("att3d"),
        description="Amortized text-to-3D: a prompt to a textured mesh in one forward pass. See docs/API.md.",
        lifespan=lifespan,
        middleware=middleware,
        docs_url=None,  # served from packaged assets by server.routes.docs, never from a CDN
        redoc_url=None,
        # /v1/jobs/ is a JSON 404 naming /v1/jobs, not a 307 with an empty body (server.errors).
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.jobs = jobs
    app.state.metrics = metrics_
    app.state.saved_models = saved_models
    add_error_handlers(app)
    for routes in (mesh_routes, model_routes, job_routes, refine_routes, probe_routes):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    add_docs(app)

    @app.get("/", include_in_schema=False)
    async def viewer() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    if settings.api_key:
        app.openapi = _with_security(app)  # type: ignore[method-assign]
    return app


def _with_security(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """Declare the API key in the OpenAPI schema (enforced by :class:`ApiKeyMiddleware`)."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {})["securitySchemes"] = {
            "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "Bearer": {"type": "http", "scheme": "bearer"},
        }
        for path, operations in schema["paths"].items():
            if not is_public(path) and path not in PROBES:
                for operation in operations.values():
                    operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
        app.openapi_schema = schema
        return schema

    return openapi
