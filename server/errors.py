"""The service's one error type, :class:`ServiceError`, and the handlers that answer every error as JSON.

Every error body is :class:`server.schemas.ErrorResponse`: ``{"error": code, "message": ..., "fields":
[{"field", "message"}]}``. Invalid input is 400 (malformed JSON), 404 (unknown model or job), 413 (body too
large), 415 (a body not sent as ``application/json``) or 422 (a field's value), with the field named; server
faults are 5xx, never 404. A 405's ``Allow`` lists every method of the path, not only the first route's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from att3d.limits import RESOLUTION_RANGE
from server.schemas import FRAMES_RANGE, ErrorResponse

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A refused or failed request (a route's check, the model worker, a job transition).

    ``status``, ``code`` and ``field`` shape the :class:`ErrorResponse` it is answered with; ``headers``
    (e.g. ``Retry-After``) go with it.
    """

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


def not_ready(load_error: str | None) -> ServiceError:
    """503 while the models load (or after they failed to: ``load_error`` says why)."""
    reason = load_error or "the models are still loading"
    return ServiceError(503, "not_ready", f"not ready: {reason}", headers={"Retry-After": "5"})


def error_response(
    status: int, code: str, message: str, fields: list[dict[str, str]] | None = None, headers: Any = None
) -> JSONResponse:
    body = ErrorResponse(error=code, message=message, fields=fields or []).model_dump()
    return JSONResponse(body, status_code=status, headers=headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Malformed JSON.",
        401: "Missing or wrong API key (when the server has one).",
        404: "Unknown model or job.",
        413: "Request body too large.",
        415: "The body was not sent as JSON (`Content-Type: application/json`).",
        422: "Invalid field value; the response names the field.",
        429: "Queue full, or too much work ahead to finish before the deadline; see Retry-After.",
        503: "Not ready, overloaded (too slow even alone), or out of memory; see Retry-After.",
        504: "No result within the request timeout.",
    }.items()
}
"""The OpenAPI description of each error status."""
V1_ERROR_RESPONSES = {k: v for k, v in ERROR_RESPONSES.items() if k in (400, 401, 413, 422)}
"""The errors every ``/v1`` route may answer."""
BODY_ERROR_RESPONSES = {415: ERROR_RESPONSES[415]}
"""The errors of a route that reads a JSON body, beyond :data:`V1_ERROR_RESPONSES`."""

_SERVER_LIMITED = {"resolution": (RESOLUTION_RANGE, "max_resolution"), "frames": (FRAMES_RANGE, "max_frames")}
"""Request fields whose schema range a server setting may narrow: field -> (schema range, setting)."""


def limit_error(field: str, value: int) -> RequestValidationError:
    """``field`` is within the schema's bounds but over this server's setting: answered exactly as the
    schema's range error is (the handler states this server's range either way)."""
    return RequestValidationError(
        [{"type": "less_than_equal", "loc": ("body", field), "msg": "over the limit", "input": value}]
    )


def add_error_handlers(app: FastAPI) -> None:
    """Answer validation errors, :class:`ServiceError`, HTTP errors and crashes as ``ErrorResponse``."""
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)


def _field_name(loc: tuple[Any, ...], message: str) -> tuple[str, str]:
    """A readable field path from a pydantic location; model-level checks name the field in the message."""
    parts = [str(p) for p in loc if p not in ("body", "header", "query", "path")]
    # Drop pydantic's internal step names (e.g. "function-after[_prompt(), str]").
    parts = [p for p in parts if not re.match(r"^[\w-]+\[.*\]$", p)]
    match = re.match(r"^([A-Za-z_][\w.-]*): (.*)$", message, re.DOTALL)
    if match and not parts:
        return match.group(1), match.group(2)
    return ".".join(parts) or "body", message


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this media type as JSON (``application/json`` or ``...+json``)."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _not_json(request: Request) -> JSONResponse:
    content_type = request.headers.get("content-type")
    given = f"Content-Type: {content_type}" if content_type else "no Content-Type"
    return error_response(
        415,
        "unsupported_media_type",
        f"the request body must be JSON sent with 'Content-Type: application/json' (this request has "
        f"{given}; with curl, add -H 'Content-Type: application/json')",
        [{"field": "body", "message": "must be sent as application/json"}],
    )


def _range_message(request: Request, error: dict[str, Any]) -> str | None:
    """This server's range for a server-limited field out of range (by the schema or by the setting)."""
    loc = tuple(error.get("loc", ()))
    if error.get("type") not in ("less_than_equal", "greater_than_equal") or len(loc) != 2:
        return None
    limited = _SERVER_LIMITED.get(str(loc[1]))
    if loc[0] != "body" or limited is None:
        return None
    (low, high), setting = limited
    high = min(high, getattr(request.app.state.settings, setting))
    return f"must be from {low} to {high} on this server, got {error.get('input')}"


def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    fields = []
    malformed = False
    errors = exc.errors()
    # FastAPI reads a body not declared as JSON as bytes, which then "should be a valid dictionary".
    if not _is_json(request.headers.get("content-type")) and any(
        tuple(e.get("loc", ())) == ("body",) for e in errors
    ):
        return _not_json(request)
    for error in errors:
        message = str(error.get("msg", "invalid value"))
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        message = _range_message(request, error) or message
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


def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    fields = [{"field": exc.field, "message": exc.message}] if exc.field else []
    return error_response(exc.status, exc.code, exc.message, fields, exc.headers)


def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 400: "bad_request", 413: "body_too_large"}
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    headers = dict(getattr(exc, "headers", None) or {})
    path = request.url.path
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {path}"
        # Trailing slashes are not redirected (a 307 with an empty body helps no client): say what exists.
        if path != "/" and path.endswith("/") and _methods(request, path.rstrip("/")):
            message += f" (did you mean {path.rstrip('/')}?)"
    if exc.status_code == 405:
        # Starlette's Allow names only the first route of the path (/v1/jobs has a GET and a POST route).
        allowed = ", ".join(sorted(_methods(request, path))) or headers.get("Allow", "")
        headers["Allow"] = allowed
        message = f"method {request.method} is not allowed on {path} (allowed: {allowed})"
    fields = [{"field": "body", "message": message}] if exc.status_code == 413 else None
    return error_response(
        exc.status_code, codes.get(exc.status_code, "http_error"), message, fields, headers=headers or None
    )


def _methods(request: Request, path: str) -> set[str]:
    """Every method the app answers on ``path`` (HEAD wherever GET is: see ``server.middleware``).

    Asked route by route through the public ``matches`` (FastAPI nests included routers in its own types).
    """
    root = request.scope.get("app_root_path", "")
    methods = set()
    for route in request.app.router.routes:
        for method in ("GET",) if isinstance(route, Mount) else _METHODS:  # mounts: static files
            scope = {"type": "http", "path": path, "root_path": root, "method": method}
            if route.matches(scope)[0] == Match.FULL:
                methods.add(method)
    return methods | ({"HEAD"} if "GET" in methods else set())


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", f"the server failed ({type(exc).__name__})")
