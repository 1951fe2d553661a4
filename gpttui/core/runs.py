"""Runs that any process can read and steer, through their run directory ``$GPTTUI_HOME/runs/<id>/``.

Beside ``config.json`` and the append-only ``events.jsonl`` (:class:`gpttui.core.events.RunLog`):

- ``status.json``, rewritten atomically by the trainer (:class:`StatusWriter`) on every state change and at
  least every :data:`HEARTBEAT_SECONDS` while the run lives: pid, host, process start, start time,
  heartbeat, state (starting / running / paused / stopping / finished / stopped / failed), step,
  total_steps, save_name, last checkpoint, best val loss. :func:`run_status` reads it back and says
  ``crashed`` when the writer is gone without a final event; :func:`list_runs` lists every run.
- ``commands/``: :func:`send_command` drops a file there (pause, resume, stop, save), created atomically;
  the trainer consumes them between optimizer steps (:class:`CommandInbox`, mapped onto
  :class:`gpttui.core.control.TrainControl`).
- :class:`EventFollower` reads ``events.jsonl`` incrementally, by byte offset.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpttui.core import paths
from gpttui.core.events import now_iso
from gpttui.core.fileio import atomic_write
from gpttui.core.procs import _process_start, gone_reason

STATUS_FILE = "status.json"
COMMANDS_DIR = "commands"
COMMANDS = ("pause", "resume", "stop", "save")
HEARTBEAT_SECONDS = 2.0  # status.json is rewritten at least this often (the issue asks for 5 s at most)
STALE_AFTER_SECONDS = 60.0  # a run on another host whose heartbeat is older reads as crashed
LIVE_STATES = ("starting", "running", "paused", "stopping")
FINAL_STATES = ("finished", "stopped", "failed")
COMMAND_POLL_SECONDS = 0.2  # the trainer looks at commands/ at most this often


# --- status ----------------------------------------------------------------------------------------


@dataclass
class RunStatus:
    """What a run is doing (or did), as read from its directory."""

    run_id: str
    run_dir: str
    state: str  # starting / running / paused / stopping / finished / stopped / failed / crashed / unknown
    pid: int | None = None
    host: str | None = None
    process_start: str | None = None
    started: str | None = None
    heartbeat: float | None = None  # time.time() of the last rewrite
    step: int = 0
    total_steps: int | None = None
    save_name: str | None = None
    last_checkpoint: str | None = None
    best_val_loss: float | None = None
    device: str | None = None
    message: str | None = None  # why it failed or crashed

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "live": self.live}


class StatusWriter:
    """The trainer's side of ``status.json``: :meth:`update` on every change, and a daemon thread that
    rewrites it every :data:`HEARTBEAT_SECONDS` until :meth:`close`."""

    def __init__(self, run_dir: str | Path, run_id: str) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self._lock = threading.Lock()
        self.status = RunStatus(run_id=run_id, run_dir=str(run_dir), state="starting", pid=os.getpid(),
                                host=socket.gethostname(), process_start=_process_start(os.getpid()),
                                started=now_iso())
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._beat, name="gpttui-run-status", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self._write()

    def _write(self) -> None:
        with self._lock:
            self.status.heartbeat = time.time()
            data = {k: v for k, v in self.status.to_dict().items() if k != "live"}
            with contextlib.suppress(OSError):  # a full disk must not kill the run
                atomic_write(self.path, json.dumps(data, indent=2), durable=False)

    def update(self, **fields: Any) -> None:
        with self._lock:
            for key, value in fields.items():
                setattr(self.status, key, value)
        self._write()

    def observe(self, event: Any) -> None:
        """Follow the trainer's events: state changes are written at once, steps with the heartbeat."""
        kind = getattr(event, "event", "")
        if kind == "started":
            self.update(state="running", total_steps=event.total_steps, save_name=event.save_name,
                        step=event.start_step, device=event.device)
        elif kind == "step":
            with self._lock:
                self.status.step = event.step
                self.status.total_steps = event.total_steps
        elif kind == "eval":
            best = event.best_val_loss
            with self._lock:
                self.status.best_val_loss = best if isinstance(best, float) and best == best and best != float("inf") else None
        elif kind == "checkpoint":
            self.update(last_checkpoint=event.name, step=event.step)
        elif kind == "state":
            self.update(state="paused" if event.paused else "running", step=event.step)
        elif kind == "finished":
            self.update(state="finished" if event.reason == "completed" else "stopped", step=event.step,
                        last_checkpoint=event.checkpoint or self.status.last_checkpoint,
                        message=None if event.reason == "completed" else event.reason)
        elif kind == "failed":
            self.update(state="failed", step=event.step, message=event.message,
                        last_checkpoint=event.last_checkpoint or self.status.last_checkpoint)

    def close(self) -> None:
        self._stop.set()
        self._write()


