"""``POST /v1/generate`` and ``/v1/interpolate`` (httpx through Starlette's TestClient), on a tiny seeded
generator: bytes, headers, cache and ETag, bad input.

Every GLB a test receives goes through the Khronos glTF validator.
"""

from __future__ import annotations

import io
import json
import re
import zipfile

import pytest
import trimesh
from server_fakes import (
    assert_valid_glb,
)

from att3d.meshing.export import mesh_to_bytes

RES = 16  # the smallest resolution: each mesh takes a fraction of a second


def _glb(client, prompt: str, **options):
    response = client.post("/v1/generate", json={"prompt": prompt, "resolution": RES, **options})
    assert response.status_code == 200, response.text
    return response


def test_generate_returns_a_valid_glb_with_headers(client, generator):
    response = _glb(client, "a red cube")
    assert response.headers["content-type"] == "model/gltf-binary"
    assert response.headers["x-model-hash"] == generator.model_hash
    assert response.headers["x-model-name"] == "default"
    assert float(response.headers["x-generation-ms"]) > 0
    # The whole sha256 of (model hash, canonical request), as docs/API.md says.
    assert re.fullmatch(r'W/"[0-9a-f]{64}"', response.headers["etag"]), response.headers["etag"]
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


LONG = "x" * 1001


BAD_REQUESTS = [
    ("/v1/generate", {"prompt": ""}, 422, "prompt", "empty"),
    ("/v1/generate", {"prompt": "   "}, 422, "prompt", "whitespace"),
    ("/v1/generate", {"prompt": LONG}, 422, "prompt", "too long"),
    ("/v1/generate", {"prompt": 42}, 422, "prompt", "string"),
    ("/v1/generate", {"prompt": ["a"]}, 422, "prompt", "string"),
    ("/v1/generate", {}, 422, "prompt", "required"),
    ("/v1/generate", {"prompt": "x \udfff"}, 422, "prompt", "lone surrogate U+DFFF"),  # JSON's "\udfff"
    ("/v1/generate", {"prompt": "a", "format": "stl"}, 422, "format", "glb"),
    ("/v1/generate", {"prompt": "a", "texture": "pbr"}, 422, "texture", "vertex"),
    ("/v1/generate", {"prompt": "a", "resolution": 8}, 422, "resolution", "from 16 to 32"),
    ("/v1/generate", {"prompt": "a", "resolution": 4096}, 422, "resolution", "from 16 to 32"),
    ("/v1/generate", {"prompt": "a", "resolution": 64}, 422, "resolution", "from 16 to 32"),
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
    ("/v1/interpolate", {"prompts": ["a", "b"], "frames": 1}, 422, "frames", "from 2 to 4"),
    ("/v1/interpolate", {"prompts": ["a", "b"], "frames": 9}, 422, "frames", "from 2 to 4"),
]


@pytest.mark.parametrize(("route", "body", "status", "field", "words"), BAD_REQUESTS)
def test_bad_input_names_the_field(client, route, body, status, field, words):
    # json.dumps escapes to ASCII: a lone surrogate travels as the JSON escape "\udfff", as clients send it.
    response = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
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
    assert text.status_code == 415


# curl -d sends application/x-www-form-urlencoded; a body without a content type is not declared JSON either.
@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", None])
def test_a_body_not_sent_as_json_is_415_saying_so(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = client.post("/v1/generate", content=b'{"prompt": "a red cube"}', headers=headers)
    assert response.status_code == 415, response.text
    error = response.json()
    assert error["error"] == "unsupported_media_type"
    assert "Content-Type: application/json" in error["message"]
    assert [f["field"] for f in error["fields"]] == ["body"]
    assert (content_type or "no Content-Type") in error["message"]
    # A JSON body of the wrong shape, sent as JSON, is still a 422 about its value.
    array = client.post("/v1/generate", json=[1, 2])
    assert array.status_code == 422 and array.json()["fields"][0]["field"] == "body"


# The schema's bounds (16-512, 2-64) and this server's lower limits (settings_for: 32 and 4) give one message.
@pytest.mark.parametrize(
    ("route", "body", "field", "value", "limits"),
    [
        ("/v1/generate", {"prompt": "a"}, "resolution", 99999, "16 to 32"),
        ("/v1/generate", {"prompt": "a"}, "resolution", 300, "16 to 32"),
        ("/v1/generate", {"prompt": "a"}, "resolution", 33, "16 to 32"),
        ("/v1/generate", {"prompt": "a"}, "resolution", 15, "16 to 32"),
        ("/v1/interpolate", {"prompts": ["a", "b"]}, "frames", 99, "2 to 4"),
        ("/v1/interpolate", {"prompts": ["a", "b"]}, "frames", 5, "2 to 4"),
        ("/v1/interpolate", {"prompts": ["a", "b"]}, "frames", 1, "2 to 4"),
    ],
)
def test_limits_report_this_servers_range_whichever_check_refused(client, route, body, field, value, limits):
    response = client.post(route, json={**body, field: value})
    assert response.status_code == 422, response.text
    detail = f"must be from {limits} on this server, got {value}"
    assert response.json() == {
        "error": "invalid_request",
        "message": f"{field}: {detail}",
        "fields": [{"field": field, "message": detail}],
    }
