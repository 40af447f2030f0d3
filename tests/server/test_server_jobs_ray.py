"""Jobs on a Ray cluster (``job_backend=ray``): the job manager submits Ray jobs, the Ray runner trains with
two gloo workers on Ray Train, cancel and resume go through the job store, and a restarted manager
re-attaches to a job that still runs.

One cluster for the module: ``ray start --head --block`` in a session of its own, every port on 127.0.0.1,
its own temp folder (so no other Ray user of this machine attaches to it), stopped with SIGTERM at the end.
Ray is imported only inside the tests: collecting this file in the plain run imports nothing of Ray.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_fakes import STEP_SECONDS_ENV, isolated_environment, tiny_config_overrides

from conftest import tiny_model_section

pytestmark = pytest.mark.ray

CLUSTER_CPUS = 4
"""Two training workers, the job processes, and room for the Train controller on a 2-core machine."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """The dashboard address of a local one-node cluster (what ``ATT3D_RAY_ADDRESS`` takes)."""
    pytest.importorskip("ray")
    from ray.job_submission import JobSubmissionClient

    temp = tempfile.mkdtemp(prefix="att3d-ray-", dir="/tmp")  # short: Ray's socket paths must stay short
    dashboard, gcs = _free_port(), _free_port()
    env = {
        **os.environ,
        # Ray Train's helper actors find their cluster through the state API: this one, not whichever
        # other cluster runs on the machine.
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "disabled",  # loopback only; no token file needed
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # makes Ray bind its services to 127.0.0.1 only
    }
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
    command += [f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}"]
    command += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
    command += [f"--dashboard-agent-listen-port={_free_port()}", f"--num-cpus={CLUSTER_CPUS}", "--num-gpus=0"]
    log = open(Path(temp) / "ray-start.log", "wb")  # noqa: SIM115 (closed below)
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 180
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_AUTH_MODE", "disabled")
            while True:
                assert head.poll() is None, (Path(temp) / "ray-start.log").read_text()
                with contextlib.suppress(Exception):
                    JobSubmissionClient(url).list_jobs()
                    break
                assert time.monotonic() < deadline, "the Ray cluster never answered"
                time.sleep(1.0)
            yield url
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the cluster it started
        try:
            head.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # its own session: only the processes of this cluster
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _settings(tmp: Path, url: str, **overrides):  # -> ServerSettings
    from server.settings import ServerSettings

    values = {
        "data_dir": tmp / "data",
        "job_backend": "ray",
        "ray_address": url,
        "job_runner": "att3d.training.ray_train:train",
        "ray_job_num_cpus": 0.0,  # the Ray Train workers reserve the CPUs
        "max_job_workers": 2,
        "job_device": "cpu",
        "job_cancel_grace_s": 60.0,
    }
    return ServerSettings(**(values | overrides))


@contextlib.contextmanager
def _manager(settings) -> Iterator:  # -> Iterator[JobManager]
    from server.jobs.scheduler import JobManager

    manager = JobManager(settings, poll_s=0.1)
    manager.start()
    try:
        yield manager
    finally:
        manager.stop()


def _crash(manager) -> None:
    """The manager's process dies: its scheduler stops, and nothing is stopped or recorded on its way out."""
    manager._stop.set()
    manager._wake.set()
    manager._thread.join(10)


