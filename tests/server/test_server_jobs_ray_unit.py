"""The job backends without a cluster (plain run): settings, backend selection, the store's migration, and
the Ray backend against a stand-in for Ray's ``JobSubmissionClient`` (submission, status mapping, restart).
Nothing here imports Ray; one test checks that in a fresh interpreter."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from server_fakes import job_request, settings_for

from server.errors import ServiceError
from server.jobs.launchers import Exit, LaunchError
from server.jobs.local_launcher import LocalLauncher
from server.jobs.ray_launcher import RayJobHandle, RayLauncher
from server.jobs.requests import build_train_config
from server.jobs.scheduler import JobManager, make_launcher
from server.jobs.store import JobStore
from server.schemas import JobRequest
from server.settings import ServerSettings, SettingsError


def test_backend_settings_from_the_environment():
    settings = ServerSettings.from_env(
        {
            "ATT3D_JOB_BACKEND": "ray",
            "ATT3D_RAY_ADDRESS": "http://10.0.0.5:8265",
            "ATT3D_RAY_JOB_NUM_GPUS": "1",
        }
    )
    assert (settings.job_backend, settings.ray_address, settings.ray_job_num_gpus) == (
        "ray",
        "http://10.0.0.5:8265",
        1.0,
    )
    assert ServerSettings().job_backend == "local" and ServerSettings().max_job_workers == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"job_backend": "slurm"}, "job_backend must be 'local' or 'ray', got 'slurm'"),
        ({"ray_address": "http://head:8265"}, "ray_address is used only with job_backend='ray'"),
        ({"ray_job_num_cpus": -1.0}, "ray_job_num_cpus must be >= 0, got -1.0"),
        ({"max_job_workers": 0}, "max_job_workers must be >= 1, got 0"),
        ({"max_job_workers": 2}, "max_job_workers=2 needs a runner that starts that many processes"),
    ],
)
def test_backend_settings_are_checked(values, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServerSettings(**values)


def test_a_job_asks_for_at_most_max_job_workers_processes(tmp_path):
    request = JobRequest.model_validate(job_request(workers=2))
    with pytest.raises(ServiceError, match=r"config.workers: 2 training processes; this server's limit is 1"):
        build_train_config(request, settings_for(tmp_path))
    ray_runner = settings_for(tmp_path, job_runner="att3d.training.ray_train:train", max_job_workers=2)
    assert build_train_config(request, ray_runner).workers == 2
    assert build_train_config(JobRequest.model_validate(job_request()), ray_runner).workers == 1


def test_the_backend_is_chosen_by_the_setting(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite")
    assert isinstance(make_launcher(ServerSettings(), store), LocalLauncher)
    ray = make_launcher(ServerSettings(job_backend="ray", ray_address="http://127.0.0.1:1"), store)
    assert isinstance(ray, RayLauncher) and ray.outlives_server
    assert not make_launcher(ServerSettings(job_backend="ray"), store).outlives_server  # a cluster of its own


def test_nothing_imports_ray_until_a_ray_job_is_submitted(tmp_path):
    code = (
        "import sys\n"
        "import server.app, att3d.commands.app, att3d.training.ray_train\n"
        "from server.jobs.scheduler import JobManager\n"
        "from server.settings import ServerSettings\n"
        f"JobManager(ServerSettings(data_dir={str(tmp_path)!r}, job_backend='ray'))\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


_OLD_SCHEMA = """
CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, request TEXT NOT NULL, config TEXT NOT NULL,
    run_dir TEXT NOT NULL, total_steps INTEGER NOT NULL, step INTEGER NOT NULL DEFAULT 0, loss REAL,
    error TEXT, checkpoint TEXT, attempts INTEGER NOT NULL DEFAULT 0, pid INTEGER, pid_start TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_requested_at REAL, created_at REAL NOT NULL,
    started_at REAL, updated_at REAL NOT NULL, finished_at REAL);
CREATE TABLE idempotency_keys (key TEXT PRIMARY KEY, request_sha256 TEXT NOT NULL, job_id TEXT NOT NULL,
    created_at REAL NOT NULL);