def write_starting_status(run_dir: Path, run_id: str, pid: int) -> None:
    """What a launcher writes for a child it started (``gpttui train --detach``) before the child does."""
    status = RunStatus(run_id=run_id, run_dir=str(run_dir), state="starting", pid=pid, host=socket.gethostname(),
                       process_start=_process_start(pid), started=now_iso(), heartbeat=time.time())
    data = {k: v for k, v in status.to_dict().items() if k != "live"}
    with contextlib.suppress(FileExistsError):  # the child was faster: its own status wins
        atomic_write(run_dir / STATUS_FILE, json.dumps(data, indent=2), replace=False, durable=False)


def _final_event(run_dir: Path) -> dict | None:
    """The run's finished/failed event, read from the end of events.jsonl."""
    path = run_dir / "events.jsonl"
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            tail = f.read()
    except OSError:
        return None
    for line in reversed(tail.split(b"\n")):
        if b'"event"' not in line:
            continue
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if data.get("event") in ("finished", "failed"):
                return data
            return None
    return None


def _last_checkpoint_in_events(run_dir: Path) -> str | None:
    """The name in the run's last checkpoint event: found by a byte search from the end of events.jsonl,
    so that listing a crashed 200,000-step run every few seconds does not parse its whole log; and
    remembered while the log is unchanged (a crashed run's no longer grows)."""
    path = run_dir / "events.jsonl"
    try:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if _checkpoint_seen.get(path, (None,))[0] == key:
            return _checkpoint_seen[path][1]
        data = path.read_bytes()
    except OSError:
        return None
    name = _last_checkpoint_line(data)
    _checkpoint_seen[path] = (key, name)
    return name


_checkpoint_seen: dict[Path, tuple[tuple[int, int], str | None]] = {}  # events.jsonl -> (size, mtime), name


def _last_checkpoint_line(data: bytes) -> str | None:
    """The name in the last ``checkpoint`` line of an events.jsonl's bytes."""
    end = len(data)
    while (at := data.rfind(b'{"event": "checkpoint"', 0, end)) >= 0:
        stop = data.find(b"\n", at)
        if at > 0 and data[at - 1] != 10:  # not a line of its own
            end = at
            continue
        with contextlib.suppress(ValueError):
            record = json.loads(data[at:stop if stop >= 0 else len(data)])
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                return record["name"]
        end = at
    return None


def _writer_gone(status: RunStatus) -> str | None:
    """Why the process writing ``status`` is gone, or ``None`` while it may still run."""
    return gone_reason(status.pid, status.host, status.process_start, status.heartbeat, STALE_AFTER_SECONDS)


