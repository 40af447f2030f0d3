"""Restart recovery with real processes: ``att3d serve`` is killed mid-job, restarted, and the job resumes.

Also kills the job process itself (as an OOM killer would) and checks the job is marked and resumable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_fakes import GARBAGE, STEP_SECONDS_ENV, TESTS_DIR, tiny_config_overrides, tiny_generator

from server.jobs.store import JobStore

# Registers the test text encoder, then runs the real `att3d` command line (`att3d serve ...`).
LAUNCHER = "import server_fakes; from att3d.commands.app import main; main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``att3d serve`` in a child process (its own session, so a kill reaches only it)."""

    def __init__(self, tmp: Path, checkpoint: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
            "ATT3D_CACHE": str(tmp / "cache"),
            "ATT3D_JOB_RUNNER": "server_fakes:fake_train",
            "ATT3D_WARMUP": "false",
            STEP_SECONDS_ENV: "0.1",
        }
        command = [sys.executable, "-c", LAUNCHER, "serve", "--checkpoint", str(checkpoint)]
        command += ["--port", str(self.port)]
        command += ["--data-dir", str(tmp / "data"), "--log-level", "warning"]
        self.log = open(tmp / f"server-{self.port}.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, Path(self.log.name).read_text()
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)

    def wait_job(self, job_id: str, until, timeout_s: float = 90.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.client.get(f"/v1/jobs/{job_id}").json()
            if until(status):
                return status
            assert time.monotonic() < deadline, f"job never reached the expected state: {status}"
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(60)
        self.log.close()
        return code


@pytest.fixture
def checkpoint(tmp_path):
    return tiny_generator().save(tmp_path / "tiny")


def test_server_killed_mid_job_then_restarted_and_resumed(tmp_path, checkpoint):
    body = {
        "prompts": ["a red cube"],
        "config": {"steps": 30, "checkpoint_every": 5, **tiny_config_overrides()},
    }
    first = Server(tmp_path, checkpoint)
    try:
        job = first.client.post("/v1/jobs", json=body).json()
        first.wait_job(job["id"], lambda s: s["state"] == "running" and s["step"] >= 7)
    finally:
        first.stop(signal.SIGKILL)  # no shutdown hooks: as if the machine's OOM killer struck

    second = Server(tmp_path, checkpoint)
    try:
        # The orphaned job process notices its parent is gone, saves, and marks the job interrupted.
        status = second.wait_job(job["id"], lambda s: s["state"] != "running")
        assert status["state"] == "interrupted", status
        assert status["checkpoint_available"] and status["step"] >= 7
        assert f"/v1/jobs/{job['id']}/resume" in status["error"]
        interrupted_at = status["step"]

        resumed = second.client.post(f"/v1/jobs/{job['id']}/resume")
        assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
        second.wait_job(job["id"], lambda s: s["state"] == "running" and s["step"] > interrupted_at)

        # Now kill the job process itself.
        row = JobStore(tmp_path / "data" / "jobs.sqlite").get(job["id"])
        os.kill(row["pid"], signal.SIGKILL)
        status = second.wait_job(job["id"], lambda s: s["state"] != "running")
        assert status["state"] == "interrupted" and "SIGKILL" in status["error"], status
        assert status["step"] >= interrupted_at  # back to its newest checkpoint

        second.client.post(f"/v1/jobs/{job['id']}/resume")
        final = second.wait_job(job["id"], lambda s: s["state"] in ("succeeded", "failed"))
        assert final["state"] == "succeeded", final
        assert final["step"] == 30 and final["attempts"] == 3 and final["progress"] == 100.0
        log = (tmp_path / "data" / "runs" / job["id"] / "worker.log").read_text()
        assert log.count("resume=True") == 2, log  # attempts 2 and 3 continued from a checkpoint
        loaded = second.client.post("/v1/models", json={"name": "resumed", "job_id": job["id"]})
        assert loaded.status_code == 201 and loaded.json()["training_steps"] == 30
    finally:
        # Graceful stop; uvicorn re-raises the SIGTERM it handled once shutdown is complete.
        assert second.stop() in (0, -signal.SIGTERM)


def test_serve_starts_on_a_garbage_job_store(tmp_path, checkpoint):
    """No traceback: the damaged file is moved aside with one log line and a fresh store starts."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "jobs.sqlite").write_bytes(GARBAGE)
    server = Server(tmp_path, checkpoint)
    try:
        assert server.client.get("/v1/jobs").json() == []
    finally:
        assert server.stop() in (0, -signal.SIGTERM)
    log = Path(server.log.name).read_text()
    assert "Traceback" not in log, log
    moved = list((tmp_path / "data").glob("jobs.sqlite.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == GARBAGE
    assert f"moved it to {moved[0]}" in log and "file is not a database" in log, log
