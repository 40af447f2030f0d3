"""What outlives the job store: each run folder's own record of its job, and a start on a damaged store.

A job process writes ``runs/<id>/job.json`` (the request, config and step count) when an attempt starts and
``runs/<id>/result.json`` (how it ended) before it records the outcome in SQLite, so the run folder holds the
job even when the store cannot. :func:`open_store` is how the server opens its store: a file that is not a
usable store (garbage, empty, truncated, another schema) is moved aside to ``jobs.sqlite.corrupt-<time>``,
a fresh one is started, and jobs are re-created from run folders that have no row (from ``job.json``, or
the trainer's ``config.yaml`` for folders without one), all reported in one log line. :class:`FaultLog` is
how the scheduler and job processes report a store that fails: once per kind, and once when it is back.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from att3d.atomic import atomic_write
from att3d.training.run_folder import latest_checkpoint
from server.jobs.store import FINAL_STATES, JobStore, JobStoreUnavailable, describe

logger = logging.getLogger("server.jobs.scheduler")  # the scheduler's log: one place for store events

JOB_RECORD = "job.json"
RESULT_RECORD = "result.json"
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_ENDINGS = (*FINAL_STATES, "interrupted")


class FaultLog:
    """Logs each kind of store fault once (not at every step or tick) and when the store works again."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.seen: set[str] = set()
        self._lock = threading.Lock()  # a job process reports from its training and its watcher thread

    def failed(self, err: Exception) -> None:
        kind = getattr(err, "reason", None) or describe(err)
        with self._lock:
            new = kind not in self.seen
            self.seen.add(kind)
        if new:
            self.logger.warning("%s failed (%s); carrying on, logged once", self.what, kind)

    def succeeded(self) -> None:
        with self._lock:
            recovered = bool(self.seen)
            self.seen.clear()
        if recovered:
            self.logger.info("%s works again: the job store is usable again", self.what)


def write_job_record(run_dir: Path, row: dict[str, Any]) -> None:
    """``job.json``: what re-creates the job's row if the store is lost."""
    record = {
        "id": row["id"],
        "request": json.loads(row["request"]),
        "config": json.loads(row["config"]),
        "total_steps": row["total_steps"],
        "created_at": row["created_at"],
        "attempts": row["attempts"],
    }
    atomic_write(run_dir / JOB_RECORD, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))


def write_result(run_dir: Path, **result: Any) -> None:
    """``result.json``: how an attempt ended (``state``, ``step``, ``loss``, ``error``, ``checkpoint``)."""
    loss = result.get("loss")
    result["loss"] = loss if isinstance(loss, float) and math.isfinite(loss) else None
    text = json.dumps({**result, "finished_at": time.time()}, indent=1)
    atomic_write(run_dir / RESULT_RECORD, lambda tmp: tmp.write_text(text))


def clear_result(run_dir: Path) -> None:
    """A new attempt starts: the last one's outcome no longer describes the job."""
    (run_dir / RESULT_RECORD).unlink(missing_ok=True)


def read_result(run_dir: str | Path) -> dict[str, Any] | None:
    """The outcome a job process left in its run folder, or ``None`` (none, or unreadable)."""
    data = _read_json(Path(run_dir) / RESULT_RECORD)
    if data is None or data.get("state") not in _ENDINGS or not isinstance(data.get("step", 0), int | None):
        return None
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def open_store(path: Path, runs_dir: Path) -> JobStore:
    """The server's store at ``path``: a damaged file is moved aside and jobs are re-created from run folders.

    Never raises for the file's state: a store that cannot even be created (a read-only folder) is returned
    as it is, and every use of it answers :class:`JobStoreUnavailable` with the reason.
    """
    store = JobStore(path, create=False)
    moved: tuple[Path, str] | None = None
    if path.exists():
        why = store.damage()
        if why is not None and "locked" in why:  # busy, not damaged: used once the lock is released
            logger.error("job store %s: %s; job routes answer 503 until it is free", path, why)
            return store
        if why is not None:
            try:
                moved = (_move_aside(path), why)
            except OSError as err:
                logger.error("job store %s is unusable (%s) and cannot be moved aside: %s", path, why, err)
                return store
    try:
        store.initialize()
    except JobStoreUnavailable as err:
        logger.error("%s; job routes answer 503 until it is fixed", err.reason)
        return store
    created, lost = rediscover(store, runs_dir)
    if moved is None and not created and not lost:
        return store
    found = f"{len(created)} jobs re-created from their run folders in {runs_dir}"
    if lost:
        found += "; lost: " + ", ".join(f"{job_id} ({why})" for job_id, why in lost)
    if moved is not None:
        logger.warning(
            "job store %s was unusable (%s): moved it to %s and started a fresh one; %s; queued jobs "
            "that had not started are lost (they have no run folder yet)",
            path,
            moved[1],
            moved[0],
            found,
        )
    else:
        logger.warning("job store %s has no row for some run folders: %s", path, found)
    return store


def _move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    for suffix in ("-wal", "-shm"):  # a stale log would be replayed into the fresh file
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


def rediscover(store: JobStore, runs_dir: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Re-create rows for run folders (named by a job id) the store does not know: ``(created, lost)``."""
    created: list[str] = []
    lost: list[tuple[str, str]] = []
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for run_dir in folders:
        if not _JOB_ID.fullmatch(run_dir.name) or store.get(run_dir.name) is not None:
            continue
        row = _row_from_run_folder(run_dir)
        if isinstance(row, str):
            lost.append((run_dir.name, row))
        elif store.insert_recovered(row):
            created.append(run_dir.name)
    return created, lost


def _row_from_run_folder(run_dir: Path) -> dict[str, Any] | str:
    """The job row a run folder describes, or why it cannot be re-created."""
    record = _read_json(run_dir / JOB_RECORD) or {}
    config = record.get("config")
    if not isinstance(config, dict):
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            config = None
    if not isinstance(config, dict) or not isinstance(config.get("steps"), int):
        return f"no readable {JOB_RECORD} or config.yaml in {run_dir}"
    latest = latest_checkpoint(run_dir, check_weights=False)
    result = read_result(run_dir)
    now = time.time()
    if result is not None:
        state, error = result["state"], result.get("error")
        step = result.get("step") if result.get("step") is not None else (latest[0] if latest else 0)
        checkpoint = result.get("checkpoint") or (str(latest[1]) if latest else None)
    else:
        state, step = "interrupted", latest[0] if latest else 0
        checkpoint = str(latest[1]) if latest else None
        where = f"its last checkpoint is at step {step}" if latest else "it has no checkpoint"
        error = (
            f"re-created from its run folder after the job store was lost; {where}; "
            f"POST /v1/jobs/{run_dir.name}/resume continues it"
        )
    return {
        "id": run_dir.name,
        "state": state,
        "request": json.dumps(record.get("request", {})),
        "config": json.dumps(config),
        "run_dir": str(run_dir),
        "total_steps": int(record.get("total_steps") or config["steps"]),
        "step": step,
        "loss": result.get("loss") if result and isinstance(result.get("loss"), float) else None,
        "error": error,
        "checkpoint": checkpoint,
        "attempts": int(record.get("attempts") or 1),
        "created_at": float(record.get("created_at") or run_dir.stat().st_mtime),
        "started_at": None,
        "updated_at": now,
        "finished_at": now if state in FINAL_STATES else None,
    }