def run_status(run_dir: str | Path) -> RunStatus:
    """The status of the run in ``run_dir``: as its trainer last wrote it, or ``crashed`` (with its last
    checkpoint) when the trainer is gone without a final event. A run without ``status.json`` (older
    gpttui) is judged by its events alone."""
    run_dir = Path(run_dir)
    status = RunStatus(run_id=run_dir.name, run_dir=str(run_dir), state="unknown")
    try:
        data = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
        known = set(RunStatus.__dataclass_fields__)
        status = RunStatus(**{k: v for k, v in data.items() if k in known})
        status.run_dir = str(run_dir)
    except (OSError, ValueError, TypeError):
        pass
    if status.state in FINAL_STATES:
        return status
    final = _final_event(run_dir)
    if final is not None:  # the run ended (its last status write may have been lost)
        if final["event"] == "failed":
            status.state, status.message = "failed", final.get("message")
            status.last_checkpoint = final.get("last_checkpoint") or status.last_checkpoint
        else:
            status.state = "finished" if final.get("reason") == "completed" else "stopped"
            status.last_checkpoint = final.get("checkpoint") or status.last_checkpoint
        status.step = final.get("step", status.step)
        return status
    if status.state == "unknown":
        return status
    why = _writer_gone(status)
    if why is not None:
        status.state, status.message = "crashed", why
        status.last_checkpoint = status.last_checkpoint or _last_checkpoint_in_events(run_dir)
    return status


def list_runs(root: str | Path | None = None) -> list[RunStatus]:
    """Every run under ``root`` (default ``runs_dir()``): live runs first, then newest first."""
    root = Path(root) if root is not None else paths.runs_dir()
    runs = []
    with contextlib.suppress(OSError):
        with os.scandir(root) as it:
            for entry in it:
                if entry.is_dir() and not entry.name.startswith("."):
                    runs.append(run_status(entry.path))
    runs.sort(key=lambda r: (r.started or r.run_id, r.run_id), reverse=True)
    runs.sort(key=lambda r: not r.live)
    return runs


def find_run(run_id: str) -> Path:
    """The directory of run ``run_id`` (a unique prefix is enough)."""
    from gpttui.core.errors import GPTTUIError

    root = paths.runs_dir()
    if run_id and "/" not in run_id and (root / run_id).is_dir():
        return root / run_id
    matches = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(run_id)) if run_id else []
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise GPTTUIError(f"No run {run_id!r} in {root}. See `gpttui runs list`.")
    raise GPTTUIError(f"{run_id!r} names {len(matches)} runs; give more of the id.")


# --- commands --------------------------------------------------------------------------------------


def send_command(run_dir: str | Path, command: str) -> Path:
    """Ask the run's trainer to ``pause``, ``resume``, ``stop`` or ``save``; it acts between two steps."""
    if command not in COMMANDS:
        raise ValueError(f"unknown run command {command!r}; one of {', '.join(COMMANDS)}")
    folder = Path(run_dir) / COMMANDS_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"{time.time_ns():020d}-{secrets.token_hex(3)}.{command}"
    atomic_write(path, command + "\n", replace=False, durable=False)
    return path


class CommandInbox:
    """The trainer's side of ``commands/``: :meth:`poll` scans the folder (at most every
    :data:`COMMAND_POLL_SECONDS`), applies each command to ``control`` in order and deletes it."""

    def __init__(self, run_dir: str | Path, control: Any) -> None:
        self.dir = Path(run_dir) / COMMANDS_DIR
        self.control = control
        self._next = 0.0

    def poll(self, force: bool = False) -> list[str]:
        now = time.monotonic()
        if not force and now < self._next:
            return []
        self._next = now + COMMAND_POLL_SECONDS
        try:
            with os.scandir(self.dir) as it:
                names = sorted(e.name for e in it if not e.name.startswith("."))
        except OSError:
            return []
        done = []
        for name in names:
            command = name.rsplit(".", 1)[-1]
            with contextlib.suppress(OSError):
                os.unlink(self.dir / name)
            if command == "pause":
                self.control.pause()
            elif command == "resume":
                self.control.resume()
            elif command == "stop":
                self.control.stop(save=True, reason="stopped")
            elif command == "save":
                self.control.request_save()
            else:
                continue
            done.append(command)
        return done


# --- following events.jsonl ------------------------------------------------------------------------


