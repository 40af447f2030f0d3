"""The ``ray`` backend: each job process is a Ray job (``JobSubmissionClient.submit_job``) on a cluster.

The Ray job's entrypoint is the very job process the local backend starts (``python -m server.jobs.worker``,
same interpreter path, same working folder, its output appended to the run folder's ``worker.log``), so
the job process still writes progress and its outcome to the job store and watches its cancel flag: state,
progress, cancel and resume work as they do locally, provided the job process runs where the SQLite store
is a local file (the server's machine: SQLite's locking does not hold across machines; an entrypoint with no
resources runs on the head node) and its training workers see the run folder at the same path.

- Submission id ``att3d-<job id>-<attempt>``, recorded in the store (``submission_id``) before it is
  submitted, so a restarted server finds the attempt; resources ``ray_job_num_cpus``/``ray_job_num_gpus``;
  the environment carries the server's ``ATT3D_*``, ``HF_*``, ``TRANSFORMERS_*``, ``TORCH_*``, ``OMP_*`` and
  ``PYTHONPATH`` variables, and ``RAY_JOB_STOP_WAIT_TIME_S = job_cancel_grace_s``: ``stop_job`` then
  sends SIGTERM and, after the grace period, SIGKILL, as the local backend does.
- Reaping polls the job's status: RUNNING/PENDING is running; SUCCEEDED/FAILED is an exit (a negative
  exit status is a signal: interrupted); STOPPED or a job the cluster does not know (a restarted cluster)
  is interrupted. The scheduler maps them as it maps a local exit (``JobManager._reap``).
- With ``ray_address`` set (``http://HEAD:8265``, or ``auto``: the cluster running on this machine) the jobs
  outlive the server: a graceful stop leaves them running and the next start re-attaches (a job still
  RUNNING stays ``running``; one that ended meanwhile is reaped). With it empty the server starts a
  cluster of its own at the first submission, whose jobs stop with the server (``interrupted``), as local
  ones do.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import shlex
import threading
import time
from pathlib import Path
from typing import Any

from server.jobs.launchers import WORKER_LOG, Exit, JobHandle, LaunchError
from server.jobs.local_launcher import LocalLauncher, signal_name
from server.jobs.recovery import FaultLog
from server.jobs.store import JobStore, describe
from server.settings import ServerSettings

logger = logging.getLogger("server.jobs.scheduler")

FORWARDED_ENV_PREFIXES = ("ATT3D_", "HF_", "TRANSFORMERS_", "TORCH_", "OMP_")
"""Environment variables of the server a Ray job process gets (besides ``PYTHONPATH``)."""
STATUS_POLL_S = 1.0
"""How often a running Ray job's status is asked for (an HTTP request to the cluster)."""
SUBMIT_RETRY_S = 60.0
"""How long a submission the cluster refuses for now ("no available agent": it is starting) is retried."""
SUBMIT_RETRY_DELAY_S = 1.0
"""Pause between two such tries."""


def submission_id(row: dict[str, Any]) -> str:
    return f"att3d-{row['id']}-{row['attempts']}"


class RayJobHandle:
    """One attempt, known by its submission id; asks the cluster at most every :data:`STATUS_POLL_S`."""

    def __init__(self, launcher: RayLauncher, sid: str) -> None:
        self.launcher = launcher
        self.sid = sid
        self._asked = -math.inf
        self._stopped = False

    def record(self) -> None:
        """Recorded before the submission (``RayLauncher.launch``)."""

    def poll(self) -> Exit | None:
        if time.monotonic() - self._asked < STATUS_POLL_S:
            return None
        self._asked = time.monotonic()
        try:
            info = self.launcher.client.get_job_info(self.sid)
        except Exception as err:  # the SDK raises RuntimeError, ConnectionError, requests'
            if "does not exist" in str(err):
                return Exit(
                    interrupted=f"the cluster does not know its Ray job {self.sid} (was it restarted?)"
                )
            self.launcher.faults.failed(err)  # an unreachable cluster: asked again at the next poll
            return None
        self.launcher.faults.succeeded()
        status = str(info.status.value if hasattr(info.status, "value") else info.status)
        if status in ("PENDING", "RUNNING"):
            return None
        if status == "STOPPED":
            return Exit(interrupted=f"its Ray job {self.sid} was stopped")
        code = info.driver_exit_code
        if code is not None and code < 0:
            return Exit(code, interrupted=f"the job process was killed by {signal_name(-code)}")
        if code is None and status == "FAILED":  # the supervisor or its node died, the runtime env failed
            return Exit(interrupted=f"its Ray job {self.sid} failed: {' '.join(str(info.message).split())}")
        return Exit(code if code is not None else 0)

    def terminate(self) -> None:
        if not self._stopped:
            self._stop()

    def kill(self) -> None:
        """The cluster escalates a stop to SIGKILL after the grace period itself; this asks again only if
        the first stop did not reach it."""
        if not self._stopped:
            self._stop()

    def _stop(self) -> None:
        try:
            self.launcher.client.stop_job(self.sid)
        except Exception as err:  # asked again at the next tick
            self.launcher.faults.failed(err)
            return
        self._stopped = True


