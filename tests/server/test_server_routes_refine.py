"""``/v1/refine`` and the meshes of refine jobs: the job kind end to end over HTTP.

Job processes run ``server_fakes.fake_refine`` (steps, previews, checkpoints and a result box, no torch
work) except in the last test, which runs the real refine runner on the tiny generator.
"""

from __future__ import annotations

import pytest
import trimesh
from server_fakes import (
    STEP_SECONDS_ENV,
    assert_valid_glb,
    isolated_environment,
    job_request,
    settings_for,
    started_client,
    tiny_generator,
    wait_for_job,
)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refine")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STEP_SECONDS_ENV, "0.05")
        with isolated_environment(tmp), started_client(settings_for(tmp), {"default": tiny_generator()}) as c:
            yield c


def _box_side(data: bytes) -> float:
    mesh = trimesh.load(trimesh.util.wrap_as_stream(data), file_type="glb", force="mesh")
    return float(mesh.extents[0])


def test_refine_job_lifecycle_result_and_preview(client):
    created = client.post("/v1/refine", json={"prompt": " a red cube ", "steps": 8, "preview_every": 2})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["kind"] == "refine" and job["total_steps"] == 8
    assert created.headers["location"] == job["status_url"] == f"/v1/jobs/{job['id']}"
    assert job["result_url"] == f"/v1/jobs/{job['id']}/result"
    assert job["preview_url"] == f"/v1/jobs/{job['id']}/preview"
    early = client.get(job["result_url"])
    if early.status_code == 409:  # not done yet: the state is named
        assert early.headers["x-job-state"] in ("queued", "running")
        assert early.json()["error"] == "conflict" and "succeeded" in early.json()["message"]

    running = wait_for_job(client, job["id"], lambda s: s["state"] == "running" and s["step"] >= 2)
    assert 0 < running["progress"] <= 100
    assert running["preview_available"] == (client.get(job["preview_url"]).status_code == 200)
    preview = wait_for_job(client, job["id"], lambda s: s["preview_available"])
    assert preview["state"] in ("running", "succeeded")
    assert client.get(job["preview_url"]).status_code == 200
    done = wait_for_job(client, job["id"], lambda s: s["state"] == "succeeded")
    assert done["progress"] == 100 and done["step"] == 8 and done["checkpoint_available"]

    result = client.get(job["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "model/gltf-binary"
    assert result.headers["x-job-state"] == "succeeded"
    assert_valid_glb(result.content)
    assert _box_side(result.content) == pytest.approx(0.1 + 0.01 * 8)  # the fake's result after 8 steps
    latest = client.get(job["preview_url"])
    assert latest.status_code == 200 and _box_side(latest.content) == pytest.approx(0.18)
    # A client holding the latest preview is told so without the bytes.
    unchanged = client.get(job["preview_url"], headers={"If-None-Match": latest.headers["etag"]})
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == latest.headers["etag"]
    listed = {j["id"]: j for j in client.get("/v1/jobs").json()}
    assert listed[job["id"]]["kind"] == "refine"

    # A refine job's checkpoint is one prompt's field, not a model: loading it as one is 409 naming it.
    loaded = client.post("/v1/models", json={"name": "refined", "job_id": job["id"]})
    assert loaded.status_code == 409 and loaded.json()["fields"][0]["field"] == "job_id"
    assert "refine job" in loaded.json()["message"] and "/result" in loaded.json()["message"]
    assert "refined" not in {m["name"] for m in client.get("/v1/models").json()["models"]}

    # A training job has no mesh: 409 naming it.
    train = client.post("/v1/jobs", json=job_request(steps=2)).json()
    assert train["kind"] == "train" and train["result_url"] is None
    refused = client.get(f"/v1/jobs/{train['id']}/result")
    assert refused.status_code == 409 and "training job" in refused.json()["message"]
    wait_for_job(client, train["id"], lambda s: s["state"] == "succeeded")


def test_refine_result_format_cancel_and_resume(client):
    ply = client.post("/v1/refine", json={"prompt": "a blue sphere", "steps": 3, "format": "ply"}).json()
    wait_for_job(client, ply["id"], lambda s: s["state"] == "succeeded")
    result = client.get(ply["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/x-ply"
    assert result.content.startswith(b"ply")

    long = client.post("/v1/refine", json={"prompt": "a green cone", "steps": 400, "preview_every": 0}).json()
    wait_for_job(client, long["id"], lambda s: s["state"] == "running" and s["step"] >= 3)
    assert client.get(long["preview_url"]).status_code == 404  # no preview asked for
    assert client.delete(f"/v1/jobs/{long['id']}").status_code == 202
    cancelled = wait_for_job(client, long["id"], lambda s: s["state"] != "running")
    assert cancelled["state"] == "canceled" and cancelled["checkpoint_available"]
    refused = client.get(long["result_url"])
    assert refused.status_code == 409 and refused.headers["x-job-state"] == "canceled"
    assert "canceled" in refused.json()["message"]
    # Only interrupted or failed jobs resume, refine jobs as training jobs.
    assert client.post(f"/v1/jobs/{long['id']}/resume").status_code == 409


def test_refine_jobs_share_the_queue_and_the_running_cap(client):
    train = client.post("/v1/jobs", json=job_request(steps=40)).json()
    refine = client.post("/v1/refine", json={"prompt": "a red cube", "steps": 2}).json()
    wait_for_job(client, train["id"], lambda s: s["state"] == "running")
    assert client.get(f"/v1/jobs/{refine['id']}").json()["state"] == "queued"  # one job at a time
    assert client.delete(f"/v1/jobs/{train['id']}").status_code == 202
    wait_for_job(client, refine["id"], lambda s: s["state"] == "succeeded")


BAD_REFINES = [
    ({"prompt": "a red cube", "steps": 0}, "steps", "greater than or equal to 1"),
    ({"prompt": "a red cube", "steps": 10001}, "steps", "less than or equal to 10000"),
    ({"prompt": "a red cube", "steps": "64"}, "steps", "integer"),
    ({"prompt": "   "}, "prompt", "whitespace"),
    ({"prompt": "x" * 1001}, "prompt", "1000"),
    ({"prompt": "a red cube", "model": "nope"}, "model", "'nope' is not loaded"),
    ({"prompt": "a red cube", "model": "../x"}, "model", "pattern"),
    ({"prompt": "a red cube", "format": "stl"}, "format", "glb"),
    ({"prompt": "a red cube", "resolution": 4096}, "resolution", "must be from 16 to 32 on this server"),
    ({"prompt": "a red cube", "resolution": 64}, "resolution", "above this server's limit 32"),
    ({"prompt": "a red cube", "freeze_head": "yes"}, "freeze_head", "boolean"),
    ({"prompt": "a red cube", "lr": 1}, "lr", "Extra inputs"),
    ({"prompt": "a red cube", "prior_text": "canonical"}, "prior_text", "'prompt' or 'nearest'"),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD_REFINES)
def test_bad_refine_requests_are_422_naming_the_field(client, body, field, words):
    response = client.post("/v1/refine", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["error"] == "invalid_request"
    assert [f["field"] for f in error["fields"]] == [field]
    assert words in error["fields"][0]["message"] or words in error["message"], error


def test_unknown_job_result_is_404(client):
    assert client.get("/v1/jobs/nope/result").status_code == 404
    assert client.get("/v1/jobs/nope/preview").status_code == 404


def test_real_refine_runner_on_the_tiny_generator(tmp_path):
    """The real runner in a job process: the tiny generator's field refined for 3 steps and meshed."""
    settings = settings_for(tmp_path, refine_runner="server_fakes:real_refine", job_device="cpu")
    with isolated_environment(tmp_path), started_client(settings, {"default": tiny_generator()}) as client:
        job = client.post("/v1/refine", json={"prompt": "a red cube", "steps": 3, "preview_every": 3}).json()
        done = wait_for_job(client, job["id"], lambda s: s["state"] not in ("queued", "running"), 240)
        assert done["state"] == "succeeded", done
        assert done["step"] == 3 and done["checkpoint_available"]
        result = client.get(job["result_url"])
        assert result.status_code == 200
        assert_valid_glb(result.content)
        assert client.get(job["preview_url"]).content == result.content  # the last preview is the result


def test_prior_text_reaches_the_stored_refine_config(tmp_path):
    from server.jobs.refine_requests import build_refine_job
    from server.schemas import RefineRequest

    model = {"name": "default", "model_hash": "0" * 64, "default_resolution": 32}
    settings = settings_for(tmp_path)
    chosen = build_refine_job(
        RefineRequest(prompt="a red cube", prior_text="prompt"), settings, model, "shapes"
    )
    default = build_refine_job(RefineRequest(prompt="a red cube"), settings, model, "shapes")
    assert chosen["refine"]["prior_text"] == "prompt"
    assert default["refine"]["prior_text"] == "nearest"  # RefineConfig's default