class EventFollower:
    """Reads ``events.jsonl`` incrementally: each :meth:`read_new` (or :meth:`feed`) parses only the bytes
    appended since the last call; a partial last line is kept until its newline arrives."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / "events.jsonl"
        self.offset = 0
        self._partial = b""

    def read_new(self) -> list[dict]:
        """The records appended since the last call."""
        data, end = self._take_new()
        return _parse_lines(data, end) if end > 0 else []

    def feed(self, history: Any) -> int:
        """Feed what was appended since the last call to ``history`` (a :class:`RunHistory`). The first
        call reads the run's past: with its step index (:mod:`gpttui.core.stepindex`) where the index
        lines up with the log, so only the lines that are not steps are parsed; else parsed
        :data:`PIECE_BYTES` at a time (each piece's records fed while still in the CPU's cache, never
        more than one piece's records held). Returns how many records were fed."""
        first = self.offset == 0
        data, end = self._take_new()
        if end < 0:
            return 0
        if first:
            from gpttui.core.history import typed_event
            from gpttui.core.stepindex import plan_attach

            plan = plan_attach(self.path.parent, data, end)
            last = _parse_lines(plan.last_step_line, len(plan.last_step_line)) if plan is not None else []
            last_step = typed_event(last[0]) if last else None
            if last_step is not None and last_step.event == "step":
                fed = _feed_pieces(history, plan.before, len(plan.before))
                history.feed_steps(plan.steps, last_step, _first_step(data, plan.steps))
                return fed + len(plan.steps) + _feed_pieces(history, plan.after, len(plan.after))
        return _feed_pieces(history, data, end)

    def _take_new(self) -> tuple[bytes, int]:
        """(bytes, end): the bytes appended since the last call, whose complete lines end at ``end``
        (-1: none); the partial line after ``end`` is kept for the next call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return b"", -1
        if not data:
            return b"", -1
        self.offset += len(data)
        data = self._partial + data
        end = data.rfind(b"\n")
        self._partial = data[end + 1:]
        return data, end


PIECE_BYTES = 4 << 20  # what EventFollower.feed parses at once


def _feed_pieces(history: Any, data: bytes, end: int) -> int:
    """Feed the lines of ``data[:end]`` to ``history``, parsed :data:`PIECE_BYTES` at a time; how many records."""
    fed = 0
    start = 0
    while start < end:
        stop = data.rfind(b"\n", start, start + PIECE_BYTES)
        if stop <= start:  # a line longer than a piece
            stop = data.find(b"\n", start, end)
            stop = end if stop < 0 else stop
        piece = data[start:stop]
        records = _parse_lines(piece, len(piece))
        history.feed_records(records)
        fed += len(records)
        start = stop + 1
    return fed


def _first_step(data: bytes, steps: Any) -> Any:
    """The first indexed step's event, read from its line (a compiled run's warm-up is on it)."""
    from gpttui.core.history import typed_event

    start = int(steps["offset"][0])
    records = _parse_lines(data[start:start + int(steps["length"][0])] + b"\n", int(steps["length"][0]))
    return typed_event(records[0]) if records else None


def _parse_lines(data: bytes, end: int) -> list[dict]:
    """The JSON objects on the lines of ``data[:end]``; damaged lines (and anything but an object) skipped."""
    try:  # the usual case, every line sound: one parse for all (its text built with one copy)
        records = _loads(b"".join((b"[", memoryview(data.replace(b"\n", b","))[:end], b"]")))
    except ValueError:  # a damaged or empty line somewhere: line by line, skipping it
        records = []
        for line in data[:end].decode("utf-8", errors="replace").split("\n"):
            if line.strip():
                with contextlib.suppress(ValueError):
                    records.append(json.loads(line))
    return [r for r in records if type(r) is dict]


def _loads(data: bytes) -> Any:
    """JSON from bytes: orjson where installed (twice as fast on a long log), else the json module."""
    try:
        import orjson
    except ImportError:
        return json.loads(data.decode("utf-8", errors="replace"))
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:  # (a ValueError too; NaN is refused by both)
        raise ValueError(str(exc)) from None


__all__ = ["RunStatus", "StatusWriter", "run_status", "list_runs", "find_run", "send_command", "CommandInbox",
           "EventFollower", "write_starting_status", "COMMANDS", "LIVE_STATES", "FINAL_STATES"]
