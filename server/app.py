"""The HTTP API (FastAPI): ``create_app`` wires settings, the model engine and the job manager together.

Routes (OpenAPI at ``/docs``; the full reference is docs/API.md):

- ``POST /v1/generate``, ``POST /v1/interpolate``: mesh bytes, with ``ETag``, ``X-Model-Hash``,
  ``X-Generation-Ms`` and ``X-Cache``; ``If-None-Match`` with a current ETag answers 304 without generating;
- ``GET /v1/models``, ``GET /v1/models/{name}``, ``GET /v1/models/{name}/prompts``, ``POST /v1/models``
  (load a finished job's checkpoint under a name);
- ``POST /v1/jobs`` (``Idempotency-Key``), ``GET /v1/jobs``, ``GET|DELETE /v1/jobs/{id}``,
  ``POST /v1/jobs/{id}/resume``;
- ``GET /livez``, ``GET /readyz`` (probes, never behind the API key), ``GET /metrics`` (Prometheus);
- ``GET /``: the viewer page (static files under ``/static``).

Every error is JSON ``{"error": code, "message": ..., "fields": [{"field", "message"}]}``: invalid input is
400 (malformed JSON), 404 (unknown model or job), 413 (body too large) or 422 (a field's value), with the
field named; server faults are 5xx, never 404.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import logging
import re
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from att3d.devices import resolve_device
from att3d.generate import Generator, interpolation_weights
from server.engine import (
    Engine,
    GenerationError,
    GenerationResult,
    MeshSpec,
    ModelSource,
    QueueFull,
)
from server.jobs import JobError, JobManager, job_status
from server.metrics import Metrics
from server.schemas import (
    MEDIA_TYPES,
    ZIP_MEDIA_TYPE,
    ErrorResponse,
    GenerateRequest,
    InterpolateRequest,
    JobRequest,
    JobStatus,
    LoadModelRequest,
    MeshOptions,
    ModelInfo,
    ModelList,
    PromptList,
)
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PROBES = ("/livez", "/readyz")
# Public without a key: the probes, the viewer's static files and the schema (none of them holds data).
_PUBLIC_PATHS = (*PROBES, "/", "/docs", "/docs/oauth2-redirect", "/openapi.json")
_PUBLIC_PREFIXES = ("/static/",)


class ApiError(Exception):
    """An error answered as :class:`ErrorResponse` JSON."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, fields: list[dict[str, str]] | None = None, headers: Any = None
) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, fields=fields or []).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------------------------------
# ASGI middleware (plain ASGI: they see every request, including the ones no route matches)
# --------------------------------------------------------------------------------------------------


class _BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive``: an HTTPException, so FastAPI's body reading passes it on as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than {max_bytes} bytes")


class BodyLimitMiddleware:
    """413 for bodies over ``max_bytes``: from ``Content-Length`` at once, or while a chunked body streams."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "body_too_large",
            f"request body is larger than {self.max_bytes} bytes",
            [{"field": "body", "message": f"at most {self.max_bytes} bytes"}],
        )
        await response(scope, receive, send)


class ApiKeyMiddleware:
    """With an API key configured, 401 for any request without it, except the public paths."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.api_key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.api_key or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in dict(scope["headers"]):
            await self.app(scope, receive, send)  # CORS preflights never carry credentials
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-api-key")
        authorization = headers.get(b"authorization", b"")
        if given is None and authorization[:7].lower() == b"bearer ":
            given = authorization[7:].strip()
        if given is None or not hmac.compare_digest(given, self.api_key):
            response = error_response(
                401,
                "unauthorized",
                "missing or wrong API key: send 'X-API-Key: KEY' or 'Authorization: Bearer KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_public(path: str) -> bool:
    return path in _PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIXES)


