"""Training jobs: state in SQLite, one separate process per running job, a scheduler thread in the server.

States and transitions (every transition is one SQL ``UPDATE ... WHERE state IN (...)`` inside a
``BEGIN IMMEDIATE`` transaction, so two writers can never both move a job)::

    queued ──claim──► running ──► succeeded | failed | canceled | interrupted
      │                  ▲                                          │
      └──cancel──► canceled        └──────────── resume ◄───────────┘  (also from failed)

- A job runs in its own process, ``python -m server.job_worker --db DB --job ID --runner MODULE:FN``
  (crash and memory isolation: a training OOM or segfault never takes the API down). The process calls the
  runner with a progress callback that writes step, loss and progress to SQLite, and a cancel flag.
- ``DELETE`` sets ``cancel_requested`` (the worker polls it: cooperative) and the scheduler sends SIGTERM
  (the trainer saves a checkpoint and returns); a process still alive after ``job_cancel_grace_s`` gets
  SIGKILL.
- A worker whose parent (the server) dies stops cooperatively and marks its job ``interrupted``. At start-up
  the server marks every ``running`` job whose process is gone ``interrupted`` too. Interrupted (and failed)
  jobs are resumed with ``POST /v1/jobs/{id}/resume``: the runner continues from the run folder's latest
  checkpoint.

The runner interface (:class:`Runner`) is the signature of :func:`att3d.train.train`; tests plug in a fake.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from att3d.config import ConfigError, TrainConfig, from_dict, to_dict
from server.schemas import JobRequest
from server.settings import ServerSettings

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "canceled", "interrupted")
FINAL_STATES = ("succeeded", "failed", "canceled")
RESUMABLE_STATES = ("interrupted", "failed")
DB_FILE = "jobs.sqlite"
RUNS_DIR = "runs"

# Config keys a client may not set: the prompt set comes from the request's own fields, and paths and
# devices are the server's business.
_SERVER_KEYS = ("prompts", "device", "model.text.cache_dir", "progress_bar")

ProgressCallback = Callable[[int, int, float], None]
"""``(step, total_steps, loss)``, called after every optimizer step."""


class RunResult(Protocol):
    """What a runner returns (``att3d.train.TrainResult`` has these attributes)."""

    status: str
    """``completed``, ``cancelled`` (the cancel flag) or ``interrupted`` (a signal)."""
    step: int
    checkpoint: Path | None
    loss: float


class Runner(Protocol):
    """Trains ``config`` into ``out_dir``; the job process calls it once per attempt.

    Contract: checkpoints go to ``out_dir/checkpoints/step_XXXXXXX`` (``att3d.train.checkpoint_dir``);
    ``resume=True`` continues from the latest of them; ``progress_callback`` is called after each step;
    setting ``cancel`` makes it save a checkpoint and return with status ``cancelled`` at the next step.
    """

    def __call__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        *,
        resume: bool,
        progress_callback: ProgressCallback,
        cancel: threading.Event,
    ) -> RunResult: ...


class JobError(Exception):
    """A job request or transition is refused; ``status``/``code``/``field`` shape the API error."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


# --------------------------------------------------------------------------------------------------
# Validation: request -> TrainConfig
# --------------------------------------------------------------------------------------------------


