"""The server side of jobs (:class:`JobManager`): the store, start-up recovery and a scheduler thread that
starts one process per job (``python -m server.jobs.worker``) through a backend
(:mod:`~server.jobs.launchers`: a local subprocess or a Ray job), cancels and reaps them.

The scheduler outlives an unusable store: each failing tick is logged once per kind, job processes it could
not reap stay on its list, and when the store works again it reaps them and reconciles ``running`` rows
(the outcome a job process left in its run folder wins over "interrupted").
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from att3d.config import to_dict
from att3d.training.run_folder import latest_checkpoint
from server.errors import ServiceError
from server.jobs.launchers import Exit, JobHandle, Launcher, LaunchError, worker_command
from server.jobs.local_launcher import LocalLauncher
from server.jobs.recovery import FaultLog, clear_result, open_store, read_result
from server.jobs.requests import build_train_config, request_digest
from server.jobs.store import JobStore, JobStoreUnavailable
from server.schemas import JobRequest, RefineRequest
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

DB_FILE = "jobs.sqlite"
RUNS_DIR = "runs"
STOP_CONFIRM_S = 10.0
"""At shutdown, how long after ``job_cancel_grace_s`` (and the kill) the server waits to see jobs end."""


def make_launcher(settings: ServerSettings, store: JobStore) -> Launcher:
    """The backend ``settings.job_backend`` names (``ServerSettings`` has checked the name)."""
    if settings.job_backend == "ray":
        from server.jobs.ray_launcher import RayLauncher

        return RayLauncher(settings, store)
    return LocalLauncher(store)


class JobManager:
    """The server side of jobs: the store, the start-up recovery and a scheduler thread."""

    def __init__(self, settings: ServerSettings, poll_s: float = 0.2) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.runs_dir = settings.data_dir / RUNS_DIR
        self.store = open_store(settings.data_dir / DB_FILE, self.runs_dir)
        self._faults = FaultLog(logger, "the job scheduler")
        self.launcher = make_launcher(settings, self.store)
        self._running: dict[str, JobHandle] = {}
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
        """Stop scheduling; ask running job processes to save and exit (SIGTERM), kill stragglers. A backend
        whose jobs outlive the server (a Ray cluster) leaves them running for the next start to re-attach."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10.0)
        if self.launcher.outlives_server and self._running:
            logger.info("%d running jobs left on their cluster for the next start", len(self._running))
        elif self._running:
            self._stop_all()
        self._running.clear()
        self.launcher.close()

    def _stop_all(self) -> None:
        for handle in self._running.values():
            handle.terminate()
        deadline = time.monotonic() + self.settings.job_cancel_grace_s
        pending = dict(self._running)
        while pending and time.monotonic() < deadline + STOP_CONFIRM_S:
            for job_id, handle in list(pending.items()):
                if time.monotonic() > deadline:
                    handle.kill()
                ended = handle.poll()
                if ended is None:
                    continue
                del pending[job_id]
                try:
                    self._reap(job_id, ended)
                except JobStoreUnavailable as err:  # the next start marks it from its run folder
                    logger.warning("job %s ended as the server stopped, unrecorded: %s", job_id, err.reason)
            time.sleep(0.05)
        for job_id in pending:  # a backend that cannot be asked now; the next start finds out
            logger.warning("job %s: not confirmed stopped as the server stopped", job_id)

    def store_problem(self) -> str | None:
        """Why the job store cannot be used now (``None``: it can); what ``/readyz`` reports."""
        return self.store.problem()

    def recover(self) -> None:
        """After a restart (or the store's return): re-attach to job processes that may still run (the
        backend decides), record the others' outcome from their run folder or mark them interrupted. Jobs
        this scheduler watches are left alone."""
        for row in self.store.list(state="running", limit=1_000_000):
            if row["id"] in self._running:
                continue
            handle = self.launcher.reattach(row)
            if handle is not None:
                self._running[row["id"]] = handle
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
        for job_id, handle in list(self._running.items()):
            ended = handle.poll()
            if ended is not None:
                self._reap(job_id, ended)  # forgotten only once recorded: a broken store retries it
                del self._running[job_id]
        self._signal_cancelled()
        while not self._stop.is_set() and len(self._running) < self.settings.max_running_jobs:
            row = self.store.claim_next()
            if row is None:
                break
            self._spawn(row)

    def _spawn(self, row: dict[str, Any]) -> None:
        run_dir = Path(row["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        clear_result(run_dir)  # a new attempt: the last one's outcome must not be taken for this one's
        try:
            handle = self.launcher.launch(row, worker_command(self.settings, self.store, row["id"]))
        except LaunchError as err:
            self.store.finish(row["id"], "failed", error=str(err))
            return
        self._running[row["id"]] = handle  # watched even if the store fails now
        handle.record()

    def _signal_cancelled(self) -> None:
        """Ask running jobs whose cancel was requested to stop (SIGTERM); kill them after the grace period."""
        now = time.monotonic()
        for row in self.store.list(state="running", limit=1_000_000):
            handle = self._running.get(row["id"])
            if not row["cancel_requested"] or handle is None:
                continue
            first = self._signalled.setdefault(row["id"], now)
            if first == now:
                handle.terminate()
            elif now - first > self.settings.job_cancel_grace_s:
                handle.kill()

    def _reap(self, job_id: str, ended: Exit) -> None:
        """A job process ended: if it did not record an outcome itself, record one for it."""
        self._signalled.pop(job_id, None)
        row = self.store.get(job_id)
        if row is None or row["state"] != "running" or self._record_result(row):
            return
        if row["cancel_requested"]:
            self.store.finish(job_id, "canceled", checkpoint=self._checkpoint_path(row))
        elif ended.interrupted is not None:
            self._mark_interrupted(row, ended.interrupted)
        else:
            how = f"exited with status {ended.code}" if ended.code is not None else f"ended ({ended.detail})"
            self.store.finish(
                job_id,
                "failed",
                error=f"the job process {how} without a result; see {row['run_dir']}/worker.log",
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
