"""HTTP API of the service (httpx through Starlette's TestClient), on a tiny seeded generator.

Every GLB a test receives goes through the Khronos glTF validator.
"""

from __future__ import annotations

import io
import json
import zipfile

import pytest
import trimesh
from server_fakes import (
    assert_valid_glb,
    isolated_environment,
    settings_for,
    started_client,
    tiny_generator,
)

from att3d.meshing.export import mesh_to_bytes

RES = 16  # the smallest resolution: each mesh takes a fraction of a second


@pytest.fixture(scope="module")
def generator():
    return tiny_generator(prompts=["a red cube", "a blue sphere", "a green cone"])


@pytest.fixture(scope="module")
def client(tmp_path_factory, generator):
    tmp = tmp_path_factory.mktemp("api")
    with isolated_environment(tmp), started_client(settings_for(tmp), {"default": generator}) as client:
        yield client


def _glb(client, prompt: str, **options):
    response = client.post("/v1/generate", json={"prompt": prompt, "resolution": RES, **options})
    assert response.status_code == 200, response.text
    return response


# ---- generate ----------------------------------------------------------------------------------------


def test_generate_returns_a_valid_glb_with_headers(client, generator):
    response = _glb(client, "a red cube")
    assert response.headers["content-type"] == "model/gltf-binary"
    assert response.headers["x-model-hash"] == generator.model_hash
    assert response.headers["x-model-name"] == "default"
    assert float(response.headers["x-generation-ms"]) > 0
    assert response.headers["etag"].startswith('W/"')
    assert response.headers["content-disposition"] == 'attachment; filename="a_red_cube.glb"'
    assert response.content[:4] == b"glTF"
    assert_valid_glb(response.content)
    mesh = trimesh.load(io.BytesIO(response.content), file_type="glb", force="mesh")
    assert len(mesh.faces) > 100


def test_generate_equals_the_generator_run_directly(client, generator):
    """The service adds nothing to the mesh: same bytes as Generator.generate + mesh_to_bytes."""
    import dataclasses

    config = dataclasses.replace(generator.config.mesh, resolution=RES)
    expected = mesh_to_bytes(generator.generate("a green cone", config), "glb")
    assert _glb(client, "a green cone").content == expected