class MetricsMiddleware:
    """Counts requests by route template, method and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            # Templates (not raw paths) keep the label set bounded whatever clients request.
            label = getattr(route, "path", None) or (
                "/static" if scope["path"].startswith("/static/") else ""
            )
            label = label or "unmatched"
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.latency.labels(label).observe(loop.time() - started)


# --------------------------------------------------------------------------------------------------
# Error handlers
# --------------------------------------------------------------------------------------------------


def _field_name(loc: tuple[Any, ...], message: str) -> tuple[str, str]:
    """A readable field path from a pydantic location; model-level checks name the field in the message."""
    parts = [str(p) for p in loc if p not in ("body", "header", "query", "path")]
    # Drop pydantic's internal step names (e.g. "function-after[_prompt(), str]").
    parts = [p for p in parts if not re.match(r"^[\w-]+\[.*\]$", p)]
    match = re.match(r"^([A-Za-z_][\w.-]*): (.*)$", message, re.DOTALL)
    if match and not parts:
        return match.group(1), match.group(2)
    return ".".join(parts) or "body", message


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = []
    malformed = False
    for error in exc.errors():
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if error.get("type") == "json_invalid":
            malformed = True
            fields.append(
                {"field": "body", "message": f"malformed JSON: {error.get('ctx', {}).get('error', '')}"}
            )
            continue
        field, message = _field_name(tuple(error.get("loc", ())), message)
        fields.append({"field": field, "message": message})
    if malformed:
        return error_response(400, "malformed_json", "the request body is not valid JSON", fields)
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:3])
    return error_response(422, "invalid_request", summary or "invalid request", fields)


def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    fields = [{"field": exc.field, "message": exc.message}] if exc.field else []
    return error_response(exc.status, exc.code, exc.message, fields, exc.headers)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {request.url.path}"
    fields = [{"field": "body", "message": message}] if exc.status_code == 413 else None
    return error_response(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        message,
        fields,
        headers=getattr(exc, "headers", None),
    )


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", f"the server failed ({type(exc).__name__})")


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _jobs(request: Request) -> JobManager:
    return request.app.state.jobs


def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _not_ready(engine: Engine) -> ApiError:
    reason = engine.load_error or "the models are still loading"
    return ApiError(503, "not_ready", f"not ready: {reason}", headers={"Retry-After": "5"})


def _model_name(engine: Engine, options: MeshOptions) -> str:
    if not engine.models():
        raise _not_ready(engine)
    name = options.model or engine.default_model
    if engine.model_info(name) is None:
        loaded = ", ".join(m["name"] for m in engine.models())
        raise ApiError(404, "not_found", f"model {name!r} is not loaded (loaded: {loaded})", "model")
    return name


def _resolution(engine: Engine, settings: ServerSettings, name: str, options: MeshOptions) -> int:
    if options.resolution is None:
        return int(engine.model_info(name)["default_resolution"])  # type: ignore[index]
    if options.resolution > settings.max_resolution:
        raise ApiError(
            422,
            "invalid_request",
            f"resolution {options.resolution} is above this server's limit of {settings.max_resolution}",
            "resolution",
        )
    return options.resolution


def _etag(key: str) -> str:
    # Weak: the key names the model's answer to this request, which is the same mesh wherever it is
    # computed, though float rounding may differ across machines and libraries.
    return f'W/"{key[:40]}"'


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag.removeprefix("W/") for t in tags)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60] or "mesh"


def _headers(result: GenerationResult | None, etag: str, cache: str, model_hash: str) -> dict[str, str]:
    headers = {"ETag": etag, "X-Model-Hash": model_hash, "X-Cache": cache}
    if result is not None:
        headers["X-Model-Name"] = result.model
        headers["X-Generation-Ms"] = f"{result.generation_ms:.1f}"
    return headers


async def _answer(request: Request, spec: MeshSpec, filename: str, if_none_match: str | None) -> Response:
    """Cache, 304, queue, wait: the common path of every mesh-returning route."""
    engine = _engine(request)
    settings = _settings(request)
    key = engine.key(spec)
    etag = _etag(key)
    model_hash = engine.model_info(spec.model)["model_hash"]  # type: ignore[index]
    if _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=_headers(None, etag, "revalidated", model_hash))
    cached = engine.lookup(key)
    if cached is not None:
        result, cache = cached, "hit"
    else:
        try:
            future = engine.submit(spec, key)
        except QueueFull as err:
            raise ApiError(
                429, "queue_full", str(err), headers={"Retry-After": str(err.retry_after_s)}
            ) from None
        except GenerationError as err:
            raise ApiError(err.status, err.code, err.message, err.field) from None
        try:
            # shield: one waiter giving up must not cancel the computation other waiters share.
            result = await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(future)), settings.request_timeout_s
            )
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"no result within {settings.request_timeout_s:g} s; retry later (it is cached "
                "when it lands)",
                headers={"Retry-After": "5"},
            ) from None
        except GenerationError as err:
            headers = {"Retry-After": "5"} if err.status == 503 else None
            raise ApiError(err.status, err.code, err.message, err.field, headers) from None
        cache = "miss"
    headers = _headers(result, etag, cache, result.model_hash)
    headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return Response(content=result.body, media_type=result.media_type, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Malformed JSON.",
        401: "Missing or wrong API key (when the server has one).",
        404: "Unknown model or job.",
        413: "Request body too large.",
        422: "Invalid field value; the response names the field.",
        429: "Queue full; see Retry-After.",
        503: "Not ready, or out of memory on this request; see Retry-After.",
        504: "No result within the request timeout.",
    }.items()
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_MESH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The mesh (GLB, PLY, or a zip of OBJ + MTL + PNG); a zip of frames with `frames`.",
        "content": {media: _BINARY for media in {*MEDIA_TYPES.values(), ZIP_MEDIA_TYPE}},
        "headers": {
            "ETag": {"schema": {"type": "string"}, "description": "Weak ETag of (model hash, request)."},
            "X-Model-Hash": {"schema": {"type": "string"}, "description": "sha256 of the model's weights."},
            "X-Generation-Ms": {"schema": {"type": "string"}, "description": "Model-worker milliseconds."},
            "X-Cache": {"schema": {"type": "string"}, "description": "hit or miss."},
        },
    },
    304: {"description": "If-None-Match matched the current ETag: nothing was generated."},
    **_ERRORS,
}

# --------------------------------------------------------------------------------------------------
# Routes
# --------------------------------------------------------------------------------------------------

v1 = APIRouter(prefix="/v1", responses={k: v for k, v in _ERRORS.items() if k in (400, 401, 413, 422)})
IfNoneMatch = Annotated[str | None, Header(description="ETag from an earlier response: 304 if unchanged.")]


@v1.post("/generate", response_class=Response, responses=_MESH_RESPONSES, tags=["meshes"])
async def generate(request: Request, body: GenerateRequest, if_none_match: IfNoneMatch = None) -> Response:
    """One prompt to one mesh."""
    engine, settings = _engine(request), _settings(request)
    name = _model_name(engine, body)
    spec = MeshSpec(
        model=name,
        prompts=(body.prompt,),
        walk=((1.0,),),
        frames=False,
        resolution=_resolution(engine, settings, name, body),
        texture=body.texture,
        format=body.format,
    )
    filename = f"{_slug(body.prompt)}.{'zip' if body.format == 'obj' else body.format}"
    return await _answer(request, spec, filename, if_none_match)


@v1.post("/interpolate", response_class=Response, responses=_MESH_RESPONSES, tags=["meshes"])
async def interpolate(
    request: Request, body: InterpolateRequest, if_none_match: IfNoneMatch = None
) -> Response:
    """A blend of prompts (``weights``: one mesh) or a walk through them (``frames``: a zip of meshes).

    With ``frames: N`` the answer is ``application/zip`` holding ``frame_000.<format>`` ... (OBJ frames are
    folders ``frame_000/``) and ``frames.json`` with each frame's weights; frame 0 is the first prompt,
    the last frame the last prompt, and the walk passes through every prompt in order.
    """
    engine, settings = _engine(request), _settings(request)
    name = _model_name(engine, body)
    if body.frames is not None:
        if body.frames > settings.max_frames:
            raise ApiError(
                422,
                "invalid_request",
                f"frames {body.frames} is above this server's limit of {settings.max_frames}",
                "frames",
            )
        walk = tuple(tuple(w) for w in interpolation_weights(len(body.prompts), body.frames))
    else:
        walk = (tuple(body.weights or ()),)
    spec = MeshSpec(
        model=name,
        prompts=tuple(body.prompts),
        walk=walk,
        frames=body.frames is not None,
        resolution=_resolution(engine, settings, name, body),
        texture=body.texture,
        format=body.format,
    )
    stem = _slug(" to ".join(body.prompts[:: len(body.prompts) - 1]))
    ext = "zip" if spec.frames or body.format == "obj" else body.format
    return await _answer(request, spec, f"{stem}.{ext}", if_none_match)


def _model_or_404(engine: Engine, name: str) -> dict[str, Any]:
    if not engine.models():
        raise _not_ready(engine)
    info = engine.model_info(name)
    if info is None:
        raise ApiError(404, "not_found", f"model {name!r} is not loaded", "name")
    return info


ModelNamePath = Annotated[str, PathParam(max_length=64)]


@v1.get("/models", response_model=ModelList, tags=["models"], responses={503: _ERRORS[503]})
async def list_models(request: Request) -> dict[str, Any]:
    """The loaded models (name, weights hash, prompt-set size, training steps)."""
    engine = _engine(request)
    if not engine.models():
        raise _not_ready(engine)
    return {"models": engine.models()}


@v1.get(
    "/models/{name}",
    response_model=ModelInfo,
    tags=["models"],
    responses={404: _ERRORS[404], 503: _ERRORS[503]},
)
async def get_model(request: Request, name: ModelNamePath) -> dict[str, Any]:
    """One loaded model."""
    return _model_or_404(_engine(request), name)


@v1.get(
    "/models/{name}/prompts",
    response_model=PromptList,
    tags=["models"],
    responses={404: _ERRORS[404], 503: _ERRORS[503]},
)
async def model_prompts(
    request: Request,
    name: ModelNamePath,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """The prompt set a model was trained on, a page at a time."""
    engine = _engine(request)
    _model_or_404(engine, name)
    prompts = engine.model_prompts(name) or []
    return {
        "name": name,
        "total": len(prompts),
        "offset": offset,
        "prompts": prompts[offset : offset + limit],
    }


@v1.post(
    "/models",
    response_model=ModelInfo,
    status_code=201,
    tags=["models"],
    responses={
        404: _ERRORS[404],
        409: {"model": ErrorResponse, "description": "Name taken or job not finished."},
        500: {"model": ErrorResponse, "description": "The checkpoint could not be loaded."},
        503: _ERRORS[503],
    },
)
async def load_model(request: Request, body: LoadModelRequest) -> dict[str, Any]:
    """Load a succeeded job's final checkpoint as model ``name`` (it then serves like any other model)."""
    engine = _engine(request)
    if not engine.models():
        raise _not_ready(engine)
    row = await asyncio.to_thread(_jobs(request).store.get, body.job_id)
    if row is None:
        raise ApiError(404, "not_found", f"no job with id {body.job_id!r}", "job_id")
    if row["state"] != "succeeded" or not row["checkpoint"]:
        raise ApiError(
            409, "conflict", f"job {body.job_id} is {row['state']}; only a succeeded job's model loads"
        )
    if engine.model_info(body.name) is not None:
        raise ApiError(409, "conflict", f"a model named {body.name!r} is already loaded", "name")
    try:
        info = await asyncio.wrap_future(engine.load_model(body.name, row["checkpoint"]))
    except GenerationError as err:
        raise ApiError(err.status, err.code, err.message, err.field) from None
    except Exception as err:
        logger.exception("loading job %s's checkpoint failed", body.job_id)
        raise ApiError(500, "internal_error", f"cannot load the job's checkpoint: {err}") from None
    return info


