"""Schemathesis fuzzes every operation of the OpenAPI schema against the app served by uvicorn on loopback:
no server error, and every response matches the documented status codes, content types and bodies."""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from server_fakes import isolated_environment, settings_for, tiny_generator

from server.app import create_app

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _app():
    # Jobs stay queued (no training processes) and meshes stay small: each generation takes well under
    # a second. The app is built at import because schemathesis generates the tests from its schema.
    tmp = Path(tempfile.mkdtemp(prefix="att3d-openapi-"))
    atexit.register(shutil.rmtree, tmp, True)
    app_settings = settings_for(tmp, max_running_jobs=0, max_resolution=20, max_frames=2, warmup=False)
    with isolated_environment(tmp):  # the generator's text cache goes to tmp
        return create_app(app_settings, {"default": tiny_generator()})


APP = _app()
schema = schemathesis.openapi.from_dict(APP.openapi())


@pytest.fixture(scope="module")
def base_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(APP, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and APP.state.engine.ready):
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_and_schema_conformance(case, base_url):
    case.call_and_validate(base_url=base_url, checks=CHECKS)
