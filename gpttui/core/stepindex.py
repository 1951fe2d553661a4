"""A run's step index, ``steps.idx``: the step events of ``events.jsonl`` again, as fixed-width binary records.

Attaching to a long run means reading its past: 200,000 step lines of JSON take over a second to parse and
file into columns, while the same numbers as binary records are one ``np.frombuffer``. So the run log
(:class:`gpttui.core.events.RunLog`) writes each step event twice: first its record here, then its line in
``events.jsonl``. A record holds the byte offset and length of its line, so a reader can check, for every
step line it finds, that the record at the same position was written for exactly that line
(:func:`plan_attach`). Anything that does not line up -- an index missing or cut short (an older gpttui, a
full disk), a line damaged or merged with another, a record of another version, a non-finite value that
JSON writes differently -- makes the reader fall back to parsing the JSON, so the history drawn is the
same either way. ``events.jsonl`` stays the record of truth; this file only makes reading it faster.

Layout: :data:`MAGIC` (16 bytes), then one little-endian :data:`RECORD` (64 bytes) per step event.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "steps.idx"
MAGIC = b"gpttui steps v1\n"
RECORD = np.dtype([("offset", "<i8"), ("length", "<i8"), ("step", "<i8"), ("tokens", "<i8"), ("loss", "<f8"),
                   ("lr", "<f8"), ("grad_norm", "<f8"), ("tokens_per_sec", "<f8")])
_PACK = struct.Struct("<qqqqdddd")
STEP_PREFIX = b'{"event": "step", '  # how every step line RunLog writes begins (json.dumps, "event" first)
assert _PACK.size == RECORD.itemsize == 64 and len(MAGIC) == 16


class StepIndexWriter:
    """Appends one record per step event to ``run_dir/steps.idx``, written (and flushed) before the event's
    line, so that a reader never sees a step line whose record is not there yet. A write that fails
    (a full disk) ends the index: later steps are not indexed, and readers fall back to the JSON."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / INDEX_FILE
        self._file: Any = None
        with contextlib.suppress(OSError):
            self._file = self._open()

    def _open(self):
        f = open(self.path, "ab")
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            f.write(MAGIC)
            f.flush()
            return f
        with open(self.path, "rb") as r:
            head = r.read(len(MAGIC))
        if head != MAGIC:  # another version's index: leave it as it is, write none
            f.close()
            return None
        whole = len(MAGIC) + (size - len(MAGIC)) // RECORD.itemsize * RECORD.itemsize
        if whole != size:  # a record cut short by a crash: later records must stay aligned
            os.ftruncate(f.fileno(), whole)
        return f

    @property
    def active(self) -> bool:
        return self._file is not None

    def append(self, offset: int, length: int, event: Any) -> None:
        """The record of step ``event`` whose line will start at byte ``offset`` of events.jsonl and be
        ``length`` bytes long (without its newline)."""
        if self._file is None:
            return
        try:
            self._file.write(_PACK.pack(offset, length, event.step, event.tokens_seen, event.loss, event.lr,
                                        event.grad_norm, event.tokens_per_sec))
            self._file.flush()
        except (OSError, TypeError, ValueError, struct.error):  # a full disk; a value no record holds
            self.close()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def read_index(run_dir: str | Path) -> np.ndarray | None:
    """The whole records of ``run_dir/steps.idx`` (a structured array of :data:`RECORD`), or ``None``
    where there is no index or it is not this version's."""
    try:
        raw = (Path(run_dir) / INDEX_FILE).read_bytes()
    except OSError:
        return None
    if raw[:len(MAGIC)] != MAGIC:
        return None
    count = (len(raw) - len(MAGIC)) // RECORD.itemsize
    return np.frombuffer(raw, RECORD, count=count, offset=len(MAGIC))


@dataclass
class AttachPlan:
    """``events.jsonl`` split for a fast attach: the step lines' values from the index, and the other
    lines' bytes (newline-separated) before and after the last step line, to be parsed as JSON."""

    steps: np.ndarray  # RECORD rows, one per step line, in order
    last_step_line: bytes  # parsed to make the history's last StepEvent
    before: bytes  # the other lines before the last step line
    after: bytes  # ... and after it


def plan_attach(run_dir: str | Path, data: bytes, end: int) -> AttachPlan | None:
    """How to read ``data[:end]`` -- the complete lines of ``events.jsonl`` from its first byte -- with the
    run's step index; ``None`` unless every step line has its record (same offset, same length) and every
    record's values are finite (JSON writes NaN as null, and the event reader judges those lines)."""
    if end <= 0:
        return None
    rows = read_index(run_dir)
    if rows is None or len(rows) == 0:
        return None
    buf = np.frombuffer(data, np.uint8, count=end + 1)  # data[end] is the last newline
    ends = np.flatnonzero(buf == 10)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    width = len(STEP_PREFIX)
    probe = np.minimum(starts[:, None] + np.arange(width), end)  # (a short line reads its newline: no match)
    is_step = (buf[probe] == np.frombuffer(STEP_PREFIX, np.uint8)).all(axis=1) & (lengths >= width)
    count = int(is_step.sum())
    if count == 0 or len(rows) < count:
        return None
    steps = rows[:count]
    if not (np.array_equal(steps["offset"], starts[is_step]) and np.array_equal(steps["length"], lengths[is_step])):
        return None
    values = np.stack([steps[k] for k in ("loss", "lr", "grad_norm", "tokens_per_sec")])
    if not np.isfinite(values).all():
        return None
    last = int(np.flatnonzero(is_step)[-1])
    other = np.flatnonzero(~is_step & (lengths > 0))
    cut = int(np.searchsorted(other, last))

    def joined(lines: np.ndarray) -> bytes:
        return b"\n".join([data[s:e] for s, e in zip(starts[lines].tolist(), ends[lines].tolist())])

    return AttachPlan(steps, data[starts[last]:ends[last]], joined(other[:cut]), joined(other[cut:]))


__all__ = ["StepIndexWriter", "read_index", "plan_attach", "AttachPlan", "INDEX_FILE", "RECORD", "MAGIC"]
