"""Job rows in SQLite; every state transition is one guarded ``UPDATE`` in a ``BEGIN IMMEDIATE``
transaction, so two writers (the server, a job process) can never both move a job."""

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


QUEUED_JOBS_RETRY_AFTER_S = 60
"""``Retry-After`` when the job queue is full: a queued job waits for a training run, minutes at least."""


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
