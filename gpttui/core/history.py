"""A run's state, rebuilt from its events: what a monitor shows (curves, status, samples).

The trainer's thread feeds events in; a UI reads :meth:`RunHistory.snapshot` on a timer. Feeding is
O(1), and so is a snapshot: the curves are append-only columns (``array``), and a snapshot shares them,
remembering only their lengths (:class:`Column`), so the Train screen can take one several times a second
from a 200,000-step run. The same object can be rebuilt from a run directory's ``events.jsonl``
(:meth:`RunHistory.from_run_dir`; :meth:`gpttui.core.runs.EventFollower.feed`, or
:meth:`RunHistory.feed_records` with what the follower read): sound step and eval records go straight into the columns,
everything else through :func:`typed_event`; a run's step index (:mod:`gpttui.core.stepindex`) fills the step
columns without parsing at all (:meth:`RunHistory.feed_steps`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from gpttui.core.events import (CheckpointEvent, EvalEvent, Event, EVENT_TYPES, FailedEvent, FinishedEvent,
                                SampleEvent, Started, StateEvent, StepEvent)

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # what an int column holds; a bigger number is damage
FEED_CHUNK = 8192  # records fed under one hold of the lock (a reader waits at most that long)


class Column(Sequence):
    """The first ``n`` items of an append-only column, frozen: what a snapshot holds instead of a copy.

    Items below ``n`` never change (the column only grows), so sharing it is safe while the feeding
    thread appends; ``np.asarray(column)`` copies just those ``n`` items at memcpy speed."""

    __slots__ = ("_data", "_n")

    def __init__(self, data: array, n: int | None = None) -> None:
        self._data = data
        self._n = len(data) if n is None else n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._data[:self._n][index].tolist()
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError("column index out of range")
        return self._data[index]

    def __iter__(self) -> Iterator:
        return itertools.islice(self._data, self._n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Column, list, tuple, array)):
            return len(other) == self._n and self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Column({self.tolist()!r})"

    def tolist(self) -> list:
        return self._data[:self._n].tolist()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        # A slice of the array is a private copy: no buffer of the live column is ever exported
        # (an exported buffer would make the feeding thread's append raise BufferError).
        out = np.frombuffer(self._data[:self._n], dtype=np.int64 if self._data.typecode == "q" else np.float64)
        return out if dtype is None else out.astype(dtype, copy=False)


def _ints() -> array:
    return array("q")


@dataclass
class Series:
    """Parallel columns of a curve: ``step`` and ``tokens`` (int64) and one float64 column per value.

    A history's live series grow on the feeding thread: read them through :meth:`RunHistory.snapshot`
    (a numpy view kept on a live ``array`` would make its next append raise BufferError)."""

    step: Sequence[int] = field(default_factory=_ints)
    tokens: Sequence[int] = field(default_factory=_ints)
    values: dict[str, Sequence[float]] = field(default_factory=dict)

    def append(self, step: int, tokens: int, **values: float) -> None:
        self.step.append(step)
        self.tokens.append(tokens)
        for k, v in values.items():
            self.values.setdefault(k, array("d")).append(v)

    @classmethod
    def with_columns(cls, *names: str) -> "Series":
        """An empty series with its value columns made up front (so every reader sees the same keys)."""
        return cls(values={k: array("d") for k in names})

    def columns(self, *names: str) -> list[array]:
        """The value columns ``names`` (made where missing), for appending to them directly."""
        return [self.values.setdefault(k, array("d")) for k in names]

    def copy(self) -> "Series":
        """This series as it is now, unaffected by later appends: frozen views (:class:`Column`), not copies."""
        return Series(Column(self.step), Column(self.tokens), {k: Column(v) for k, v in self.values.items()})

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
    compile_seconds: float | None = None  # a compiled run's warm-up (its first step's), kept for the status

    @property
    def progress(self) -> float:
        if self.last_step is None or not self.last_step.total_steps:
            return 0.0
        return min(1.0, self.last_step.step / self.last_step.total_steps)


STEP_VALUES = ("loss", "lr", "tokens_per_sec", "grad_norm")
EVAL_VALUES = ("train_loss", "val_loss", "train_ppl", "val_ppl")


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
            self.steps = Series.with_columns(*STEP_VALUES)
            self.evals = Series.with_columns(*EVAL_VALUES)
            self.samples: list[SampleEvent] = []
            self.checkpoints: list[CheckpointEvent] = []
            self.finished: FinishedEvent | None = None
            self.failed: FailedEvent | None = None
            self.best_val_loss: float | None = None
            self.compile_seconds: float | None = None  # from the step that carried it (the first)
            self.version = 0  # bumped on every event: readers redraw only when it changed

    def feed(self, event: Event) -> None:
        with self._lock:
            self._apply(event)

    def _apply(self, event: Event) -> None:
        """One event into the history (the lock held)."""
        self.version += 1
        if isinstance(event, StepEvent):
            self.last_step = event
            if event.compile_seconds is not None:
                self.compile_seconds = event.compile_seconds
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
        """The history now, for a reader on another thread; O(1) in the run's length (shared columns)."""
        with self._lock:
            return Snapshot(self.status, self.started, self.last_step, self.last_eval, self.steps.copy(),
                            self.evals.copy(), list(self.samples), list(self.checkpoints), self.finished,
                            self.failed, self.best_val_loss, self.compile_seconds)

    @classmethod
    def from_events(cls, events: Iterable[dict[str, Any]]) -> "RunHistory":
        history = cls()
        history.feed_records(events)
        return history

    def feed_records(self, events: Iterable[dict[str, Any]]) -> None:
        """Feed events as read from events.jsonl (e.g. by :class:`gpttui.core.runs.EventFollower`): the same
        history as :func:`typed_event` + :meth:`feed` on each, several times faster (see :func:`_feed_chunk`)."""
        it = iter(events)
        while chunk := list(itertools.islice(it, FEED_CHUNK)):
            with self._lock:
                _feed_chunk(self, chunk)

    def feed_steps(self, rows: np.ndarray, last: StepEvent, first: StepEvent | None = None) -> None:
        """Append step rows read from a run's step index (:func:`gpttui.core.stepindex.plan_attach`: fields
        ``step``, ``tokens``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_sec``) in bulk, ``last`` (the
        last row's event, read from its line) becoming :attr:`last_step`: what feeding the rows' step
        events one by one would do. ``first`` (the first row's event) gives a compiled run's warm-up."""
        with self._lock:
            if first is not None and first.compile_seconds is not None:
                self.compile_seconds = first.compile_seconds
            ints = (self.steps.step, self.steps.tokens)
            for column, name in zip((*ints, *self.steps.columns(*STEP_VALUES)), ("step", "tokens", *STEP_VALUES)):
                native = "=i8" if column.typecode == "q" else "=f8"
                column.frombytes(np.ascontiguousarray(rows[name], dtype=native).tobytes())
            self.version += len(rows)
            self.status = "running"
            self.last_step = last

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> "RunHistory":
        """The history of the run in ``run_dir`` so far (read as a follower reads it, in bulk)."""
        from gpttui.core.runs import EventFollower  # (runs knows nothing of histories: no import cycle)

        history = cls()
        EventFollower(run_dir).feed(history)
        return history


