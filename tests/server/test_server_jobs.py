"""The jobs package without HTTP: SQLite transitions, the job process, and the scheduler's shutdown."""

from __future__ import annotations

import threading

import pytest
from server_fakes import (
    STEP_SECONDS_ENV,
    isolated_environment,
    job_request,
    settings_for,
    started_client,
    tiny_generator,
    wait_for_job,
)

from server.jobs.requests import build_train_config
from server.jobs.store import JobStore
from server.jobs.worker import run_job
from server.schemas import JobRequest


@pytest.fixture
def store(tmp_path):
    return JobStore(tmp_path / "jobs.sqlite")


def _create(store, tmp_path, steps: int = 4) -> dict:
    from att3d.config import to_dict

    config = build_train_config(JobRequest.model_validate(job_request(steps=steps)), settings_for(tmp_path))
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
            job = client.post("/v1/jobs", json=job_request(steps=400)).json()
            wait_for_job(client, job["id"], lambda s: s["state"] == "running" and s["step"] >= 3)
        # The lifespan has ended: the job process was asked to stop and has recorded how it ended.
        row = JobStore(tmp_path / "data" / "jobs.sqlite").get(job["id"])
        assert row["state"] == "interrupted", row
        assert row["step"] >= 3 and row["checkpoint"] and "resume" in row["error"]