JobIdPath = Annotated[str, PathParam(min_length=1, max_length=64)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Retries with the same key and body return the same job.",
    ),
]
_JOB_ERRORS = {
    404: _ERRORS[404],
    409: {"model": ErrorResponse, "description": "Not possible in the job's state."},
}


@v1.post("/jobs", response_model=JobStatus, status_code=202, tags=["jobs"])
def create_job(
    request: Request, response: Response, body: JobRequest, idempotency_key: IdempotencyKey = None
) -> Any:
    """Queue a training job on a prompt set; it runs in its own process (one at a time by default)."""
    try:
        row, created = _jobs(request).submit(body, idempotency_key)
    except JobError as err:
        raise ApiError(err.status, err.code, err.message, err.field) from None
    response.headers["Location"] = f"/v1/jobs/{row['id']}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return job_status(row)


@v1.get("/jobs", response_model=list[JobStatus], tags=["jobs"])
def list_jobs(
    request: Request,
    state: Annotated[
        str | None, Query(pattern="^(queued|running|succeeded|failed|canceled|interrupted)$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Recent jobs, newest first."""
    return [job_status(row) for row in _jobs(request).store.list(state, limit)]


@v1.get("/jobs/{job_id}", response_model=JobStatus, tags=["jobs"], responses=_JOB_ERRORS)
def get_job(request: Request, job_id: JobIdPath) -> Any:
    """State, progress (0-100), step, loss, timestamps and error of a job."""
    try:
        return job_status(_jobs(request).get(job_id))
    except JobError as err:
        raise ApiError(err.status, err.code, err.message, err.field) from None


@v1.delete(
    "/jobs/{job_id}",
    response_model=JobStatus,
    tags=["jobs"],
    responses={
        **_JOB_ERRORS,
        202: {"model": JobStatus, "description": "Cancel requested; the job is stopping."},
    },
)
def cancel_job(request: Request, response: Response, job_id: JobIdPath) -> Any:
    """Cancel a job: a queued one at once (200); a running one saves a checkpoint and stops (202)."""
    try:
        row = _jobs(request).cancel(job_id)
    except JobError as err:
        raise ApiError(err.status, err.code, err.message, err.field) from None
    if row["state"] == "running":
        response.status_code = 202
    return job_status(row)


@v1.post(
    "/jobs/{job_id}/resume", response_model=JobStatus, status_code=202, tags=["jobs"], responses=_JOB_ERRORS
)
def resume_job(request: Request, job_id: JobIdPath) -> Any:
    """Queue an interrupted (or failed) job again; it continues from its latest checkpoint."""
    try:
        return job_status(_jobs(request).resume(job_id))
    except JobError as err:
        raise ApiError(err.status, err.code, err.message, err.field) from None


probes = APIRouter(tags=["probes"])


@probes.get("/livez")
async def livez() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@probes.get(
    "/readyz", responses={503: {"description": "Loading, failed to load, or the queue is saturated."}}
)
async def readyz(request: Request) -> JSONResponse:
    """Models loaded and warmed up, and the queue not saturated."""
    engine = _engine(request)
    body: dict[str, Any] = {
        "queue_depth": engine.queue_depth(),
        "models": [m["name"] for m in engine.models()],
    }
    if not engine.ready:
        reason = engine.load_error or "loading and warming up the models"
        return JSONResponse({"status": "not_ready", "reason": reason, **body}, status_code=503)
    if engine.saturated():
        return JSONResponse(
            {"status": "not_ready", "reason": "the queue is saturated", **body}, status_code=503
        )
    return JSONResponse({"status": "ready", **body})


@probes.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, 401: _ERRORS[401]},
)
def metrics(request: Request) -> Response:
    """Prometheus metrics (requests by route and status, latencies, queue depth, batch sizes, cache, jobs)."""
    state = request.app.state
    for job_state, count in state.jobs.store.counts().items():
        state.metrics.jobs.labels(job_state).set(count)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


def create_app(
    settings: ServerSettings | None = None, models: Mapping[str, ModelSource] | None = None
) -> FastAPI:
    """The service. ``models`` maps names to generators or loaders (default: the bundled model)."""
    settings = settings or ServerSettings.from_env()
    if models is None:
        device = settings.device
        models = {"default": lambda: Generator.default(device=str(resolve_device(device)))}
    metrics_ = Metrics()
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
                    "Retry-After",
                ],
            )
        )
    middleware.append(Middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes))
    middleware.append(Middleware(ApiKeyMiddleware, api_key=settings.api_key))

    app = FastAPI(
        title="att3d",
        version=importlib.metadata.version("att3d"),
        description="Amortized text-to-3D: a prompt to a textured mesh in one forward pass. See docs/API.md.",
        lifespan=lifespan,
        middleware=middleware,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.jobs = jobs
    app.state.metrics = metrics_
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    app.include_router(v1)
    app.include_router(probes)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

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
            if not _is_public(path) and path not in PROBES:
                for operation in operations.values():
                    operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
        app.openapi_schema = schema
        return schema

    return openapi
