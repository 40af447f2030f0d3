"""The server side of jobs (:class:`JobManager`): the store, start-up recovery and a scheduler thread that
starts one process per job (``python -m server.jobs.worker``), cancels and reaps them.

The scheduler outlives an unusable store: each failing tick is logged once per kind, job processes it could
not reap stay on its list, and when the store works again it reaps them and reconciles ``running`` rows
(the outcome a job process left in its run folder wins over "interrupted").
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from att3d.config import to_dict
from att3d.training.run_folder import latest_checkpoint
from server.errors import ServiceError
from server.jobs.processes import process_alive, process_start_time
from server.jobs.recovery import FaultLog, clear_result, open_store, read_result
from server.jobs.requests import build_train_config, request_digest
from server.jobs.store import JobStoreUnavailable
from server.schemas import JobRequest, RefineRequest
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

DB_FILE = "jobs.sqlite"
RUNS_DIR = "runs"


class JobManager:
    """The server side of jobs: the store, the start-up recovery and a scheduler thread."""

    def __init__(self, settings: ServerSettings, poll_s: float = 0.2) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.runs_dir = settings.data_dir / RUNS_DIR
        self.store = open_store(settings.data_dir / DB_FILE, self.runs_dir)
        self._faults = FaultLog(logger, "the job scheduler")
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted: dict[str, tuple[int, str | None]] = {}
        self._signalled: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.recover()
        except JobStoreUnavailable as err:  # the scheduler recovers once the store is usable
            self._faults.failed(err)
        self._thread = threading.Thread(target=self._loop, name="att3d-job-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling; ask running job processes to save and exit (SIGTERM), SIGKILL stragglers."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
        for proc in self._procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.job_cancel_grace_s
        for job_id, proc in list(self._procs.items()):
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            try:
                self._reap(job_id, proc.returncode)
            except JobStoreUnavailable as err:  # the next start marks it from its run folder
                logger.warning("job %s ended as the server stopped, unrecorded: %s", job_id, err.reason)
        self._procs.clear()

    def store_problem(self) -> str | None:
        """Why the job store cannot be used now (``None``: it can); what ``/readyz`` reports."""
        return self.store.problem()

    def recover(self) -> None:
        """After a restart (or the store's return): adopt job processes that still run, record the others'
        outcome from their run folder or mark them interrupted. Jobs this scheduler watches are left alone."""
        for row in self.store.list(state="running", limit=1_000_000):
            if row["id"] in self._procs or row["id"] in self._adopted:
                continue
            if process_alive(row["pid"], row["pid_start"]):
                # Its parent is gone, so it is stopping on its own; watch it until it has.
                self._adopted[row["id"]] = (row["pid"], row["pid_start"])
            else:
                self._mark_interrupted(row, "the server stopped while the job was running")

    # ---- API operations --------------------------------------------------------------------------

    def submit(self, request: JobRequest, idempotency_key: str | None) -> tuple[dict[str, Any], bool]:
        config = build_train_config(request, self.settings)
        row, created = self.store.create(
            request.model_dump(mode="json"),
            to_dict(config),
            config.steps,
            self.runs_dir,
            idempotency_key,
            request_digest(request),
            max_queued=self.settings.max_queued_jobs,
        )
        self._wake.set()
        return row, created

    def submit_refine(
        self, request: RefineRequest, config: dict[str, Any], idempotency_key: str | None
    ) -> tuple[dict[str, Any], bool]:
        """Queue a refine job (``config`` from ``refine_requests.build_refine_job``) in the same queue,
        under the same caps, as training jobs."""
        row, created = self.store.create(
            {"refine": request.model_dump(mode="json")},
            config,
            config["refine"]["steps"],
            self.runs_dir,
            idempotency_key,
            request_digest(request),
            max_queued=self.settings.max_queued_jobs,
        )
        self._wake.set()
        return row, created

    def get(self, job_id: str) -> dict[str, Any]:
        row = self.store.get(job_id)
        if row is None:
            raise ServiceError(404, "not_found", f"no job with id {job_id!r}", "job_id")
        return row

    def cancel(self, job_id: str) -> dict[str, Any]:
        row = self.store.request_cancel(job_id)
        if row is None:
            raise ServiceError(404, "not_found", f"no job with id {job_id!r}", "job_id")
        if row["state"] in ("succeeded", "failed"):
            raise ServiceError(409, "conflict", f"job {job_id} already {row['state']}; nothing to cancel")
        self._wake.set()
        return row

    def resume(self, job_id: str) -> dict[str, Any]:
        row = self.store.resume(job_id)
        if row is None:
            raise ServiceError(404, "not_found", f"no job with id {job_id!r}", "job_id")
        if row["state"] != "queued":
            raise ServiceError(
                409, "conflict", f"job {job_id} is {row['state']}; only interrupted or failed jobs resume"
            )
        self._wake.set()
        return row

    # ---- the scheduler thread --------------------------------------------------------------------

    def _loop(self) -> None:
        broken = False
        while not self._stop.is_set():
            try:
                if not self.store.initialized:  # it could not be created at start-up (e.g. permissions)
                    self.store.initialize()
                if broken:
                    self.recover()
                self._tick()
                broken = False
                self._faults.succeeded()
            except JobStoreUnavailable as err:  # logged once; retried every tick until the file is back
                broken = True
                self._faults.failed(err)
            except Exception:  # a scheduler bug must not stop job bookkeeping for good
                logger.exception("job scheduler tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        for job_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is not None:
                self._reap(job_id, code)  # forgotten only once recorded: a broken store retries it
                del self._procs[job_id]
        for job_id, (pid, start) in list(self._adopted.items()):
            if not process_alive(pid, start):
                row = self.store.get(job_id)
                if row is not None and row["state"] == "running":
                    self._mark_interrupted(row, "the server restarted while the job was running")
                del self._adopted[job_id]
        self._signal_cancelled()
        while not self._stop.is_set() and self._running_count() < self.settings.max_running_jobs:
            row = self.store.claim_next()
            if row is None:
                break
            self._spawn(row)

    def _running_count(self) -> int:
        return len(self._procs) + len(self._adopted)

    def _spawn(self, row: dict[str, Any]) -> None:
        run_dir = Path(row["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_result(run_dir)  # a new attempt: the last one's outcome must not be taken for this one's
        command = [
            sys.executable,
            "-m",
            "server.jobs.worker",
            "--db",
            str(self.store.path),
            "--job",
            row["id"],
            "--runner",
            self.settings.job_runner,
            "--refine-runner",
            self.settings.refine_runner,
        ]
        try:
            with open(run_dir / "worker.log", "ab") as log:
                # A session of its own: a Ctrl-C meant for the server does not kill training mid-step.
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            self.store.finish(row["id"], "failed", error=f"cannot start the job process: {err}")
            return
        self._procs[row["id"]] = proc  # watched even if the store fails now
        logger.info("job %s started in process %d", row["id"], proc.pid)
        self.store.set_pid(row["id"], proc.pid, process_start_time(proc.pid))

    def _signal_cancelled(self) -> None:
        """SIGTERM running jobs whose cancel was requested; SIGKILL them after the grace period."""
        now = time.monotonic()
        for row in self.store.list(state="running", limit=1_000_000):
            if not row["cancel_requested"]:
                continue
            job_id = row["id"]
            pid = self._procs[job_id].pid if job_id in self._procs else self._adopted.get(job_id, (None,))[0]
            if pid is None or not process_alive(pid, row["pid_start"]):
                continue
            first = self._signalled.setdefault(job_id, now)
            sig = signal.SIGKILL if now - first > self.settings.job_cancel_grace_s else signal.SIGTERM
            if first == now or sig == signal.SIGKILL:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def _reap(self, job_id: str, code: int) -> None:
        """A job process exited: if it did not record an outcome itself, record one for it."""
        self._signalled.pop(job_id, None)
        row = self.store.get(job_id)
        if row is None or row["state"] != "running" or self._record_result(row):
            return
        if row["cancel_requested"]:
            self.store.finish(job_id, "canceled", checkpoint=self._checkpoint_path(row))
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
            self._mark_interrupted(row, f"the job process was killed by {name}")
        else:
            self.store.finish(
                job_id,
                "failed",
                error=f"the job process exited with status {code} without a result; see {row['run_dir']}"
                "/worker.log",
                checkpoint=self._checkpoint_path(row),
            )

    def _checkpoint_path(self, row: dict[str, Any]) -> str | None:
        latest = latest_checkpoint(row["run_dir"], check_weights=False)
        return str(latest[1]) if latest else None

    def _record_result(self, row: dict[str, Any]) -> bool:
        """Record the outcome a job process left in its run folder when the store could not take it."""
        result = read_result(row["run_dir"])
        if result is None:
            return False
        self.store.finish(
            row["id"],
            result["state"],
            error=result.get("error"),
            checkpoint=result.get("checkpoint"),
            step=result.get("step"),
            loss=result.get("loss") if isinstance(result.get("loss"), float) else None,
        )
        logger.info("job %s: %s, recorded from its run folder", row["id"], result["state"])
        return True

    def _mark_interrupted(self, row: dict[str, Any], why: str) -> None:
        if self._record_result(row):
            return
        latest = latest_checkpoint(row["run_dir"], check_weights=False)
        where = f"its last checkpoint is at step {latest[0]}" if latest else "it has no checkpoint yet"
        self.store.finish(
            row["id"],
            "interrupted",
            error=f"{why}; {where}; POST /v1/jobs/{row['id']}/resume continues it",
            checkpoint=str(latest[1]) if latest else None,
            step=latest[0] if latest else 0,
        )