class RayLauncher:
    """Job processes as Ray jobs (``ServerSettings.job_backend = "ray"``)."""

    def __init__(self, settings: ServerSettings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.outlives_server = bool(settings.ray_address)
        self.faults = FaultLog(logger, "asking the Ray cluster about jobs")
        self._client: Any = None
        self._closed = threading.Event()
        self._local = LocalLauncher(store)

    @property
    def client(self) -> Any:
        """The ``JobSubmissionClient``, made at first use (``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS`` in
        the environment take precedence over ``ray_address``: Ray's rule)."""
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.settings.ray_address or self._own_cluster())
        return self._client

    def _own_cluster(self) -> str:
        """Start a cluster in this process (or use the one it is connected to); its dashboard's address.

        Ray ties the processes it starts to the thread that starts them (they get SIGKILL when it ends), so
        a thread of its own starts the cluster and lives until :meth:`close`.
        """
        started: queue.Queue[Any] = queue.Queue()

        def hold() -> None:
            import ray

            try:
                if ray.is_initialized():
                    context = ray.init(ignore_reinit_error=True)
                else:
                    context = ray.init(
                        address="local",
                        include_dashboard=True,
                        dashboard_host="127.0.0.1",
                        log_to_driver=False,
                    )
            except Exception as err:
                started.put(err)
                return
            started.put(context.dashboard_url)
            self._closed.wait()

        threading.Thread(target=hold, name="att3d-ray-cluster", daemon=True).start()
        url = started.get()
        if isinstance(url, Exception) or not url:
            raise LaunchError(f"cannot start a Ray cluster with a dashboard (job submission needs it): {url}")
        logger.info("jobs run on a Ray cluster started by the server, dashboard http://%s", url)
        return f"http://{url}"

    def launch(self, row: dict[str, Any], command: list[str]) -> RayJobHandle:
        sid = submission_id(row)
        self.store.set_submission(row["id"], sid)  # first: a restart right after submitting finds it
        log = Path(row["run_dir"]).resolve() / WORKER_LOG
        entrypoint = (
            f"cd {shlex.quote(os.getcwd())} && exec {shlex.join(command)} >> {shlex.quote(str(log))} 2>&1"
        )
        env = {
            k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) or k == "PYTHONPATH"
        }
        env["RAY_JOB_STOP_WAIT_TIME_S"] = str(max(1, math.ceil(self.settings.job_cancel_grace_s)))
        deadline = time.monotonic() + SUBMIT_RETRY_S
        while True:
            try:
                self.client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=sid,
                    runtime_env={"env_vars": env},
                    entrypoint_num_cpus=self.settings.ray_job_num_cpus,
                    entrypoint_num_gpus=self.settings.ray_job_num_gpus,
                    metadata={"att3d_job": row["id"]},
                )
                break
            except LaunchError:
                raise
            except Exception as err:  # RuntimeError, ConnectionError, requests'
                if "try again later" not in str(err) or time.monotonic() > deadline:
                    raise LaunchError(f"cannot submit the job to Ray: {describe(err)}") from err
                time.sleep(SUBMIT_RETRY_DELAY_S)
        logger.info("job %s submitted to Ray as %s", row["id"], sid)
        return RayJobHandle(self, sid)

    def reattach(self, row: dict[str, Any]) -> JobHandle | None:
        if row.get("submission_id"):
            return RayJobHandle(self, row["submission_id"])  # its first poll tells whether it still runs
        return self._local.reattach(row)  # started by the local backend before a switch

    def close(self) -> None:
        """A cluster the server started stops now (the client itself is plain HTTP)."""
        self._closed.set()
