"""The service's one error type, :class:`ServiceError`, and the handlers that answer every error as JSON.

Every error body is :class:`server.schemas.ErrorResponse`: ``{"error": code, "message": ..., "fields":
[{"field", "message"}]}``. Invalid input is 400 (malformed JSON), 404 (unknown model or job), 413 (body too
large) or 422 (a field's value), with the field named; server faults are 5xx, never 404.
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

from server.schemas import ErrorResponse

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
        422: "Invalid field value; the response names the field.",
        429: "Queue full, or too much work ahead to finish before the deadline; see Retry-After.",
        503: "Not ready, overloaded (too slow even alone), or out of memory; see Retry-After.",
        504: "No result within the request timeout.",
    }.items()
}
"""The OpenAPI description of each error status."""
V1_ERROR_RESPONSES = {k: v for k, v in ERROR_RESPONSES.items() if k in (400, 401, 413, 422)}
"""The errors every ``/v1`` route may answer."""


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


def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
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