INSERT INTO jobs (id, state, request, config, run_dir, total_steps, created_at, updated_at)
    VALUES ('a' , 'queued', '{}', '{}', '/runs/a', 5, 1.0, 1.0);
"""


def test_a_store_of_the_previous_schema_is_migrated_in_place(tmp_path):
    path = tmp_path / "jobs.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
    store = JobStore(path)
    assert store.damage() is None and store.get("a")["submission_id"] is None
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert store.claim_next()["id"] == "a"
    store.set_submission("a", "att3d-a-1")
    assert store.get("a")["submission_id"] == "att3d-a-1"
    JobStore(path)  # opening a migrated store again changes nothing
    assert store.get("a")["submission_id"] == "att3d-a-1" and store.get("a")["total_steps"] == 5


class FakeRayJobs:
    """Ray's ``JobSubmissionClient`` as far as the backend uses it; statuses are set by the test."""

    def __init__(self, store: JobStore | None = None) -> None:
        self.store = store
        self.jobs: dict[str, dict] = {}
        self.refusals = 0
        self.stopped: list[str] = []
        self.down = False

    def submit_job(self, *, entrypoint, submission_id, runtime_env, entrypoint_num_cpus, **kwargs):
        if self.refusals:
            self.refusals -= 1
            raise RuntimeError(
                "Request failed with status code 500: No available agent, please try again later."
            )
        job_id = kwargs["metadata"]["att3d_job"]
        recorded = self.store.get(job_id)["submission_id"] if self.store else None
        self.jobs[submission_id] = {
            "entrypoint": entrypoint,
            "env": runtime_env["env_vars"],
            "cpus": entrypoint_num_cpus,
            "recorded_before": recorded,
            "info": SimpleNamespace(status="RUNNING", driver_exit_code=None, message=""),
        }
        return submission_id

    def get_job_info(self, sid):
        if self.down:
            raise ConnectionError("Failed to connect to Ray at address: http://127.0.0.1:1.")
        if sid not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not exist.")
        return self.jobs[sid]["info"]

    def stop_job(self, sid):
        self.stopped.append(sid)
        return True

    def end(self, sid, status, code=None, message=""):
        self.jobs[sid]["info"] = SimpleNamespace(status=status, driver_exit_code=code, message=message)


def _ray_manager(tmp_path, client: FakeRayJobs, **overrides) -> JobManager:
    values = {"job_backend": "ray", "ray_address": "http://127.0.0.1:1", "ray_job_num_cpus": 2.0} | overrides
    settings = settings_for(tmp_path, **values)
    manager = JobManager(settings, poll_s=0.05)
    manager.launcher._client = client
    client.store = manager.store
    return manager


