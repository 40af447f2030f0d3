"""Where a job process runs: the interface the scheduler starts, watches and stops job processes through.

Every backend runs the same job process, ``python -m server.jobs.worker`` (:func:`worker_command`), which
records progress and its outcome in the job store itself; a backend only starts it, tells whether it has
ended (:class:`Exit`), stops it and finds it again after a server restart. ``ServerSettings.job_backend``
picks one (``server.jobs.scheduler.make_launcher``): ``local`` (:mod:`~server.jobs.local_launcher`, a
subprocess of the server, the default) or ``ray`` (:mod:`~server.jobs.ray_launcher`, a Ray job on a cluster;
imported only then, and Ray only when it first submits, so the default never imports Ray).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

from server.jobs.store import JobStore
from server.settings import ServerSettings

WORKER_LOG = "worker.log"
"""The job process's output, in its run folder (every backend)."""


@dataclass(frozen=True)
class Exit:
    """How a job process ended, as far as its backend can tell (the process's own record comes first)."""

    code: int | None = None
    """Its exit status, when known."""
    interrupted: str | None = None
    """Why, when it was stopped from outside (a signal, a Ray stop, a lost cluster): the job is resumable.
    Completes "…; its last checkpoint is at step N"."""
    detail: str | None = None
    """What the backend says about a failure it cannot give an exit status for."""


class LaunchError(Exception):
    """The job process could not be started; the message says why (the job ends ``failed``)."""


class JobHandle(Protocol):
    """One started job process (an attempt)."""

    def record(self) -> None:
        """Write what finds the process again after a restart into the store (may raise
        ``JobStoreUnavailable``; the handle is watched all the same)."""
        ...

    def poll(self) -> Exit | None:
        """``None`` while it runs (or cannot be asked now), else how it ended."""
        ...

    def terminate(self) -> None:
        """Ask it to save a checkpoint and exit (SIGTERM)."""
        ...

    def kill(self) -> None:
        """Stop it now (after ``job_cancel_grace_s``); calling it again is harmless."""
        ...


class Launcher(Protocol):
    """A backend that runs job processes."""

    outlives_server: bool
    """Whether its job processes keep running when the server stops: a graceful stop then leaves them
    running for the next start to re-attach, instead of stopping them (``interrupted``)."""

    def launch(self, row: dict[str, Any], command: list[str]) -> JobHandle:
        """Start ``command`` for the ``running`` job ``row`` (output to its run folder's
        :data:`WORKER_LOG`); raises :class:`LaunchError`."""
        ...

    def reattach(self, row: dict[str, Any]) -> JobHandle | None:
        """After a restart: a handle on the ``running`` job's process if it may still run, else ``None``
        (the scheduler then records it ``interrupted``)."""
        ...

    def close(self) -> None:
        """Release the backend's connections (the server stops)."""
        ...


def worker_command(settings: ServerSettings, store: JobStore, job_id: str) -> list[str]:
    """The job process's command line, with absolute paths (a Ray job starts in another folder)."""
    return [
        sys.executable,
        "-m",
        "server.jobs.worker",
        "--db",
        str(store.path.resolve()),
        "--job",
        job_id,
        "--runner",
        settings.job_runner,
        "--refine-runner",
        settings.refine_runner,
    ]
