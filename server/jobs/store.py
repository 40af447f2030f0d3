"""Job rows in SQLite; every state transition is one guarded ``UPDATE`` in a ``BEGIN IMMEDIATE``
transaction, so two writers (the server, a job process) can never both move a job.

A store that becomes unusable (the file deleted, overwritten, truncated, locked past the timeout) raises
:class:`JobStoreUnavailable` from every method: a 503 for the API, a logged fault for the scheduler and the
job process, which carry on and find it again once the file is back (every call opens the file anew).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from server.errors import ServiceError

STATES = ("queued", "running", "succeeded", "failed", "canceled", "interrupted")
FINAL_STATES = ("succeeded", "failed", "canceled")
RESUMABLE_STATES = ("interrupted", "failed")

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
    finished_at REAL,
    submission_id TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    request_sha256 TEXT NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    created_at REAL NOT NULL
);
"""


_REQUIRED = {
    "jobs": (
        "id, state, request, config, run_dir, total_steps, step, loss, error, checkpoint, attempts, pid, "
        "pid_start, cancel_requested, cancel_requested_at, created_at, started_at, updated_at, finished_at"
    ),
    "idempotency_keys": "key, request_sha256, job_id, created_at",
}
"""The columns this code reads: a table without one of them is the wrong schema (more tables are fine).
Columns added later (:data:`_MIGRATIONS`) are not listed: an older store is migrated, not moved aside."""

_MIGRATIONS = (("jobs", "submission_id", "TEXT"),)
"""Columns added since the first schema, one per ``PRAGMA user_version``: ``submission_id`` is the launcher's
id of the running attempt (a Ray job submission id), kept after it ends so its logs can be found."""

QUEUED_JOBS_RETRY_AFTER_S = 60
"""``Retry-After`` when the job queue is full: a queued job waits for a training run, minutes at least."""
STORE_RETRY_AFTER_S = 10
"""``Retry-After`` while the job store is unusable: an operator has to restore the file (or restart)."""


class JobStoreUnavailable(ServiceError):
    """The jobs database cannot be used: answered 503 ``job_store_unavailable`` with ``Retry-After``."""

    def __init__(self, path: Path, detail: str) -> None:
        self.detail = detail
        self.reason = f"the job store {path} is unusable: {detail}"
        super().__init__(
            503,
            "job_store_unavailable",
            f"{self.reason}; retry later",
            headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
        )


class JobStore:
    """Job rows in SQLite (WAL mode: the server and job processes read while one writes).

    Every method opens its own short-lived connection, so the store is safe to use from any thread or
    process; write transactions start with ``BEGIN IMMEDIATE`` to take the write lock up front. Only
    :meth:`initialize` (the constructor, unless ``create`` is false) creates the file: a store deleted later
    stays missing (an error) rather than silently becoming a new, empty one.
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        self.initialized = False
        if create:
            self.initialize()

    def initialize(self) -> None:
        """Create the file (and its folder) if missing, and the tables."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise JobStoreUnavailable(self.path, describe(err)) from err
        with self._connect(create=True) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            _migrate(db)
        self.initialized = True

    @contextlib.contextmanager
    def _connect(self, create: bool = False) -> Iterator[sqlite3.Connection]:
        mode = "rwc" if create else "rw"
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode={mode}", uri=True, timeout=30.0)
        except (sqlite3.Error, OSError) as err:
            detail = "the file is missing" if not self.path.exists() else describe(err)
            raise JobStoreUnavailable(self.path, detail) from err
        db.isolation_level = None
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA synchronous=FULL")  # a finished job must survive a power cut, not just a crash
            yield db
        except (sqlite3.DatabaseError, OSError) as err:
            raise JobStoreUnavailable(self.path, describe(err)) from err
        finally:
            db.close()

    def problem(self) -> str | None:
        """Why the store cannot be used now (``None``: it can): a cheap check for probes and the scheduler."""
        try:
            if self.path.is_file() and self.path.stat().st_size == 0:
                return JobStoreUnavailable(self.path, "the file is empty").reason
            with self._connect() as db:
                for table, columns in _REQUIRED.items():
                    db.execute(f"SELECT {columns} FROM {table} LIMIT 0")
        except JobStoreUnavailable as err:
            return err.reason
        except OSError as err:  # the file vanished between the two checks
            return JobStoreUnavailable(self.path, describe(err)).reason
        return None

    def damage(self) -> str | None:
        """Why an existing file is not a usable store (``None``: it is); reads it all (start-up only)."""
        if self.path.is_file() and self.path.stat().st_size == 0:
            return "the file is empty"
        try:
            with self._connect() as db:
                check = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
                if check != ["ok"]:
                    return "the file is damaged (" + "; ".join(check) + ")"
                for table, columns in _REQUIRED.items():
                    db.execute(f"SELECT {columns} FROM {table} LIMIT 0")
        except JobStoreUnavailable as err:
            return err.detail
        return None

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
        max_queued: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Insert a queued job; with an idempotency key already used for the same request, return that job.

        Returns ``(row, created)``. A key reused for a different request raises :class:`ServiceError` (422);
        a new job while ``max_queued`` jobs wait already raises it with 429 (counted in the same
        transaction as the insert, so concurrent requests cannot overshoot the cap).
        """
        now = time.time()
        with self._transaction() as db:
            if idempotency_key is not None:
                seen = db.execute(
                    "SELECT request_sha256, job_id FROM idempotency_keys WHERE key = ?", (idempotency_key,)
                ).fetchone()
                if seen is not None:
                    if seen["request_sha256"] != request_sha256:
                        raise ServiceError(
                            422,
                            "idempotency_key_reused",
                            "Idempotency-Key was already used with a different request body",
                            "Idempotency-Key",
                        )
                    row = db.execute("SELECT * FROM jobs WHERE id = ?", (seen["job_id"],)).fetchone()
                    return dict(row), False
            if max_queued is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued'").fetchone()[0]
                if queued >= max_queued:
                    raise ServiceError(
                        429,
                        "too_many_jobs",
                        f"{queued} jobs are queued already (the limit is {max_queued}); retry later",
                        headers={"Retry-After": str(QUEUED_JOBS_RETRY_AFTER_S)},
                    )
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
                "error = NULL, pid = NULL, pid_start = NULL, submission_id = NULL "
                "WHERE id = ? AND state = 'queued'",
                (now, now, row["id"]),
            )
            return dict(db.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone())

    def set_submission(self, job_id: str, submission_id: str) -> None:
        """Record the launcher's id of the running attempt (before it is launched, so a restart finds it)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET submission_id = ? WHERE id = ? AND state = 'running'",
                (submission_id, job_id),
            )

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

    def insert_recovered(self, row: dict[str, Any]) -> bool:
        """Insert a job re-created from its run folder (all columns given); False if its id exists."""
        columns = ", ".join(row)
        with self._transaction() as db:
            cursor = db.execute(
                f"INSERT OR IGNORE INTO jobs ({columns}) VALUES ({', '.join('?' * len(row))})",
                tuple(row.values()),
            )
            return cursor.rowcount == 1


def _migrate(db: sqlite3.Connection) -> None:
    """Add the columns of :data:`_MIGRATIONS` a store created by older code lacks (in ``BEGIN IMMEDIATE``:
    two processes opening the same old file cannot both add one)."""
    db.execute("BEGIN IMMEDIATE")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    for table, column, kind in _MIGRATIONS[version:]:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:  # not a fresh file
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    db.execute(f"PRAGMA user_version = {max(version, len(_MIGRATIONS))}")
    db.execute("COMMIT")


def describe(err: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


def _finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))