def build_train_config(request: JobRequest, settings: ServerSettings) -> TrainConfig:
    """The full ``TrainConfig`` of a job request, or :class:`JobError` (422) naming the bad field."""
    data = to_dict(TrainConfig())
    for key, value in request.config.items():
        if any(key == k or key.startswith(k + ".") for k in _SERVER_KEYS):
            raise JobError(422, "invalid_request", f"config.{key}: set by the server, not by a job", "config")
        _set_dotted(data, key, value)
    if request.prompts is not None:
        data["prompts"] = {"source": "list", "prompts": list(request.prompts), "heldout": request.heldout}
    else:
        data["prompts"] = {
            "source": "template",
            "template": request.template,
            "slots": request.slots,
            "heldout": request.heldout,
        }
    data["device"] = settings.job_device
    data["progress_bar"] = False
    try:
        config = from_dict(TrainConfig, data)
    except ConfigError as err:
        raise JobError(422, "invalid_request", f"config: {err}", "config") from None
    if config.prior not in settings.job_priors:
        raise JobError(
            422,
            "invalid_request",
            f"config.prior: {config.prior!r} is not allowed here (allowed: {', '.join(settings.job_priors)})",
            "config",
        )
    from att3d.prompts import load_prompt_set
    from att3d.train import check_train_config

    try:
        check_train_config(config)
    except ConfigError as err:
        raise JobError(422, "invalid_request", f"config.{err}", "config") from None
    try:
        prompt_set = load_prompt_set(config.prompts, max_chars=config.model.text.max_prompt_chars)
    except (ConfigError, ValueError) as err:
        field = "template" if request.template is not None else "prompts"
        raise JobError(422, "invalid_request", str(err), field) from None  # it names prompts.<key>
    if len(prompt_set) > settings.max_job_prompts:
        raise JobError(
            422,
            "invalid_request",
            f"prompts: {len(prompt_set)} prompts; this server's limit is {settings.max_job_prompts}",
            "prompts",
        )
    return config


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise JobError(422, "invalid_request", f"config.{key}: '{part}' is not a section", "config")
        node = child
    node[parts[-1]] = value


