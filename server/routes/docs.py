"""``/docs`` (Swagger UI) and ``/redoc`` served from a packaged copy of their assets, and the favicon.

FastAPI's own doc pages load Swagger UI and ReDoc from a CDN, so they stay blank without internet; nothing
the service shows may be downloaded at run time. The scripts and styles come from the ``fastapi-offline``
distribution (only its files are used), mounted under ``/docs-assets``; Google Fonts and the Swagger
validator badge, which would reach out too, are turned off. ReDoc's menu footer always loads its maker's logo
from their CDN, so its script is served with that one address pointed at the local favicon instead.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs-assets"
REDOC_LOGO_URL = "https://cdn.redoc.ly/redoc/logo-mini.svg"
FAVICON = Path(__file__).resolve().parents[1] / "static" / "favicon.png"

router = APIRouter(include_in_schema=False)


def _assets_dir() -> Path:
    return Path(str(resources.files("fastapi_offline") / "static"))


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="att3d API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url="/favicon.ico",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_ui_parameters={"validatorUrl": None},
    )


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@functools.cache
def _offline_redoc_script() -> bytes:
    # A no-op if a later ReDoc drops the address; the browser test then still sees any new outside request.
    script = (_assets_dir() / "redoc.standalone.js").read_text(encoding="utf-8")
    return script.replace(REDOC_LOGO_URL, "/favicon.ico").encode()


@router.get(f"{ASSETS_URL}/redoc.standalone.js")
def redoc_script() -> Response:
    return Response(_offline_redoc_script(), media_type="text/javascript")


@router.get("/redoc")
def redoc() -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title="att3d API",
        redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
        redoc_favicon_url="/favicon.ico",
        with_google_fonts=False,
    )


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(FAVICON, media_type="image/png")


def add_docs(app: FastAPI) -> None:
    """Add the pages and mount the assets (the app must be built with ``docs_url=None, redoc_url=None``)."""
    app.include_router(router)  # before the mount: the rewritten ReDoc script wins over the file
    app.mount(ASSETS_URL, StaticFiles(directory=_assets_dir()), name="docs-assets")
