"""Which process is which: a pid's start time (to tell a reused pid) and whether a pid lives. Shared by the
name locks (:mod:`gpttui.core.locks`) and the run directories (:mod:`gpttui.core.runs`); no torch here, so
the CLI's ``runs`` commands start fast."""

from __future__ import annotations

import os


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
        return data[data.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool | None:
    """Whether ``pid`` runs on this host (``None``: cannot tell, e.g. on Windows)."""
    if os.name == "nt":
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, owned by someone else
        return True
    return True


__all__ = ["_process_start", "_pid_alive"]


def gone_reason(pid: int, host: str, process_start: str | None, heartbeat: float | None,
                stale_after: float) -> str | None:
    """Why the process ``pid`` on ``host`` (started at ``process_start``, last heard of at ``heartbeat``)
    is gone, or ``None`` while it may still run. On this host its pid decides (a reused pid counts as
    gone); elsewhere, or where pids cannot be probed, a heartbeat older than ``stale_after`` seconds."""
    import socket
    import time

    if host == socket.gethostname() and pid:
        alive = _pid_alive(pid)
        if alive is False:
            return f"process {pid} is gone"
        if alive and process_start and _process_start(pid) not in (None, process_start):
            return f"process {pid} is gone (its pid now belongs to another process)"
        if alive is not None:
            return None
    if heartbeat is not None and time.time() - heartbeat > stale_after:
        return f"no heartbeat for {time.time() - heartbeat:.0f} s"
    return None
