"""A run's state, rebuilt from its events: what a monitor shows (curves, status, samples).

The trainer's thread feeds events in; a UI reads :meth:`RunHistory.snapshot` on a timer. Feeding is
O(1) and never blocks on the reader for longer than a list copy. The same object can be rebuilt from
a run directory's ``events.jsonl`` (:meth:`RunHistory.from_run_dir`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gpttui.core.events import (CheckpointEvent, EvalEvent, Event, EVENT_TYPES, FailedEvent, FinishedEvent,
                                SampleEvent, Started, StateEvent, StepEvent, read_run_events)


@dataclass
class Series:
    """Parallel columns of a curve."""

    step: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=dict)

    def append(self, step: int, tokens: int, **values: float) -> None:
        self.step.append(step)
        self.tokens.append(tokens)
        for k, v in values.items():
            self.values.setdefault(k, []).append(v)

    def copy(self) -> "Series":
        return Series(list(self.step), list(self.tokens), {k: list(v) for k, v in self.values.items()})

    def __len__(self) -> int:
        return len(self.step)


@dataclass
class Snapshot:
    status: str  # idle | starting | running | paused | finished | stopped | failed
    started: Started | None
    last_step: StepEvent | None
    last_eval: EvalEvent | None
    steps: Series
    evals: Series
    samples: list[SampleEvent]
    checkpoints: list[CheckpointEvent]
    finished: FinishedEvent | None
    failed: FailedEvent | None
    best_val_loss: float | None

    @property
    def progress(self) -> float:
        if self.last_step is None or not self.last_step.total_steps:
            return 0.0
        return min(1.0, self.last_step.step / self.last_step.total_steps)


class RunHistory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with getattr(self, "_lock", threading.Lock()):
            self.status = "idle"
            self.started: Started | None = None
            self.last_step: StepEvent | None = None
            self.last_eval: EvalEvent | None = None
            self.steps = Series()
            self.evals = Series()
            self.samples: list[SampleEvent] = []
            self.checkpoints: list[CheckpointEvent] = []
            self.finished: FinishedEvent | None = None
            self.failed: FailedEvent | None = None
            self.best_val_loss: float | None = None
            self.version = 0  # bumped on every event: readers redraw only when it changed

    def feed(self, event: Event) -> None:
        with self._lock:
            self.version += 1
            if isinstance(event, StepEvent):
                self.last_step = event
                self.status = "running"
                self.steps.append(event.step, event.tokens_seen, loss=event.loss, lr=event.lr,
                                  tokens_per_sec=event.tokens_per_sec, grad_norm=event.grad_norm)
            elif isinstance(event, EvalEvent):
                self.last_eval = event
                self.evals.append(event.step, event.tokens_seen, train_loss=event.train_loss,
                                  val_loss=event.val_loss, train_ppl=event.train_ppl, val_ppl=event.val_ppl)
                if math.isfinite(event.best_val_loss):
                    self.best_val_loss = event.best_val_loss
            elif isinstance(event, SampleEvent):
                self.samples.append(event)
            elif isinstance(event, CheckpointEvent):
                self.checkpoints.append(event)
            elif isinstance(event, StateEvent):
                self.status = "paused" if event.paused else "running"
            elif isinstance(event, Started):
                self.started = event
                self.status = "running"
            elif isinstance(event, FinishedEvent):
                self.finished = event
                self.status = "finished" if event.reason == "completed" else "stopped"
            elif isinstance(event, FailedEvent):
                self.failed = event
                self.status = "failed"

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self.status, self.started, self.last_step, self.last_eval, self.steps.copy(),
                            self.evals.copy(), list(self.samples), list(self.checkpoints), self.finished,
                            self.failed, self.best_val_loss)

    @classmethod
    def from_events(cls, events: Sequence[dict[str, Any]]) -> "RunHistory":
        history = cls()
        history.feed_records(events)
        return history

    def feed_records(self, events: Sequence[dict[str, Any]]) -> None:
        """Feed events as read from events.jsonl (e.g. by :class:`gpttui.core.runs.EventFollower`)."""
        for data in events:
            event = typed_event(data)
            if event is not None:
                self.feed(event)

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> "RunHistory":
        return cls.from_events(read_run_events(run_dir))


def typed_event(data: dict[str, Any]) -> Event | None:
    """An event record read from events.jsonl as its event dataclass; ``None`` for an unknown, damaged
    or crafted record."""
    kind = EVENT_TYPES.get(data.get("event", "")) if isinstance(data, dict) else None
    if kind is None:
        return None
    fields = {k: v for k, v in data.items() if k != "event"}
    for k, v in fields.items():  # JSON wrote non-finite floats as null / "inf"
        if v is None and k in ("loss", "train_loss", "val_loss", "train_ppl", "val_ppl"):
            fields[k] = math.nan
        elif v in ("inf", "-inf"):
            fields[k] = float(v)
    try:
        event = kind(**fields)
    except TypeError:
        return None  # an event from another version
    return event if _well_typed(event) else None  # a damaged line is skipped, never drawn


_KIND_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
               "list": (list,)}
_FIELD_KINDS: dict[type, list[tuple[str, tuple[type, ...], bool, bool]]] = {}


def _field_kinds(cls: type) -> list[tuple[str, tuple[type, ...], bool, bool]]:
    """(name, accepted types, None allowed, bool allowed) per field of an event class, worked out once."""
    kinds = _FIELD_KINDS.get(cls)
    if kinds is None:
        kinds = []
        for f in dataclasses.fields(cls):
            names = [k.strip() for k in str(f.type).split("|")]
            types = tuple(t for k in names for t in _KIND_TYPES.get(k, ()))
            kinds.append((f.name, types, "None" in names, "bool" in names))
        _FIELD_KINDS[cls] = kinds
    return kinds


def _well_typed(event: Event) -> bool:
    """Whether every field of an event read from a file has its declared type (``"step": "x"`` has not)."""
    for name, types, none_ok, bool_ok in _field_kinds(type(event)):
        value = getattr(event, name)
        if value is None and none_ok:
            continue
        if isinstance(value, bool) and not bool_ok:
            return False
        if not isinstance(value, types):
            return False
    return True


def downsample(xs: Sequence[float], ys: Sequence[float], max_points: int) -> tuple[list[float], list[float]]:
    """At most ``max_points`` points that keep the curve's shape: the mean of each bucket of
    consecutive points, placed at the bucket's last x (so the last point is the newest)."""
    n = len(xs)
    if n <= max_points:
        return list(xs), list(ys)
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    edges = np.linspace(0, n, max_points + 1).astype(np.int64)
    means = np.add.reduceat(y, edges[:-1]) / np.diff(edges)
    bx = x[edges[1:] - 1]
    keep = np.isfinite(means)
    return bx[keep].tolist(), means[keep].tolist()
