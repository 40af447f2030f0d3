"""The default backend: each job process is a subprocess of the server, in a session of its own.

A session of its own: a Ctrl-C meant for the server does not kill training mid-step. The process watches
its parent: when the server dies it saves and marks its job ``interrupted`` itself, so after a restart a
process that still runs (:class:`AdoptedProcess`) is only watched until it has stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from server.jobs.launchers import WORKER_LOG, Exit, LaunchError
from server.jobs.processes import process_alive, process_start_time
from server.jobs.store import JobStore

logger = logging.getLogger("server.jobs.scheduler")


def signal_name(number: int) -> str:
    return signal.Signals(number).name if number in signal.valid_signals() else str(number)


class ProcessHandle:
    """A job process this server started."""

    def __init__(self, store: JobStore, job_id: str, proc: subprocess.Popen[bytes]) -> None:
        self.store = store
        self.job_id = job_id
        self.proc = proc

    def record(self) -> None:
        self.store.set_pid(self.job_id, self.proc.pid, process_start_time(self.proc.pid))

    def poll(self) -> Exit | None:
        code = self.proc.poll()
        if code is None:
            return None
        if code < 0:
            return Exit(code, interrupted=f"the job process was killed by {signal_name(-code)}")
        return Exit(code)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class AdoptedProcess:
    """A job process started by an earlier server (found alive at start-up by its pid and start time)."""

    def __init__(self, pid: int, start: str | None) -> None:
        self.pid = pid
        self.start = start

    def record(self) -> None:
        """Nothing new to record: the store has its pid."""

    def poll(self) -> Exit | None:
        if process_alive(self.pid, self.start):
            return None
        return Exit(interrupted="the server restarted while the job was running")

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: signal.Signals) -> None:
        if process_alive(self.pid, self.start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


class LocalLauncher:
    """Job processes as subprocesses of the server (``ServerSettings.job_backend = "local"``)."""

    outlives_server = False

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def launch(self, row: dict[str, Any], command: list[str]) -> ProcessHandle:
        try:
            with open(Path(row["run_dir"]) / WORKER_LOG, "ab") as log:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            raise LaunchError(f"cannot start the job process: {err}") from err
        logger.info("job %s started in process %d", row["id"], proc.pid)
        return ProcessHandle(self.store, row["id"], proc)

    def reattach(self, row: dict[str, Any]) -> AdoptedProcess | None:
        # Its parent is gone, so a process still alive is stopping on its own; watch it until it has.
        if row["pid"] is not None and process_alive(row["pid"], row["pid_start"]):
            return AdoptedProcess(row["pid"], row["pid_start"])
        return None

    def close(self) -> None:
        """Nothing to release."""
