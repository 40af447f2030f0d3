"""``/v1/jobs``: the job lifecycle over HTTP, idempotency, cancel, bad requests, loading a job's model.

Job processes run the fake trainer of ``server_fakes`` (it saves real tiny checkpoints), so a job takes
about as long as a Python process with torch takes to start.
"""

from __future__ import annotations

import pytest
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
    tmp = tmp_path_factory.mktemp("jobs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STEP_SECONDS_ENV, "0.05")
        with isolated_environment(tmp), started_client(settings_for(tmp), {"default": tiny_generator()}) as c:
            yield c


def test_job_lifecycle_idempotency_and_loading_the_result(client):
    body = job_request(steps=6)
    created = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lifecycle-1"})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["state"] in ("queued", "running") and job["total_steps"] == 6
    assert created.headers["location"] == job["status_url"] == f"/v1/jobs/{job['id']}"
    replay = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lifecycle-1"})
    assert replay.status_code == 202 and replay.json()["id"] == job["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    reused = client.post("/v1/jobs", json=job_request(steps=7), headers={"Idempotency-Key": "lifecycle-1"})
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"

    # Not finished yet: it cannot be loaded as a model.
    early = client.post("/v1/models", json={"name": "early", "job_id": job["id"]})
    assert early.status_code in (201, 409)  # 201 only if the fake trainer already finished

    done = wait_for_job(client, job["id"], lambda s: s["state"] in ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    assert done["progress"] == 100.0 and done["step"] == 6 and done["attempts"] == 1
    assert done["loss"] == pytest.approx(1 / 6)
    assert done["checkpoint_available"] and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert job["id"] in [j["id"] for j in client.get("/v1/jobs", params={"state": "succeeded"}).json()]

    loaded = client.post("/v1/models", json={"name": "trained", "job_id": job["id"]})
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["training_steps"] == 6 and loaded.json()["num_prompts"] == 2
    mesh = client.post("/v1/generate", json={"prompt": "a red cube", "model": "trained", "resolution": 16})
    assert mesh.status_code == 200 and mesh.headers["x-model-name"] == "trained"
    assert mesh.headers["x-model-hash"] == loaded.json()["model_hash"]
    assert_valid_glb(mesh.content)
    prompts = client.get("/v1/models/trained/prompts").json()["prompts"]
    assert prompts == ["a red cube", "a blue sphere"]
    again = client.post("/v1/models", json={"name": "trained", "job_id": job["id"]})
    assert again.status_code == 409
    # A finished job can be neither cancelled nor resumed.
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409
    assert client.post(f"/v1/jobs/{job['id']}/resume").status_code == 409


def test_cancel_queued_and_running_jobs(client):
    running = client.post("/v1/jobs", json=job_request(steps=400)).json()
    queued = client.post("/v1/jobs", json=job_request(steps=5)).json()  # waits: one job at a time
    wait_for_job(client, running["id"], lambda s: s["state"] == "running" and s["step"] >= 3)
    assert client.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"

    cancelled = client.delete(f"/v1/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "canceled"

    stopping = client.delete(f"/v1/jobs/{running['id']}")
    assert stopping.status_code == 202
    assert stopping.json()["state"] == "running" and stopping.json()["cancel_requested"] is True
    final = wait_for_job(client, running["id"], lambda s: s["state"] != "running")
    assert final["state"] == "canceled", final
    assert 3 <= final["step"] < 400 and final["checkpoint_available"]
    assert client.delete(f"/v1/jobs/{running['id']}").status_code == 200  # idempotent
    # The queued job was never started.
    assert client.get(f"/v1/jobs/{queued['id']}").json()["attempts"] == 0


BAD_JOBS = [
    ({"prompts": []}, "prompts", "at least 1"),
    ({"prompts": [""]}, "prompts.0", "empty"),
    ({"prompts": ["a"], "template": "a {x}", "slots": {"x": ["b"]}}, "prompts", "exactly one"),
    ({"template": "a {color} cube"}, "slots", "values"),
    ({"template": "a {color} cube", "slots": {"shape": ["x"]}}, "template", "color"),
    ({"prompts": ["a", "a"]}, "prompts", "duplicate prompt"),
    ({"prompts": ["a"], "config": {"steps": 0}}, "config", "config.steps: must be in [1, 10000000], got 0"),
    ({"prompts": ["a"], "config": {"steps": "many"}}, "config", "config.steps: expected an integer"),
    ({"prompts": ["a"], "config": {"optim.nope": 1}}, "config", "nope"),
    ({"prompts": ["a"], "config": {"steps.x": 1}}, "config", "config.steps.x: 'steps' is not a section"),
    ({"prompts": ["a"], "config": {"device": "cuda:7"}}, "config", "set by the server"),
    ({"prompts": ["a"], "config": {"prompts.path": "/etc/passwd"}}, "config", "set by the server"),
    ({"prompts": ["a"], "config": {"prior": "stable-diffusion:/tmp/x"}}, "config", "not allowed"),
    ({"prompts": ["a"], "config": {"bad key!": 1}}, "config", "pattern"),
    # Every value is bounded before the job is queued (these were accepted once, then failed or hung later).
    ({"prompts": ["a"], "config": {"steps": 2**63}}, "config", "config.steps: must be in [1, 10000000]"),
    ({"prompts": ["a"], "config": {"model.field.num_bases": 10**9}}, "config", "num_bases: must be in [1, 1"),
    (
        {"prompts": ["a"], "config": {"model.render.image_size": 10**6}},
        "config",
        "image_size: must be in [1, 1024]",
    ),
    ({"prompts": ["a"], "config": {"optim.grid_lr": "nan"}}, "config", "grid_lr: must be a finite number"),
    (
        {"prompts": ["a"], "config": {"model.text.encoder": "../x"}},
        "config",
        "text.encoder: must be an encoder",
    ),
    ({"prompts": ["a"], "epochs": 3}, "epochs", "Extra inputs"),
    # 10^12 combinations in ~30 KB: refused by their count, never expanded.
    (
        {"template": "{a} {b} {c} {d}", "slots": {k: [f"{k}{i}" for i in range(1000)] for k in "abcd"}},
        "template",
        "prompts.template: 1000000000000 combinations; the limit is 10000",
    ),
]


@pytest.mark.parametrize(("body", "field", "words"), BAD_JOBS)
def test_bad_job_requests(client, body, field, words):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert any(f["field"].startswith(field) for f in error["fields"]), error
    assert words in response.text


def test_unknown_jobs_are_404_and_long_keys_422(client):
    for response in (
        client.get("/v1/jobs/nope"),
        client.delete("/v1/jobs/nope"),
        client.post("/v1/jobs/nope/resume"),
        client.post("/v1/models", json={"name": "x", "job_id": "nope"}),
    ):
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    long_key = client.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 422
    assert long_key.json()["fields"][0]["field"] == "Idempotency-Key"


def test_queued_jobs_are_capped_with_retry_after(tmp_path):
    # No job runs (max_running_jobs=0), so every accepted job stays queued.
    settings = settings_for(tmp_path, max_running_jobs=0, max_queued_jobs=2)
    with isolated_environment(tmp_path), started_client(settings, {"default": tiny_generator()}) as client:
        first = client.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "first"})
        assert first.status_code == 202
        assert client.post("/v1/jobs", json=job_request(steps=4)).status_code == 202
        refused = client.post("/v1/jobs", json=job_request(steps=8))
        assert refused.status_code == 429, refused.text
        assert refused.headers["Retry-After"] == "60"
        assert refused.json()["error"] == "too_many_jobs"
        assert "2 jobs are queued already (the limit is 2)" in refused.json()["message"]
        # A retry of an accepted request still answers with its job; the refused one left nothing behind.
        replay = client.post("/v1/jobs", json=job_request(), headers={"Idempotency-Key": "first"})
        assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]
        assert len(client.get("/v1/jobs").json()) == 2
        # Once a job leaves the queue, there is room again.
        assert client.delete(f"/v1/jobs/{first.json()['id']}").status_code == 200
        assert client.post("/v1/jobs", json=job_request(steps=8)).status_code == 202