def request_digest(request: JobRequest) -> str:
    """sha256 of the canonical request, to tell an idempotent retry from a reused key."""
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('queued','running','succeeded','failed','canceled','interrupted')),
    request TEXT NOT NULL,
    config TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    total_steps INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0,
    loss REAL,
    error TEXT,
    checkpoint TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    pid_start TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_requested_at REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    request_sha256 TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    created_at REAL NOT NULL
);
"""


class JobStore:
    """Job rows in SQLite (WAL mode: the server and job processes read while one writes).

    Every method opens its own short-lived connection, so the store is safe to use from any thread or
    process; write transactions start with ``BEGIN IMMEDIATE`` to take the write lock up front.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=FULL")  # a finished job must survive a power cut, not just a crash
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- reads -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def list(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self._connect() as db:
            if state is None:
                rows = db.execute("SELECT * FROM jobs ORDER BY created_at DESC LIMIT ?", (limit,))
            else:
                rows = db.execute(
                    "SELECT * FROM jobs WHERE state = ? ORDER BY created_at DESC LIMIT ?", (state, limit)
                )
            return [dict(r) for r in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        return {state: 0 for state in STATES} | {r[0]: r[1] for r in rows}

    def cancel_requested(self, job_id: str) -> bool:
        with self._connect() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    # ---- transitions -----------------------------------------------------------------------------

    def create(
        self,
        request: dict[str, Any],
        config: dict[str, Any],
        total_steps: int,
        runs_dir: Path,
        idempotency_key: str | None = None,
        request_sha256: str = "",
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued job; with an idempotency key already used for the same request, return that job.

        Returns ``(row, created)``. A key reused for a different request raises :class:`JobError` (422).
        """
        now = time.time()
        with self._transaction() as db:
            if idempotency_key is not None:
                seen = db.execute(
                    "SELECT request_sha256, job_id FROM idempotency_keys WHERE key = ?", (idempotency_key,)
                ).fetchone()
                if seen is not None:
                    if seen["request_sha256"] != request_sha256:
                        raise JobError(
                            422,
                            "idempotency_key_reused",
                            "Idempotency-Key was already used with a different request body",
                            "Idempotency-Key",
                        )
                    row = db.execute("SELECT * FROM jobs WHERE id = ?", (seen["job_id"],)).fetchone()
                    return dict(row), False
            job_id = uuid.uuid4().hex
            db.execute(
                "INSERT INTO jobs (id, state, request, config, run_dir, total_steps, created_at, updated_at) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    json.dumps(request),
                    json.dumps(config),
                    str(runs_dir / job_id),
                    total_steps,
                    now,
                    now,
                ),
            )
            if idempotency_key is not None:
                db.execute(
                    "INSERT INTO idempotency_keys (key, request_sha256, job_id, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (idempotency_key, request_sha256, job_id, now),
                )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row), True

    def claim_next(self) -> dict[str, Any] | None:
        """Move the oldest queued job to ``running`` and return it (``None`` when none is queued)."""
        now = time.time()
        with self._transaction() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created_at LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, updated_at = ?, "
                "error = NULL, pid = NULL, pid_start = NULL WHERE id = ? AND state = 'queued'",
                (now, now, row["id"]),
            )
            return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def set_pid(self, job_id: str, pid: int, pid_start: str | None) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET pid = ?, pid_start = ? WHERE id = ? AND state = 'running'",
                (pid, pid_start, job_id),
            )

    def progress(self, job_id: str, step: int, total_steps: int, loss: float | None) -> None:
        """Record a step (only while the job is running)."""
        loss = loss if loss is None or _finite(loss) else None
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET step = ?, total_steps = ?, loss = ?, updated_at = ? "
                "WHERE id = ? AND state = 'running'",
                (step, total_steps, loss, time.time(), job_id),
            )

    def finish(
        self,
        job_id: str,
        state: str,
        error: str | None = None,
        checkpoint: str | None = None,
        step: int | None = None,
        loss: float | None = None,
    ) -> bool:
        """Move a running job to a final state (or ``interrupted``); False if it was not running."""
        if state not in (*FINAL_STATES, "interrupted"):
            raise ValueError(f"not a state a running job can end in: {state!r}")
        now = time.time()
        loss = loss if loss is None or _finite(loss) else None
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, checkpoint = COALESCE(?, checkpoint), "
                "step = COALESCE(?, step), loss = COALESCE(?, loss), updated_at = ?, finished_at = ?, "
                "pid = NULL, pid_start = NULL WHERE id = ? AND state = 'running'",
                (state, error, checkpoint, step, loss, now, now if state in FINAL_STATES else None, job_id),
            )
            return cursor.rowcount == 1

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel: queued/interrupted jobs become ``canceled`` now; running ones get the cancel flag."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'canceled', updated_at = ?, finished_at = ? "
                "WHERE id = ? AND state IN ('queued', 'interrupted')",
                (now, now, job_id),
            )
            db.execute(
                "UPDATE jobs SET cancel_requested = 1, "
                "cancel_requested_at = COALESCE(cancel_requested_at, ?), updated_at = ? "
                "WHERE id = ? AND state = 'running'",
                (now, now, job_id),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None

    def resume(self, job_id: str) -> dict[str, Any] | None:
        """Queue an interrupted or failed job again (its run folder, and so its checkpoints, are kept)."""
        now = time.time()
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', error = NULL, cancel_requested = 0, "
                "cancel_requested_at = NULL, finished_at = NULL, updated_at = ? "
                "WHERE id = ? AND state IN ('interrupted', 'failed')",
                (now, job_id),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return dict(row) if row is not None else None


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """``(state, start time)`` of ``pid`` from ``/proc/PID/stat`` (Linux), ``None`` if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    return (fields[0], fields[19]) if len(fields) > 19 else None


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` (field 22 of ``/proc/PID/stat``): tells it from a later reuse of the pid."""
    stat = _proc_stat(pid)
    return stat[1] if stat else None


def process_alive(pid: int | None, start: str | None) -> bool:
    """Whether ``pid`` still runs (not a zombie) and is the process whose start time was recorded."""
    stat = _proc_stat(pid) if pid else None
    if stat is None or stat[0] in ("Z", "X"):
        return False
    return start is None or stat[1] == start


def latest_checkpoint(run_dir: str | Path) -> tuple[int, Path] | None:
    """``(step, path)`` of the newest complete checkpoint of a run whose manifest verifies.

    Uses the trainer's own layout (``att3d.train.list_checkpoints``), skipping a corrupt newer checkpoint
    as ``att3d.train.latest_checkpoint`` does.
    """
    from att3d.checkpoint import CheckpointError, read_manifest
    from att3d.train import list_checkpoints

    for step, path in reversed(list_checkpoints(Path(run_dir))):
        try:
            read_manifest(path, check_weights=False)
        except CheckpointError:
            continue
        return step, path
    return None


class JobManager:
    """The server side of jobs: the store, the start-up recovery and a scheduler thread."""

    def __init__(self, settings: ServerSettings, poll_s: float = 0.2) -> None:
        self.settings = settings
        self.poll_s = poll_s
        self.runs_dir = settings.data_dir / RUNS_DIR
        self.store = JobStore(settings.data_dir / DB_FILE)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._adopted: dict[str, tuple[int, str | None]] = {}
        self._signalled: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
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
            self._reap(job_id, proc.returncode)
        self._procs.clear()

    def recover(self) -> None:
        """After a restart: adopt job processes that still run, mark the others interrupted."""
        for row in self.store.list(state="running", limit=1_000_000):
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
        )
        self._wake.set()
        return row, created

    def get(self, job_id: str) -> dict[str, Any]:
        row = self.store.get(job_id)
        if row is None:
            raise JobError(404, "not_found", f"no job with id {job_id!r}", "job_id")
        return row

    def cancel(self, job_id: str) -> dict[str, Any]:
        row = self.store.request_cancel(job_id)
        if row is None:
            raise JobError(404, "not_found", f"no job with id {job_id!r}", "job_id")
        if row["state"] in ("succeeded", "failed"):
            raise JobError(409, "conflict", f"job {job_id} already {row['state']}; nothing to cancel")
        self._wake.set()
        return row

    def resume(self, job_id: str) -> dict[str, Any]:
        row = self.store.resume(job_id)
        if row is None:
            raise JobError(404, "not_found", f"no job with id {job_id!r}", "job_id")
        if row["state"] != "queued":
            raise JobError(
                409, "conflict", f"job {job_id} is {row['state']}; only interrupted or failed jobs resume"
            )
        self._wake.set()
        return row

    # ---- the scheduler thread --------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # a scheduler bug must not stop job bookkeeping for good
                logger.exception("job scheduler tick failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _tick(self) -> None:
        for job_id, proc in list(self._procs.items()):
            code = proc.poll()
            if code is not None:
                del self._procs[job_id]
                self._reap(job_id, code)
        for job_id, (pid, start) in list(self._adopted.items()):
            if not process_alive(pid, start):
                del self._adopted[job_id]
                row = self.store.get(job_id)
                if row is not None and row["state"] == "running":
                    self._mark_interrupted(row, "the server restarted while the job was running")
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
        command = [
            sys.executable,
            "-m",
            "server.job_worker",
            "--db",
            str(self.store.path),
            "--job",
            row["id"],
            "--runner",
            self.settings.job_runner,
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
        self.store.set_pid(row["id"], proc.pid, process_start_time(proc.pid))
        self._procs[row["id"]] = proc
        logger.info("job %s started in process %d", row["id"], proc.pid)

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
        if row is None or row["state"] != "running":
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
        latest = latest_checkpoint(row["run_dir"])
        return str(latest[1]) if latest else None

    def _mark_interrupted(self, row: dict[str, Any], why: str) -> None:
        latest = latest_checkpoint(row["run_dir"])
        where = f"its last checkpoint is at step {latest[0]}" if latest else "it has no checkpoint yet"
        self.store.finish(
            row["id"],
            "interrupted",
            error=f"{why}; {where}; POST /v1/jobs/{row['id']}/resume continues it",
            checkpoint=str(latest[1]) if latest else None,
            step=latest[0] if latest else 0,
        )


# --------------------------------------------------------------------------------------------------
# Presentation
# --------------------------------------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_status(row: dict[str, Any], base_url: str = "") -> dict[str, Any]:
    """The API view of a job row (``server.schemas.JobStatus``)."""
    total = max(int(row["total_steps"]), 1)
    progress = 100.0 if row["state"] == "succeeded" else min(100.0, 100.0 * row["step"] / total)
    return {
        "id": row["id"],
        "state": row["state"],
        "progress": round(progress, 2),
        "step": row["step"],
        "total_steps": row["total_steps"],
        "loss": row["loss"],
        "error": row["error"],
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "updated_at": _iso(row["updated_at"]),
        "finished_at": _iso(row["finished_at"]),
        "attempts": row["attempts"],
        "checkpoint_available": row["checkpoint"] is not None,
        "cancel_requested": bool(row["cancel_requested"]),
        "status_url": f"{base_url}/v1/jobs/{row['id']}",
    }
