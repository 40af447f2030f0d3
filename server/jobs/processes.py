"""Is a job's process still the one we started? Answered from ``/proc/PID/stat`` (Linux)."""

from __future__ import annotations

from pathlib import Path


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
