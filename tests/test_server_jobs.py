"""Training jobs: API, SQLite transitions, the job process, cancel, load the result as a model.

Job processes run the fake trainer of ``server_fakes`` (it saves real tiny checkpoints), so a job takes
about as long as a Python process with torch takes to start.
"""

from __future__ import annotations

import threading
import time

import pytest
from server_fakes import (
    STEP_SECONDS_ENV,
    assert_valid_glb,
    isolated_environment,
    settings_for,
    started_client,
    tiny_config_overrides,
    tiny_generator,
)

from server.job_worker import run_job
from server.jobs import JobStore, build_train_config
from server.schemas import JobRequest


def _job(steps: int = 6, **config) -> dict:
    return {
        "prompts": ["a red cube", "a blue sphere"],
        "config": {"steps": steps, "checkpoint_every": 2, **tiny_config_overrides(), **config},
    }


def _wait(client, job_id: str, until, timeout_s: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if until(status):
            return status
        assert time.monotonic() < deadline, f"job never reached the expected state: {status}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jobs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STEP_SECONDS_ENV, "0.05")
        with isolated_environment(tmp), started_client(settings_for(tmp), {"default": tiny_generator()}) as c:
            yield c


def test_job_lifecycle_idempotency_and_loading_the_result(client):
    body = _job(steps=6)
    created = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lifecycle-1"})
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["state"] in ("queued", "running") and job["total_steps"] == 6
    assert created.headers["location"] == job["status_url"] == f"/v1/jobs/{job['id']}"
    replay = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "lifecycle-1"})
    assert replay.status_code == 202 and replay.json()["id"] == job["id"]
    assert replay.headers["idempotent-replayed"] == "true"
    reused = client.post("/v1/jobs", json=_job(steps=7), headers={"Idempotency-Key": "lifecycle-1"})
    assert reused.status_code == 422 and reused.json()["error"] == "idempotency_key_reused"

    # Not finished yet: it cannot be loaded as a model.
    early = client.post("/v1/models", json={"name": "early", "job_id": job["id"]})
    assert early.status_code in (201, 409)  # 201 only if the fake trainer already finished

    done = _wait(client, job["id"], lambda s: s["state"] in ("succeeded", "failed"))
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
    running = client.post("/v1/jobs", json=_job(steps=400)).json()
    queued = client.post("/v1/jobs", json=_job(steps=5)).json()  # waits: one job at a time
    _wait(client, running["id"], lambda s: s["state"] == "running" and s["step"] >= 3)
    assert client.get(f"/v1/jobs/{queued['id']}").json()["state"] == "queued"

    cancelled = client.delete(f"/v1/jobs/{queued['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "canceled"

    stopping = client.delete(f"/v1/jobs/{running['id']}")
    assert stopping.status_code == 202
    assert stopping.json()["state"] == "running" and stopping.json()["cancel_requested"] is True
    final = _wait(client, running["id"], lambda s: s["state"] != "running")
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
    ({"prompts": ["a"], "config": {"steps": 0}}, "config", "steps"),
    ({"prompts": ["a"], "config": {"steps": "many"}}, "config", "steps"),
    ({"prompts": ["a"], "config": {"optim.nope": 1}}, "config", "nope"),
    ({"prompts": ["a"], "config": {"device": "cuda:7"}}, "config", "set by the server"),
    ({"prompts": ["a"], "config": {"prompts.path": "/etc/passwd"}}, "config", "set by the server"),
    ({"prompts": ["a"], "config": {"prior": "stable-diffusion:/tmp/x"}}, "config", "not allowed"),
    ({"prompts": ["a"], "config": {"bad key!": 1}}, "config", "pattern"),
    ({"prompts": ["a"], "epochs": 3}, "epochs", "Extra inputs"),
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
    long_key = client.post("/v1/jobs", json=_job(), headers={"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 422
    assert long_key.json()["fields"][0]["field"] == "Idempotency-Key"


# ---- the store and the job process, without a server -------------------------------------------------


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite")


def _create(store, tmp_path, steps: int = 4) -> dict:
    from att3d.config import to_dict

    config = build_train_config(JobRequest.model_validate(_job(steps=steps)), settings_for(tmp_path))
    row, created = store.create({"prompts": ["a"]}, to_dict(config), steps, tmp_path / "runs")
    assert created
    return row


def test_store_transitions_are_atomic(store, tmp_path):
    assert store.get(_create(store, tmp_path)["id"])["state"] == "queued"
    claimed: list[dict | None] = []
    threads = [threading.Thread(target=lambda: claimed.append(store.claim_next())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [row for row in claimed if row is not None]
    assert len(winners) == 1 and winners[0]["state"] == "running" and winners[0]["attempts"] == 1
    job_id = winners[0]["id"]
    assert store.finish(job_id, "succeeded") is True
    assert store.finish(job_id, "failed") is False  # only a running job can finish
    assert store.get(job_id)["state"] == "succeeded"
    assert store.resume(job_id)["state"] == "succeeded"  # not resumable
    with pytest.raises(ValueError, match="not a state"):
        store.finish(job_id, "queued")
    assert store.counts()["succeeded"] == 1


def test_worker_outcomes_in_process(store, tmp_path, monkeypatch):
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))
    ok = _create(store, tmp_path)
    store.claim_next()
    assert run_job(store, ok["id"], "server_fakes:fake_train") == "succeeded"
    row = store.get(ok["id"])
    assert row["step"] == 4 and row["checkpoint"].endswith("step_0000004")

    failing = _create(store, tmp_path)
    store.claim_next()
    assert run_job(store, failing["id"], "server_fakes:failing_train") == "failed"
    assert store.get(failing["id"])["error"] == "RuntimeError: fake trainer failure: the prior exploded"

    missing = _create(store, tmp_path)
    store.claim_next()
    assert run_job(store, missing["id"], "server_fakes:no_such_runner") == "failed"
    assert "not a callable" in store.get(missing["id"])["error"]

    # A failed job resumes; a cancel requested while it runs makes it end "canceled".
    assert store.resume(failing["id"])["state"] == "queued"
    store.claim_next()
    store.request_cancel(failing["id"])
    assert run_job(store, failing["id"], "server_fakes:fake_train") == "canceled"
    assert store.get(failing["id"])["state"] == "canceled"


def test_graceful_shutdown_interrupts_and_keeps_the_checkpoint(tmp_path):
    """Stopping the server SIGTERMs the job process: it saves, ends interrupted, and can be resumed."""
    with pytest.MonkeyPatch.context() as patch, isolated_environment(tmp_path):
        patch.setenv(STEP_SECONDS_ENV, "0.05")
        settings = settings_for(tmp_path, warmup=False)
        with started_client(settings, {"default": tiny_generator()}) as client:
            job = client.post("/v1/jobs", json=_job(steps=400)).json()
            _wait(client, job["id"], lambda s: s["state"] == "running" and s["step"] >= 3)
        # The lifespan has ended: the job process was asked to stop and has recorded how it ended.
        row = JobStore(tmp_path / "data" / "jobs.sqlite").get(job["id"])
        assert row["state"] == "interrupted", row
        assert row["step"] >= 3 and row["checkpoint"] and "resume" in row["error"]