def _wait(manager, job_id: str, until, timeout_s: float = 150.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        row = manager.get(job_id)
        if until(row):
            return row
        assert time.monotonic() < deadline, f"job never reached the expected state: {row}"
        time.sleep(0.1)


def _ended(row: dict) -> bool:
    return row["state"] not in ("queued", "running")


def _train_request(steps: int, workers: int = 2):  # -> JobRequest
    """The tiny model of configs/tiny_test.yaml (with its bundled text encoder), plain albedo renders."""
    from server.schemas import JobRequest

    model = tiny_model_section()
    config: dict[str, object] = {f"model.field.{k}": v for k, v in model["field"].items() if k != "encoding"}
    config |= {f"model.field.encoding.{k}": v for k, v in model["field"]["encoding"].items()}
    config |= {f"model.render.{k}": v for k, v in model["render"].items()}
    config |= {"steps": steps, "checkpoint_every": 2, "workers": workers, "prompts_per_step": 1}
    config |= {"albedo_steps": 1000, "log_every": 0, "preview_every": 0, "interp_prob": 0.0}
    return JobRequest.model_validate({"prompts": ["a red cube", "a blue sphere"], "config": config})


def _log(row: dict) -> str:
    return (Path(row["run_dir"]) / "worker.log").read_text()


STEPS = 60
"""Steps of the resumed job: a few seconds of tiny steps, so the stop lands well before the end."""


def test_two_gloo_workers_stopped_then_resumed_to_a_loadable_model(tmp_path, ray_cluster):
    """A 2-worker job whose Ray job is stopped from outside ends interrupted at a checkpoint; resumed, it
    succeeds, and its checkpoint loads as a model trained by two processes to the last step."""
    from ray.job_submission import JobSubmissionClient

    from att3d.generate import Generator

    with isolated_environment(tmp_path), _manager(_settings(tmp_path, ray_cluster)) as manager:
        job, created = manager.submit(_train_request(steps=STEPS), None)
        assert created
        running = _wait(manager, job["id"], lambda r: r["state"] == "running" and r["step"] >= 2)
        assert running["submission_id"] == f"att3d-{job['id']}-1"
        JobSubmissionClient(ray_cluster).stop_job(running["submission_id"])  # e.g. `ray job stop`
        stopped = _wait(manager, job["id"], _ended)
        assert stopped["state"] == "interrupted", stopped
        assert stopped["checkpoint"] and 2 <= stopped["step"] < STEPS
        assert f"/v1/jobs/{job['id']}/resume" in stopped["error"]

        assert manager.resume(job["id"])["state"] == "queued"
        done = _wait(manager, job["id"], _ended)
        assert done["state"] == "succeeded", (done, _log(done))
        assert done["step"] == STEPS and done["attempts"] == 2 and done["submission_id"].endswith("-2")
        assert "resume=True" in _log(done)

    generator = Generator.from_checkpoint(done["checkpoint"])
    assert generator.metadata["step"] == STEPS and generator.metadata["world_size"] == 2
    assert generator.prompts == ["a red cube", "a blue sphere"]


def _fake_settings(tmp: Path, url: str):  # -> ServerSettings
    """The fake runners (``server_fakes``) in one Ray job process: the backend without Ray Train."""
    fakes = {"job_runner": "server_fakes:fake_train", "refine_runner": "server_fakes:fake_refine"}
    return _settings(tmp, url, ray_job_num_cpus=1.0, **fakes)


def _fake_request(steps: int):  # -> JobRequest
    from server.schemas import JobRequest

    config = {"steps": steps, "checkpoint_every": 10, **tiny_config_overrides()}
    return JobRequest.model_validate({"prompts": ["a red cube"], "config": config})


REFINE = {
    "kind": "refine",
    "prompt": "a red cube",
    "format": "glb",
    "refine": {"steps": 6, "preview_every": 2, "checkpoint_every": 2},
}
"""A refine job's stored config (``server.jobs.refine_requests``), run by the fake refine runner."""


def test_cancel_of_a_ray_job_and_a_refine_job_on_ray(tmp_path, ray_cluster):
    """A running Ray job cancelled ends canceled at a checkpoint; a refine job runs there to its result."""
    with isolated_environment(tmp_path), pytest.MonkeyPatch.context() as patch:
        patch.setenv(STEP_SECONDS_ENV, "0.05")
        with _manager(_fake_settings(tmp_path, ray_cluster)) as manager:
            job, _ = manager.submit(_fake_request(steps=2000), None)
            _wait(manager, job["id"], lambda r: r["state"] == "running" and r["step"] >= 3)
            assert manager.cancel(job["id"])["cancel_requested"]
            done = _wait(manager, job["id"], _ended, timeout_s=60)

            refine, _ = manager.store.create({"refine": {}}, REFINE, 6, manager.runs_dir)
            manager._wake.set()
            refined = _wait(manager, refine["id"], _ended, timeout_s=60)
    assert done["state"] == "canceled", (done, _log(done))
    assert 3 <= done["step"] < 2000 and done["checkpoint"].endswith(f"step_{done['step']:07d}")
    assert refined["state"] == "succeeded" and refined["step"] == 6, (refined, _log(refined))
    assert (Path(refined["run_dir"]) / "result.glb").stat().st_size > 0


def test_a_restarted_manager_reattaches_to_a_running_ray_job(tmp_path, ray_cluster):
    """The Ray job outlives its manager: the next manager watches it to the end (no interrupted state)."""
    settings = _fake_settings(tmp_path, ray_cluster)
    with isolated_environment(tmp_path), pytest.MonkeyPatch.context() as patch:
        patch.setenv(STEP_SECONDS_ENV, "0.1")
        with _manager(settings) as first:
            job, _ = first.submit(_fake_request(steps=40), None)
            _wait(first, job["id"], lambda r: r["state"] == "running" and r["step"] >= 3)
            _crash(first)

        with _manager(settings) as second:
            assert job["id"] in second._running  # re-attached at start-up
            assert second.get(job["id"])["state"] == "running"
            done = _wait(second, job["id"], _ended)
    assert done["state"] == "succeeded" and done["step"] == 40 and done["attempts"] == 1, done
