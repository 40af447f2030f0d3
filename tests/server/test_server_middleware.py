"""The middleware: body size limit, API key, CORS."""

from __future__ import annotations

import json

import pytest
from server_fakes import (
    isolated_environment,
    settings_for,
    started_client,
)


def test_body_size_limit(client):
    big = json.dumps({"prompt": "a" * 70_000}).encode()
    response = client.post("/v1/generate", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}'

    streamed = client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


@pytest.fixture(scope="module")
def keyed_client(tmp_path_factory, generator):
    tmp = tmp_path_factory.mktemp("keyed")
    settings = settings_for(tmp, api_key="s3cret", cors_origins=("https://app.example",), warmup=False)
    with isolated_environment(tmp), started_client(settings, {"default": generator}) as client:
        yield client


def test_api_key_required_except_probes(keyed_client):
    client = keyed_client
    for method, path in (
        ("get", "/v1/models"),
        ("get", "/metrics"),
        ("get", "/v1/jobs"),
        ("get", "/v1/nope"),
    ):
        response = getattr(client, method)(path)
        assert response.status_code == 401, path
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
    bad = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 401  # the key is checked before the body is even parsed
    assert client.get("/v1/models", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/models", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
    for path in ("/livez", "/readyz", "/", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    schema = client.get("/openapi.json").json()
    assert "ApiKey" in schema["components"]["securitySchemes"]
    assert schema["paths"]["/v1/generate"]["post"]["security"]
    assert "security" not in schema["paths"]["/livez"]["get"]


def test_cors_only_for_configured_origins(client, keyed_client):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = client.options("/v1/generate", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    assert (
        "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "https://x"}).headers
    )
    opened = keyed_client.options("/v1/generate", headers=preflight)
    assert opened.status_code == 200
    assert opened.headers["access-control-allow-origin"] == "https://app.example"
    other = keyed_client.options("/v1/generate", headers={**preflight, "Origin": "https://evil.example"})
    assert other.headers.get("access-control-allow-origin") != "https://evil.example"
