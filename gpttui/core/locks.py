"""Name locks: a run holds the checkpoint name it will save under for as long as it lives.

A lock is a file ``<checkpoints>/.locks/<name>.lock`` created with O_EXCL, holding the holder's pid, host
and process start time, refreshed by a heartbeat (its mtime). A lock whose holder is gone (dead pid, a
reused pid, or no heartbeat for :data:`STALE_AFTER_SECONDS` from another host) is stale and may be taken
over. :class:`gpttui.core.store.CheckpointStore` uses :class:`NameLocks` for its folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpttui.core.checkpoints import validate_name
from gpttui.core.errors import CheckpointError
from gpttui.core.procs import _pid_alive, _process_start, gone_reason  # noqa: F401  (re-exported)

LOCKS_DIR = ".locks"
HEARTBEAT_SECONDS = 15.0
# A lock from another host (whose pid cannot be checked) is stale once its heartbeat is this old.
STALE_AFTER_SECONDS = 10 * 60
_UNREADABLE_STALE_SECONDS = 60  # a lock file nobody could read (its writer died half-way)


@dataclass(frozen=True)
class LockInfo:
    """Who holds a checkpoint name."""

    name: str
    pid: int
    host: str
    purpose: str
    started: str
    heartbeat: float  # the lock file's mtime
    token: str
    process_start: str | None = None

    def describe(self) -> str:
        age = max(0.0, time.time() - self.heartbeat)
        here = "this process" if self.is_mine_process() else f"pid {self.pid} on {self.host}"
        return f"{self.purpose} ({here}, since {self.started[:19].replace('T', ' ')}, heartbeat {age:.0f} s ago)"

    def is_mine_process(self) -> bool:
        return self.pid == os.getpid() and self.host == socket.gethostname()

    def stale_reason(self) -> str | None:
        """Why the holder is gone, or ``None`` while it may still be running."""
        return gone_reason(self.pid, self.host, self.process_start, self.heartbeat, STALE_AFTER_SECONDS)


class NameLease:
    """A held checkpoint name: only its holder may save under it. Release it (or use ``with``) when done;
    a heartbeat thread keeps the lock fresh meanwhile."""

    def __init__(self, locks: "NameLocks", name: str, lock_path: Path, info: LockInfo,
                 may_replace: bool, took_over: LockInfo | None, stale_reason: str | None) -> None:
        self.locks = locks
        self.name = name
        self.lock_path = lock_path
        self.info = info
        self.may_replace = may_replace  # the checkpoint existed and the caller allowed replacing it
        self.took_over = took_over  # a stale lock that was taken over, with its reason
        self.stale_reason = stale_reason
        self.released = False
        self.saved_once = False  # after its first save the run may replace its own checkpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"gpttui-lock-{name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.lock_path)

    def held(self) -> bool:
        """Whether the lock file on disk is still this lease's."""
        if self.released:
            return False
        current = self.locks.read(self.name)
        return current is not None and current.token == self.info.token

    def release(self) -> None:
        if self.released:
            return
        self._stop.set()
        if self.held():
            with contextlib.suppress(OSError):
                os.unlink(self.lock_path)
        self.released = True

    def __enter__(self) -> "NameLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class NameLocks:
    """The name locks of the checkpoints folder ``root`` (in ``root/.locks``)."""

    def __init__(self, root: Path) -> None:
        self.dir = root / LOCKS_DIR

    def path(self, name: str) -> Path:
        return self.dir / f"{validate_name(name)}.lock"

    def read(self, name: str) -> LockInfo | None:
        """The lock on ``name`` as on disk (live or stale), or ``None``."""
        path = self.path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            mtime = path.stat().st_mtime
            return LockInfo(name=name, pid=int(data["pid"]), host=str(data["host"]),
                            purpose=str(data.get("purpose", "a run")), started=str(data.get("started", "")),
                            heartbeat=mtime, token=str(data["token"]), process_start=data.get("process_start"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable (half-written by a writer that died): treat as a stale lock with no owner.
            with contextlib.suppress(OSError):
                return LockInfo(name=name, pid=-1, host="?", purpose="unknown", started="",
                                heartbeat=path.stat().st_mtime, token="")
            return None

    @staticmethod
    def _why_stale(info: LockInfo) -> str | None:
        if info.pid != -1:
            return info.stale_reason()
        return "the lock file is unreadable" if time.time() - info.heartbeat > _UNREADABLE_STALE_SECONDS else None

    def holder(self, name: str) -> LockInfo | None:
        """The live holder of ``name``, or ``None`` (a stale lock does not count)."""
        info = self.read(name)
        return None if info is None or self._why_stale(info) else info

    def refuse_if_held(self, name: str, action: str, lease: NameLease | None = None) -> None:
        """Raise unless ``name`` is free or held by ``lease``."""
        holder = self.holder(name)
        if holder is not None and not (lease is not None and lease.name == name and holder.token == lease.info.token):
            raise CheckpointError(f"Cannot {action} checkpoint {name!r}: it is in use by {holder.describe()}. "
                                  "Wait for that run to end, or stop it first.")

    def acquire(self, name: str, *, may_replace: bool, purpose: str) -> NameLease:
        """Take the lock on ``name``: refused while a live holder has it; a stale one is taken over
        (reported in ``lease.took_over``)."""
        self.dir.mkdir(exist_ok=True)
        path = self.path(name)
        token = secrets.token_hex(8)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": purpose,
                  "started": _dt.datetime.now(_dt.timezone.utc).isoformat(), "token": token,
                  "process_start": _process_start(os.getpid())}
        took_over: LockInfo | None = None
        reason: str | None = None
        for _attempt in range(3):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                stale = self._take_over(name, path, token)
                if stale is not None:
                    took_over, reason = stale
                continue
            try:
                os.write(fd, json.dumps(record).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            info = self.read(name)
            assert info is not None
            return NameLease(self, name, path, info, may_replace=may_replace, took_over=took_over,
                             stale_reason=reason)
        raise CheckpointError(f"Could not take the name {name!r}: other runs keep taking it.")

    def _take_over(self, name: str, path: Path, token: str) -> tuple[LockInfo, str] | None:
        """Remove a stale lock on ``name``, returning it and why it was stale; ``None`` when the lock went
        away meanwhile or a faster contender took it (try again). A live holder is an error."""
        current = self.read(name)
        if current is None:
            return None  # released meanwhile
        why = self._why_stale(current)
        if why is None:
            raise CheckpointError(f"Checkpoint name {name!r} is in use by {current.describe()}; "
                                  "choose another name or wait for that run to end.")
        # Move the stale lock aside under a unique name; only one contender succeeds.
        aside = path.with_name(f"{path.name}.stale-{token}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
        moved = _lock_token(aside)
        if moved is not None and moved != current.token:
            with contextlib.suppress(OSError):  # we moved a fresh lock of a faster contender: put it back
                os.link(aside, path)
            with contextlib.suppress(OSError):
                os.unlink(aside)
            return None
        with contextlib.suppress(OSError):
            os.unlink(aside)
        return current, why


def _lock_token(path: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return str(json.loads(path.read_text(encoding="utf-8"))["token"])
    return None


__all__ = ["LockInfo", "NameLease", "NameLocks", "LOCKS_DIR", "HEARTBEAT_SECONDS", "STALE_AFTER_SECONDS"]
