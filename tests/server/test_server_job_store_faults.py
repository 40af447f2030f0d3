"""The job store (``jobs.sqlite``) deleted, overwritten or truncated while the server and a job run, and a
server started on a damaged one: 503 ``job_store_unavailable`` and a not-ready ``/readyz`` instead of 500s,
a trainer that keeps training and checkpointing, recovery once the file is back, and a fresh store (the
damaged one moved aside, jobs re-created from their run folders) at start-up."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from server_fakes import (
    BREAK_FILE_ENV,
    GARBAGE,
    STEP_SECONDS_ENV,
    isolated_environment,
    job_request,
    settings_for,
    started_client,
    tiny_generator,
    wait_for_job,
)

from att3d.config import to_dict
from att3d.training.run_folder import checkpoint_dir, list_checkpoints
from server.jobs.requests import build_train_config
from server.jobs.scheduler import JobManager
from server.jobs.store import JobStore
from server.jobs.worker import run_job
from server.schemas import JobRequest


def _backup(db: Path, to: Path) -> Path:
    """A consistent copy of a live database (SQLite's backup API, WAL included)."""
    with contextlib.closing(sqlite3.connect(db)) as source, contextlib.closing(sqlite3.connect(to)) as dest:
        source.backup(dest)
    return to


def _break(db: Path, fault: str) -> None:
    if fault == "deleted":
        db.unlink()
    elif fault == "garbage":
        db.write_bytes(GARBAGE)
    elif fault == "emptied":
        db.write_bytes(b"")
    elif fault == "truncated":
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 2)
    else:
        raise AssertionError(fault)


def _restore(db: Path, backup: Path) -> None:
    for stale in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(backup, db)


def _store_warnings(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


def _assert_unavailable(response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "job_store_unavailable", response.text
    assert int(response.headers["Retry-After"]) > 0


@pytest.mark.parametrize("fault", ["deleted", "garbage", "emptied", "truncated"])
def test_a_broken_store_answers_503_not_ready_and_recovers(tmp_path, fault, caplog):
    caplog.set_level(logging.INFO)
    settings = settings_for(tmp_path, warmup=False, max_running_jobs=0)  # jobs stay queued: no processes
    db = settings.data_dir / "jobs.sqlite"
    with isolated_environment(tmp_path), started_client(settings, {"default": tiny_generator()}) as client:
        job = client.post("/v1/jobs", json=job_request()).json()
        backup = _backup(db, tmp_path / "backup.sqlite")
        _break(db, fault)

        for method, url in (
            ("GET", "/v1/jobs"),
            ("GET", f"/v1/jobs/{job['id']}"),
            ("DELETE", f"/v1/jobs/{job['id']}"),
            ("POST", f"/v1/jobs/{job['id']}/resume"),
        ):
            _assert_unavailable(client.request(method, url))
        _assert_unavailable(client.post("/v1/jobs", json=job_request()))
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert "job store" in ready.json()["reason"] and str(db) in ready.json()["reason"]
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "att3d_job_store_up 0.0" in metrics.text and "att3d_jobs{" not in metrics.text
        assert client.get("/livez").status_code == 200 and client.get("/v1/models").status_code == 200
        time.sleep(1.0)  # several scheduler ticks against the broken store
        assert client.app.state.jobs._thread.is_alive()
        assert len(_store_warnings(caplog, "server.jobs.scheduler")) == 1, caplog.text  # once, not per tick

        _restore(db, backup)
        assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        assert "att3d_job_store_up 1.0" in metrics and 'att3d_jobs{state="queued"} 1.0' in metrics
        deadline = time.monotonic() + 30  # a bound on polling, generous for a loaded CI machine
        while "usable again" not in caplog.text:  # the scheduler saw it come back
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)


@pytest.mark.parametrize("restored", ["mid_run", "after_exit"])
def test_a_running_job_survives_its_store_being_overwritten(tmp_path, restored):
    """The job process keeps training while its progress writes fail, and the job ends succeeded: recorded
    by the job process itself (store back mid-run) or by the scheduler from the run folder (back after the
    process has exited, unreaped until then)."""
    with pytest.MonkeyPatch.context() as patch, isolated_environment(tmp_path):
        patch.setenv(STEP_SECONDS_ENV, "0.05")
        settings = settings_for(tmp_path, warmup=False)
        db = settings.data_dir / "jobs.sqlite"
        with started_client(settings, {"default": tiny_generator()}) as client:
            job = client.post("/v1/jobs", json=job_request(steps=60)).json()
            wait_for_job(client, job["id"], lambda s: s["state"] == "running" and s["step"] >= 3)
            backup = _backup(db, tmp_path / "backup.sqlite")
            _break(db, "garbage")
            assert "job store" in client.get("/readyz").json()["reason"]
            time.sleep(1.0)  # ~20 steps whose progress cannot be written
            if restored == "after_exit":
                proc = client.app.state.jobs._running[job["id"]].proc
                assert proc.wait(60) == 0
                time.sleep(0.5)  # scheduler ticks that cannot record it
                assert job["id"] in client.app.state.jobs._running
            _restore(db, backup)
            final = wait_for_job(client, job["id"], lambda s: s["state"] != "running", timeout_s=60)
    assert final["state"] == "succeeded" and final["step"] == 60 and final["checkpoint_available"], final
    run_dir = settings.data_dir / "runs" / job["id"]
    assert list_checkpoints(run_dir)[-1][0] == 60
    log = (run_dir / "worker.log").read_text()
    assert "Traceback" not in log, log


def _job(store: JobStore, data_dir: Path, steps: int = 6) -> dict:
    config = build_train_config(JobRequest.model_validate(job_request(steps=steps)), settings_for(data_dir))
    row, _ = store.create({"prompts": ["a"]}, to_dict(config), steps, data_dir / "runs")
    assert store.claim_next()["id"] == row["id"]
    return row


def test_job_process_checkpoints_when_the_store_breaks_and_the_run_folder_keeps_the_outcome(
    tmp_path, monkeypatch, caplog
):
    """In process: the store is overwritten at step 2 of 6; training goes on, every checkpoint is written,
    the outcome goes to the run folder, and the server records it once the store is back."""
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))
    settings = settings_for(tmp_path)
    db = settings.data_dir / "jobs.sqlite"
    store = JobStore(db)
    job = _job(store, settings.data_dir)
    backup = _backup(db, tmp_path / "backup.sqlite")  # the job running, no process recorded yet
    monkeypatch.setenv(BREAK_FILE_ENV, f"2:{db}")
    monkeypatch.setattr("server.jobs.worker.PROGRESS_EVERY_S", 0.0)  # a write attempt at every step
    assert run_job(store, job["id"], "server_fakes:fake_train") == "succeeded"
    run_dir = settings.data_dir / "runs" / job["id"]
    assert [step for step, _ in list_checkpoints(run_dir)] == [2, 4, 6]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["state"] == "succeeded" and result["step"] == 6
    warnings = _store_warnings(caplog, "server.jobs.worker")
    assert len(warnings) == 2, warnings  # one for the progress writes (not one per step), one for the result
    assert any("progress" in w for w in warnings) and any("result.json" in w for w in warnings)

    _restore(db, backup)
    JobManager(settings).recover()  # what a (re)started server does: the run folder's outcome is recorded
    row = JobStore(db).get(job["id"])
    assert row["state"] == "succeeded" and row["step"] == 6, row
    assert row["checkpoint"] == str(checkpoint_dir(run_dir, 6))