def _until(manager, job_id, until, timeout_s: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while not until(row := manager.get(job_id)):
        assert time.monotonic() < deadline, row
        time.sleep(0.02)
    return row


def test_a_ray_job_is_submitted_with_the_job_process_and_its_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATT3D_CACHE", "/somewhere/cache")
    monkeypatch.setenv("UNRELATED_SECRET", "x")
    monkeypatch.setattr("server.jobs.ray_launcher.SUBMIT_RETRY_DELAY_S", 0.01)
    client = FakeRayJobs()
    client.refusals = 2  # the cluster's job agent is still starting
    manager = _ray_manager(tmp_path, client)
    manager.start()
    try:
        job, _ = manager.submit(JobRequest.model_validate(job_request()), None)
        sid = f"att3d-{job['id']}-1"
        row = _until(manager, job["id"], lambda r: sid in client.jobs)
        assert row["state"] == "running" and row["submission_id"] == sid
        assert client.jobs[sid]["recorded_before"] == sid
        submitted = client.jobs[sid]
        assert (
            f"-m server.jobs.worker --db {manager.store.path.resolve()} --job {job['id']}"
            in submitted["entrypoint"]
        )
        assert submitted["entrypoint"].endswith(
            f">> {(tmp_path / 'data' / 'runs' / job['id']).resolve()}/worker.log 2>&1"
        )
        assert (
            submitted["env"]["ATT3D_CACHE"] == "/somewhere/cache"
            and "UNRELATED_SECRET" not in submitted["env"]
        )
        assert submitted["env"]["RAY_JOB_STOP_WAIT_TIME_S"] == "10" and submitted["cpus"] == 2.0  # grace 10 s

        manager.cancel(job["id"])
        _until(manager, job["id"], lambda r: client.stopped == [sid])  # SIGTERM through the cluster
        client.end(sid, "STOPPED")
        done = _until(manager, job["id"], lambda r: r["state"] != "running")
        assert done["state"] == "canceled" and done["error"] is None
    finally:
        manager.stop()


@pytest.mark.parametrize(
    ("status", "code", "state", "error"),
    [
        ("FAILED", 1, "failed", "the job process exited with status 1 without a result; see "),
        ("SUCCEEDED", 0, "failed", "the job process exited with status 0 without a result"),
        (
            "FAILED",
            -9,
            "interrupted",
            "the job process was killed by SIGKILL; it has no checkpoint yet; POST",
        ),
        ("STOPPED", None, "interrupted", "its Ray job att3d-{id}-1 was stopped; it has no checkpoint yet"),
        ("FAILED", None, "interrupted", "its Ray job att3d-{id}-1 failed: Job supervisor actor died"),
    ],
)
def test_a_ray_job_that_ended_without_recording_its_outcome_is_reaped(tmp_path, status, code, state, error):
    client = FakeRayJobs()
    manager = _ray_manager(tmp_path, client)
    manager.start()
    try:
        job, _ = manager.submit(JobRequest.model_validate(job_request()), None)
        _until(manager, job["id"], lambda r: f"att3d-{job['id']}-1" in client.jobs)
        client.end(f"att3d-{job['id']}-1", status, code, "Job supervisor actor died: node lost")
        done = _until(manager, job["id"], lambda r: r["state"] != "running")
    finally:
        manager.stop()
    assert done["state"] == state and error.format(id=job["id"]) in done["error"], done


def test_a_restarted_manager_reattaches_to_ray_jobs_and_reaps_those_that_ended(tmp_path):
    client = FakeRayJobs()
    first = _ray_manager(tmp_path, client, max_running_jobs=3)
    first.start()
    jobs = [first.submit(JobRequest.model_validate(job_request()), None)[0]["id"] for _ in range(3)]
    for job_id in jobs:
        _until(first, job_id, lambda r: f"att3d-{r['id']}-1" in client.jobs)
    first.stop()  # jobs on a cluster are left running
    assert [first.get(j)["state"] for j in jobs] == ["running"] * 3 and not client.stopped

    still, ended, lost = jobs
    client.end(f"att3d-{ended}-1", "FAILED", 1)
    del client.jobs[f"att3d-{lost}-1"]  # a cluster restarted meanwhile
    second = _ray_manager(tmp_path, client, max_running_jobs=3)
    second.start()
    try:
        assert set(second._running) == set(jobs)
        assert _until(second, ended, lambda r: r["state"] != "running")["state"] == "failed"
        gone = _until(second, lost, lambda r: r["state"] != "running")
        assert gone["state"] == "interrupted" and "does not know its Ray job" in gone["error"]
        time.sleep(1.2 * 2)  # two more status polls: the running one stays running
        assert second.get(still)["state"] == "running"
        client.down = True  # an unreachable cluster is asked again, not taken for an ended job
        time.sleep(1.2 * 2)
        assert second.get(still)["state"] == "running"
    finally:
        second.stop()


def test_a_submission_the_cluster_refuses_fails_the_job(tmp_path):
    launcher = RayLauncher(
        ServerSettings(job_backend="ray", ray_address="http://127.0.0.1:1"), JobStore(tmp_path / "j.sqlite")
    )

    class Refusing(FakeRayJobs):
        def submit_job(self, **kwargs):
            raise RuntimeError("Request failed with status code 400: runtime_env is invalid")

    launcher._client = Refusing()
    row = {"id": "b" * 32, "attempts": 1, "run_dir": str(tmp_path / "runs" / "b")}
    with pytest.raises(
        LaunchError, match="cannot submit the job to Ray: Request failed with status code 400"
    ):
        launcher.launch(row, ["python", "-m", "server.jobs.worker"])
    assert RayJobHandle(launcher, "att3d-x-1").poll() == Exit(
        interrupted="the cluster does not know its Ray job att3d-x-1 (was it restarted?)"
    )
