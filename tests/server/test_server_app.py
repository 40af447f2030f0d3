"""The app as a whole: JSON errors for unknown routes, the viewer page, the OpenAPI schema."""

from __future__ import annotations

import pytest


def test_unknown_routes_and_methods_are_json(client):
    missing = client.get("/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = client.get("/v1/generate")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_viewer_page_and_vendored_model_viewer(client):
    import hashlib

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<model-viewer id="viewer"' in html and 'id="alpha"' in html and 'id="download"' in html
    assert "https://" not in html  # no CDN: everything comes from this server
    script = client.get("/static/vendor/model-viewer/model-viewer.min.js")
    assert script.status_code == 200
    # The pinned @google/model-viewer@4.4.0 dist/model-viewer.min.js (see its README.txt).
    assert (
        hashlib.sha256(script.content).hexdigest()
        == "18b2e711035aa4705ee281530a55dc2338ff05eed3d70ae16d54105282a75ed5"
    )


def test_openapi_lists_every_route(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/generate",
        "/v1/interpolate",
        "/v1/models",
        "/v1/models/{name}/prompts",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/livez",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert "delete" in paths["/v1/jobs/{job_id}"]
    assert "model/gltf-binary" in paths["/v1/generate"]["post"]["responses"]["200"]["content"]
    assert client.get("/docs").status_code == 200


def test_head_answers_like_get_without_a_body(client):
    # Uptime checkers probe with HEAD.
    for path in ("/", "/livez", "/readyz", "/v1/models", "/v1/jobs", "/favicon.ico", "/openapi.json"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code == 200, (path, head.status_code)
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers["content-length"] == get.headers["content-length"], path
    missing = client.head("/v1/models/nope")
    assert missing.status_code == 404 and missing.content == b""


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/v1/jobs", {"GET", "HEAD", "POST"}),
        ("PUT", "/v1/jobs/abc", {"GET", "HEAD", "DELETE"}),
        ("OPTIONS", "/v1/models", {"GET", "HEAD", "POST"}),
        ("DELETE", "/livez", {"GET", "HEAD"}),
        ("GET", "/v1/generate", {"POST"}),
        ("HEAD", "/v1/generate", {"POST"}),
        ("POST", "/static/vendor/model-viewer/model-viewer.min.js", {"GET", "HEAD"}),
    ],
)
def test_405_allow_lists_every_method_of_the_path(client, method, path, allowed):
    response = client.request(method, path)
    assert response.status_code == 405, response.text
    assert set(response.headers["allow"].split(", ")) == allowed
    if method != "HEAD":
        error = response.json()
        assert error["error"] == "method_not_allowed"
        assert method in error["message"] and ", ".join(sorted(allowed)) in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/v1/jobs/"), ("GET", "/v1/models/"), ("POST", "/v1/generate/")],
)
def test_a_trailing_slash_is_a_json_404_never_an_empty_redirect(client, method, path):
    response = client.request(method, path, follow_redirects=False)
    assert response.status_code == 404, (response.status_code, response.headers)
    error = response.json()
    assert error["error"] == "not_found" and path in error["message"]
    assert f"(did you mean {path.rstrip('/')}?)" in error["message"]