def _damage(db: Path, damage: str) -> None:
    if damage == "wrong_schema":
        db.unlink()
        with contextlib.closing(sqlite3.connect(db)) as other:
            other.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT)")
            other.commit()
    else:
        _break(db, damage)


@pytest.mark.parametrize("damage", ["garbage", "emptied", "truncated", "wrong_schema"])
def test_start_on_a_damaged_store_moves_it_aside_and_recreates_jobs_from_run_folders(
    tmp_path, damage, monkeypatch, caplog
):
    monkeypatch.setenv("ATT3D_CACHE", str(tmp_path / "cache"))
    settings = settings_for(tmp_path, warmup=False, max_running_jobs=0)
    data = settings.data_dir
    db = data / "jobs.sqlite"
    store = JobStore(db)
    done = _job(store, data)
    assert run_job(store, done["id"], "server_fakes:fake_train") == "succeeded"
    crashed = _job(store, data)
    assert run_job(store, crashed["id"], "server_fakes:fake_train") == "succeeded"
    # As if the process died after its checkpoint at step 4: no outcome, no later checkpoint.
    (data / "runs" / crashed["id"] / "result.json").unlink()
    shutil.rmtree(checkpoint_dir(data / "runs" / crashed["id"], 6))
    # A run folder of the real trainer from before job records existed: only its config.yaml.
    old = "0123456789abcdef0123456789abcdef"
    config = build_train_config(JobRequest.model_validate(job_request(steps=8)), settings)
    (data / "runs" / old).mkdir()
    (data / "runs" / old / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    lost = "fedcba9876543210fedcba9876543210"
    (data / "runs" / lost).mkdir()
    for _ in range(20):  # enough rows that half the file loses pages
        store.create({"prompts": ["a"]}, to_dict(config), 8, data / "runs")
    _damage(db, damage)
    damaged = db.read_bytes()

    caplog.set_level(logging.INFO)
    with isolated_environment(tmp_path), started_client(settings, {"default": tiny_generator()}) as client:
        assert client.get("/readyz").status_code == 200
        jobs = {job["id"]: job for job in client.get("/v1/jobs").json()}
        assert client.post(f"/v1/jobs/{crashed['id']}/resume").status_code == 202
    assert set(jobs) == {done["id"], crashed["id"], old}
    assert jobs[done["id"]]["state"] == "succeeded" and jobs[done["id"]]["step"] == 6
    assert jobs[done["id"]]["checkpoint_available"]
    assert jobs[crashed["id"]]["state"] == "interrupted" and jobs[crashed["id"]]["step"] == 4
    assert jobs[old]["state"] == "interrupted" and jobs[old]["total_steps"] == 8

    moved = list(data.glob("jobs.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == damaged
    lines = _store_warnings(caplog, "server.jobs.scheduler")
    assert len(lines) == 1, lines
    assert str(moved[0]) in lines[0] and "3 jobs re-created" in lines[0] and lost in lines[0], lines[0]
    assert "Traceback" not in caplog.text