def test_cache_hit_same_bytes_and_if_none_match(client):
    first = _glb(client, "a blue sphere")
    # Surrounding whitespace is not part of the prompt, so this is the same request.
    second = _glb(client, "  a blue sphere ")
    assert second.headers["x-cache"] == "hit"
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    # The cached answer keeps the time of the original generation.
    assert second.headers["x-generation-ms"] == first.headers["x-generation-ms"]
    revalidated = client.post(
        "/v1/generate",
        json={"prompt": "a blue sphere", "resolution": RES},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert revalidated.status_code == 304
    assert revalidated.content == b""
    assert revalidated.headers["etag"] == first.headers["etag"]
    other = client.post(
        "/v1/generate", json={"prompt": "a blue sphere", "resolution": 24}, headers={"If-None-Match": '"x"'}
    )
    assert other.status_code == 200 and other.headers["etag"] != first.headers["etag"]
    assert_valid_glb(other.content)
    metrics = client.get("/metrics").text
    assert 'att3d_cache_lookups_total{result="hit"}' in metrics


def test_obj_ply_and_uv_texture(client):
    obj = _glb(client, "a red cube", format="obj")
    assert obj.headers["content-type"] == "application/zip"
    assert obj.headers["content-disposition"].endswith('.zip"')
    with zipfile.ZipFile(io.BytesIO(obj.content)) as archive:
        assert "mesh.obj" in archive.namelist()
        assert archive.read("mesh.obj").count(b"\nf ") > 100
    ply = _glb(client, "a red cube", format="ply")
    assert ply.headers["content-type"] == "application/x-ply"
    assert ply.content.startswith(b"ply\nformat binary_little_endian")
    uv = _glb(client, "a red cube", texture="uv")
    assert uv.headers["etag"] != obj.headers["etag"] != ply.headers["etag"]
    report_source = uv.content
    assert_valid_glb(report_source)
    gltf = json.loads(report_source[20 : 20 + int.from_bytes(report_source[12:16], "little")])
    assert gltf["images"] and gltf["textures"]


# ---- interpolate -------------------------------------------------------------------------------------


def test_interpolate_endpoint_weights_equal_plain_generation(client):
    pure = client.post(
        "/v1/interpolate",
        json={"prompts": ["a red cube", "a blue sphere"], "weights": [1, 0], "resolution": RES},
    )
    assert pure.status_code == 200, pure.text
    assert pure.content == _glb(client, "a red cube").content
    half = client.post(
        "/v1/interpolate",
        json={"prompts": ["a red cube", "a blue sphere"], "weights": [0.5, 0.5], "resolution": RES},
    )
    assert half.status_code == 200 and half.headers["content-type"] == "model/gltf-binary"
    assert half.content != pure.content
    assert_valid_glb(half.content)


def test_interpolate_frames_is_a_zip_of_glbs(client):
    prompts = ["a red cube", "a blue sphere", "a green cone"]
    response = client.post("/v1/interpolate", json={"prompts": prompts, "frames": 3, "resolution": RES})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        names = sorted(archive.namelist())
        assert names == ["frame_000.glb", "frame_001.glb", "frame_002.glb", "frames.json"]
        manifest = json.loads(archive.read("frames.json"))
        assert manifest["prompts"] == prompts
        assert [f["weights"] for f in manifest["frames"]] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
        frames = [archive.read(f"frame_{i:03d}.glb") for i in range(3)]
    for frame in frames:
        assert_valid_glb(frame)
    # A walk through three prompts visits each of them exactly.
    assert frames[0] == _glb(client, "a red cube").content
    assert frames[2] == _glb(client, "a green cone").content


# ---- bad input ---------------------------------------------------------------------------------------

LONG = "x" * 1001
BAD_REQUESTS = [
    ("/v1/generate", {"prompt": ""}, 422, "prompt", "empty"),
    ("/v1/generate", {"prompt": "   "}, 422, "prompt", "whitespace"),
    ("/v1/generate", {"prompt": LONG}, 422, "prompt", "too long"),
    ("/v1/generate", {"prompt": 42}, 422, "prompt", "string"),
    ("/v1/generate", {"prompt": ["a"]}, 422, "prompt", "string"),
    ("/v1/generate", {}, 422, "prompt", "required"),
    ("/v1/generate", {"prompt": "a", "format": "stl"}, 422, "format", "glb"),
    ("/v1/generate", {"prompt": "a", "texture": "pbr"}, 422, "texture", "vertex"),
    ("/v1/generate", {"prompt": "a", "resolution": 8}, 422, "resolution", "greater than or equal to 16"),
    ("/v1/generate", {"prompt": "a", "resolution": 4096}, 422, "resolution", "less than or equal to 512"),
    ("/v1/generate", {"prompt": "a", "resolution": 64}, 422, "resolution", "limit of 32"),
    ("/v1/generate", {"prompt": "a", "resolution": "32"}, 422, "resolution", "integer"),
    ("/v1/generate", {"prompt": "a", "resolution": True}, 422, "resolution", "integer"),
    ("/v1/generate", {"prompt": "a", "resolution": 24.5}, 422, "resolution", "integer"),
    ("/v1/generate", {"prompt": "a", "model": "nope"}, 404, "model", "not loaded"),
    ("/v1/generate", {"prompt": "a", "model": "../etc"}, 422, "model", "pattern"),
    ("/v1/generate", {"prompt": "a", "promt": "b"}, 422, "promt", "Extra inputs"),
    ("/v1/generate", [1, 2], 422, "body", "dictionary"),
    ("/v1/interpolate", {"prompts": ["a", "b"], "weights": [0.5, 0.6]}, 422, "weights", "sum to 1"),
    ("/v1/interpolate", {"prompts": ["a", "b", "c"], "weights": [0.5, 0.5]}, 422, "weights", "3 prompts"),
    ("/v1/interpolate", {"prompts": ["a", "b"], "weights": [1.5, -0.5]}, 422, "weights.0", "less than"),
    ("/v1/interpolate", {"prompts": ["a", "b"]}, 422, "weights", "exactly one"),
    (
        "/v1/interpolate",
        {"prompts": ["a", "b"], "weights": [0, 1], "frames": 3},
        422,
        "weights",
        "exactly one",
    ),
    ("/v1/interpolate", {"prompts": ["a"], "frames": 3}, 422, "prompts", "at least 2"),
    ("/v1/interpolate", {"prompts": ["a", ""], "frames": 3}, 422, "prompts.1", "empty"),
    ("/v1/interpolate", {"prompts": ["a", "b"], "frames": 1}, 422, "frames", "greater than or equal to 2"),
    ("/v1/interpolate", {"prompts": ["a", "b"], "frames": 9}, 422, "frames", "limit of 4"),
]


@pytest.mark.parametrize(("route", "body", "status", "field", "words"), BAD_REQUESTS)
def test_bad_input_names_the_field(client, route, body, status, field, words):
    response = client.post(route, json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"] in ("invalid_request", "not_found")
    assert field in [f["field"] for f in error["fields"]], error
    assert words in json.dumps(error), error


def test_malformed_json_non_finite_weights_and_wrong_content_type(client):
    malformed = client.post(
        "/v1/generate", content=b'{"prompt": ', headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400
    assert malformed.json()["error"] == "malformed_json"
    nan = client.post(
        "/v1/interpolate",
        content=b'{"prompts": ["a", "b"], "weights": [NaN, 1.0]}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422
    assert nan.json()["fields"][0]["field"] == "weights.0"
    text = client.post("/v1/generate", content=b"a red cube", headers={"content-type": "text/plain"})
    assert text.status_code in (400, 422)


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


def test_unknown_routes_and_methods_are_json(client):
    missing = client.get("/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = client.get("/v1/generate")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


# ---- models, probes, metrics, viewer -----------------------------------------------------------------


def test_models_and_prompts(client, generator):
    models = client.get("/v1/models").json()["models"]
    assert [m["name"] for m in models] == ["default"]
    assert models[0]["model_hash"] == generator.model_hash
    assert models[0]["num_prompts"] == 3 and models[0]["default"] is True
    assert client.get("/v1/models/default").json()["name"] == "default"
    page = client.get("/v1/models/default/prompts", params={"offset": 1, "limit": 1}).json()
    assert page == {"name": "default", "total": 3, "offset": 1, "prompts": ["a blue sphere"]}
    missing = client.get("/v1/models/nope/prompts")
    assert missing.status_code == 404 and missing.json()["fields"][0]["field"] == "name"
    assert client.get("/v1/models/default/prompts", params={"limit": 0}).status_code == 422


def test_probes_and_metrics(client):
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    _glb(client, "a metric cube")
    text = client.get("/metrics").text
    for needle in (
        'att3d_http_requests_total{method="POST",route="/v1/generate",status="200"}',
        'att3d_http_request_duration_seconds_bucket{le="0.005",route="/livez"}',
        "att3d_queue_depth 0.0",
        "att3d_batch_size_count",
        'att3d_generation_seconds_count{outcome="ok"}',
        "att3d_cache_bytes",
        'att3d_jobs{state="queued"}',
        "att3d_ready 1.0",
    ):
        assert needle in text, needle


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


# ---- API key and CORS --------------------------------------------------------------------------------


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