STEP_KEYS = ("event", "step", "epoch", "tokens_seen", "loss", "lr", "grad_norm", "tokens_per_sec", "elapsed",
             "total_steps", "eta", "peak_memory", "mfu", "compile_seconds")  # a StepEvent's record as RunLog
# writes it, in this order
EVAL_KEYS = ("event", "step", "epoch", "tokens_seen", "train_loss", "val_loss", "train_ppl", "val_ppl",
             "best_val_loss")


def _feed_chunk(h: RunHistory, records: list) -> None:
    """Records into ``h`` (its lock held). A step or eval record with exactly RunLog's keys, in its order,
    and values of exactly the types it writes (ints, floats; eta may be null) goes straight into the
    columns (gathered in lists, appended in bulk by :func:`_flush`), and only the newest of each kind
    becomes an event (``last_step`` / ``last_eval``). Anything else -- other kinds, null or "inf" values,
    ints where floats go, missing, extra or reordered keys, damage -- takes the general path
    (:func:`typed_event`, which skips what it cannot read), after a flush, so the records' order is kept.
    The history is the same either way; this way costs about a microsecond a record instead of ten."""
    st: tuple[list, ...] = ([], [], [], [], [], [])  # step, tokens, then STEP_VALUES
    ev: tuple[list, ...] = ([], [], [], [], [], [])  # step, tokens, then EVAL_VALUES
    s_step, s_tokens, s_loss, s_lr, s_tps, s_gn = (c.append for c in st)
    e_step, e_tokens, e_tl, e_vl, e_tp, e_vp = (c.append for c in ev)
    isfinite, lo, hi = math.isfinite, INT64_MIN, INT64_MAX
    last_step = last_eval = best_val = None  # the newest fast-path records (made events at the end)
    # A parser hands out the same key objects record after record: compared with the tuple of the last
    # match, the keys compare by identity (a third faster than with constants).
    step_keys, eval_keys = STEP_KEYS, EVAL_KEYS
    for d in records:
        if type(d) is dict:
            keys = tuple(d)
            if keys == step_keys:
                step_keys = keys
                kind, step, epoch, tokens, loss, lr, gn, tps, elapsed, total, eta, _mem, _mfu, warm = d.values()
                if (kind == "step" and type(step) is int and type(epoch) is int and type(tokens) is int
                        and type(total) is int and type(loss) is float and type(lr) is float and type(gn) is float
                        and type(tps) is float and type(elapsed) is float and (eta is None or type(eta) is float)
                        and lo <= step <= hi and lo <= tokens <= hi):
                    s_step(step)
                    s_tokens(tokens)
                    s_loss(loss)
                    s_lr(lr)
                    s_tps(tps)
                    s_gn(gn)
                    last_step = d
                    if type(warm) is float:  # a compiled run's first step
                        h.compile_seconds = warm
                    continue
            elif keys == eval_keys:
                eval_keys = keys
                kind, step, epoch, tokens, tl, vl, tp, vp, best = d.values()
                if (kind == "eval" and type(step) is int and type(epoch) is int and type(tokens) is int
                        and type(tl) is float and type(vl) is float and type(tp) is float and type(vp) is float
                        and type(best) is float and lo <= step <= hi and lo <= tokens <= hi):
                    e_step(step)
                    e_tokens(tokens)
                    e_tl(tl)
                    e_vl(vl)
                    e_tp(tp)
                    e_vp(vp)
                    if isfinite(best):
                        best_val = best
                    last_eval = d
                    continue
        if st[0] or ev[0]:
            _flush(h, st, ev, best_val)
            best_val = None
        event = typed_event(d)
        if event is not None:
            if isinstance(event, StepEvent):
                last_step = None
            elif isinstance(event, EvalEvent):
                last_eval = None
            h._apply(event)
    _flush(h, st, ev, best_val)
    if last_step is not None:
        h.last_step = typed_event(last_step) or h.last_step
    if last_eval is not None:
        h.last_eval = typed_event(last_eval) or h.last_eval


def _flush(h: RunHistory, st: tuple[list, ...], ev: tuple[list, ...], best_val: float | None) -> None:
    """Append the gathered fast-path rows to ``h``'s columns (and empty the lists), doing to the status,
    best loss and version what feeding them one by one would have done."""
    if st[0]:
        h.status = "running"
    if best_val is not None:
        h.best_val_loss = best_val
    for series, names, rows in ((h.steps, STEP_VALUES, st), (h.evals, EVAL_VALUES, ev)):
        if rows[0]:
            h.version += len(rows[0])
            for column, pending in zip((series.step, series.tokens, *series.columns(*names)), rows):
                column.fromlist(pending)
                pending.clear()


def typed_event(data: dict[str, Any]) -> Event | None:
    """An event record read from events.jsonl as its event dataclass; ``None`` for an unknown, damaged
    or crafted record."""
    name = data.get("event") if isinstance(data, dict) else None
    kind = EVENT_TYPES.get(name) if isinstance(name, str) else None  # (a list there is not hashable)
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
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            return False  # no column holds it: damage, or a crafted line
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
