"""Browser test: headless Chromium (Debian's ``chromium``, software WebGL) loads the viewer page, which shows
its default prompt's mesh by itself; then it generates a mesh, and ``<model-viewer>`` must fire ``load`` and
draw something that is not background; a failed blend request leaves the slider at the blend shown.

Driven by ``tools/browser/check_viewer.js`` (npm ``playwright-core``, installed by ``make test`` with
``npm --prefix tools/browser ci``; Chromium by ``apt-get install chromium``). Skipped only when Chromium is
not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from server_fakes import assert_valid_glb, isolated_environment, settings_for, tiny_generator

from server.app import create_app

TOOLS = Path(__file__).resolve().parents[2] / "tools" / "browser"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server_url(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_for(tmp_path, max_resolution=64)
    with isolated_environment(tmp_path):
        app = create_app(settings, {"default": tiny_generator()})
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not (server.started and app.state.engine.ready):
            assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)


def test_head_over_a_real_server(server_url):
    # uvicorn, not the test client: the server itself must accept a HEAD answer without the GET's body.
    for path in ("/", "/livez", "/readyz", "/v1/models", "/static/vendor/model-viewer/model-viewer.min.js"):
        get, head = httpx.get(server_url + path), httpx.head(server_url + path)
        assert head.status_code == get.status_code == 200, (path, head.status_code)
        assert head.content == b"" and head.headers["content-length"] == get.headers["content-length"], path
    assert 'method="HEAD",route="/livez",status="200"' in httpx.get(f"{server_url}/metrics").text


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_viewer_generates_and_model_viewer_draws_the_mesh(server_url):
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("the browser test needs Node.js and playwright-core: run `npm --prefix tools/browser ci`")
    env = {**os.environ, "CHROMIUM": str(CHROMIUM)}
    proc = subprocess.run(
        [node, str(TOOLS / "check_viewer.js"), f"{server_url}/", "a green cone"],
        capture_output=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    result = json.loads(proc.stdout)
    # No empty pane: the default prompt's mesh is shown without a click.
    assert result["firstLoad"]["loads"] >= 1 and result["firstLoad"]["prompt"] == "a red cube", result
    assert result["loads"] >= 3, result  # default, "a green cone", the 0.25 blend
    assert result["viewerErrors"] == [] and result["consoleErrors"] == [], result
    assert result["externalRequests"] == [], result  # nothing from a CDN or anywhere else
    assert result["failedRequests"] == [], result  # the favicon and every script are there
    glb = "model/gltf-binary"
    assert result["meshResponses"] == [
        {"url": f"{server_url}/v1/generate", "status": 200, "contentType": glb},
        {"url": f"{server_url}/v1/generate", "status": 200, "contentType": glb},
        {"url": f"{server_url}/v1/interpolate", "status": 200, "contentType": glb},
        {"url": f"{server_url}/v1/interpolate", "status": 503, "contentType": "application/json"},
    ]
    # The failed 0.75 request: the slider shows the blend on screen (0.25) again, and the error is shown.
    blend = result["blend"]
    assert blend["shown"] == "0.25", blend
    assert blend["afterFailure"]["slider"] == "0.25" and blend["afterFailure"]["label"] == "0.25", blend
    assert "test outage" in blend["afterFailure"]["status"], blend
    image = result["image"]
    assert image["width"] > 100 and image["height"] > 100
    # The mesh covers a good part of the view and is shaded (a blank canvas is one colour).
    assert image["nonBackgroundFraction"] > 0.02, image
    assert image["distinctColours"] > 5, image

    # The bytes the browser showed (now cached) pass the Khronos validator.
    again = httpx.post(
        f"{server_url}/v1/generate", json={"prompt": "a green cone", "resolution": 64}, timeout=60
    )
    assert again.headers["x-cache"] == "hit"
    assert_valid_glb(again.content)


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)
def test_api_docs_render_without_the_internet(server_url):
    # FastAPI's own /docs and /redoc load their scripts from a CDN: blank offline. Ours come with the package.
    node = shutil.which("node")
    if node is None or not (TOOLS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("the browser test needs Node.js and playwright-core: run `npm --prefix tools/browser ci`")
    proc = subprocess.run(
        [node, str(TOOLS / "check_docs.js"), server_url],
        capture_output=True,
        timeout=240,
        env={**os.environ, "CHROMIUM": str(CHROMIUM)},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    pages = json.loads(proc.stdout)
    operations = len(
        [op for ops in httpx.get(f"{server_url}/openapi.json").json()["paths"].values() for op in ops]
    )
    for path in ("/docs", "/redoc"):
        page = pages[path]
        assert page["externalRequests"] == [], page  # nothing from a CDN, fonts or badges
        assert page["consoleErrors"] == [] and page["failedRequests"] == [], page
        assert page["operations"] == operations, page  # every operation of the API is listed
    favicon = httpx.get(f"{server_url}/favicon.ico")
    assert favicon.status_code == 200 and favicon.headers["content-type"] == "image/png"
