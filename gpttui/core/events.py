"""What a training run reports: typed event dataclasses (with a registry, :data:`EVENT_TYPES`), and the
run directory that keeps them: ``$GPTTUI_HOME/runs/<id>/`` with ``config.json`` and an append-only
``events.jsonl`` (:class:`RunLog` writes it, :func:`read_run_events` reads it back).

The trainer gives each event to a callback and to the run log; front ends and
:class:`gpttui.core.history.RunHistory` read them. Nothing here knows the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar

from gpttui.core import paths
from gpttui.core.fileio import atomic_write, jsonable


@dataclass
class Event:
    event: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, **dataclasses.asdict(self)}


@dataclass
class Started(Event):
    event: ClassVar[str] = "started"
    run_id: str
    run_dir: str
    config: dict
    model_config: dict
    n_params: int
    device: str
    dtype: str
    total_steps: int
    steps_per_epoch: float
    tokens_per_step: int
    start_step: int = 0
    resumed_from: str | None = None
    dataset: dict = field(default_factory=dict)
    save_name: str | None = None  # where this run saves (held for the whole run)
    notes: list = field(default_factory=list)  # decisions the user should know about
    processes: int = 1  # torchrun DDP: processes training together (device is rank 0's)


@dataclass
class StepEvent(Event):
    event: ClassVar[str] = "step"
    step: int  # optimizer steps done, this one included: 1 after the first step (the book's global_step + 1)
    epoch: int  # 1-based, as the book prints it
    tokens_seen: int
    loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    elapsed: float
    total_steps: int
    eta: float | None = None
    peak_memory: int | None = None  # bytes the device's allocator held at most so far (CUDA/MPS; CPU: peak RSS)
    mfu: float | None = None  # model FLOPs utilisation, 0-1, against the device's peak (gpttui.core.flops)
    compile_seconds: float | None = None  # on the first step of a compiled run: its warm-up, kept out of tok/s


@dataclass
class EvalEvent(Event):
    event: ClassVar[str] = "eval"
    step: int
    epoch: int
    tokens_seen: int
    train_loss: float
    val_loss: float
    train_ppl: float
    val_ppl: float
    best_val_loss: float


@dataclass
class SampleEvent(Event):
    event: ClassVar[str] = "sample"
    step: int
    epoch: int
    prompt: str
    text: str


@dataclass
class CheckpointEvent(Event):
    event: ClassVar[str] = "checkpoint"
    step: int
    name: str
    path: str


@dataclass
class StateEvent(Event):
    """Paused or running again."""

    event: ClassVar[str] = "state"
    paused: bool
    step: int


@dataclass
class FinishedEvent(Event):
    event: ClassVar[str] = "finished"
    reason: str  # completed | stopped | interrupted
    step: int
    tokens_seen: int
    elapsed: float
    checkpoint: str | None = None
    best_val_loss: float | None = None


@dataclass
class FailedEvent(Event):
    event: ClassVar[str] = "failed"
    message: str
    step: int
    last_checkpoint: str | None = None


EVENT_TYPES = {cls.event: cls for cls in (Started, StepEvent, EvalEvent, SampleEvent, CheckpointEvent,
                                          StateEvent, FinishedEvent, FailedEvent)}
Callback = Callable[[Event], None]


def event_record(event: Event) -> dict[str, Any]:
    """``event`` as JSON data, as events.jsonl and ``gpttui train --json`` hold it (NaN as null, an
    infinite loss as ``"inf"``)."""
    return jsonable(event.to_dict(), event.event, inf_as_text=True)


# --- run directory -------------------------------------------------------------------------------


class RunLog:
    """``$GPTTUI_HOME/runs/<id>/``: config.json and an append-only events.jsonl, flushed per event; each step
    event is also indexed in ``steps.idx`` (:mod:`gpttui.core.stepindex`), before its line is written."""

    def __init__(self, run_id: str) -> None:
        from gpttui.core.stepindex import StepIndexWriter

        self.run_id = run_id
        self.dir = paths.runs_dir() / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self._events = open(self.dir / "events.jsonl", "ab")
        self._size = os.fstat(self._events.fileno()).st_size  # where the next line starts
        self._index = StepIndexWriter(self.dir)

    def write_config(self, config: dict) -> None:
        atomic_write(self.dir / "config.json", json.dumps(config, indent=2, default=str), durable=False)

    def append(self, event: Event) -> None:
        line = json.dumps(event_record(event)).encode("utf-8")
        if isinstance(event, StepEvent):
            self._index.append(self._size, len(line), event)
        try:
            self._events.write(line + b"\n")
            self._events.flush()
        except OSError:
            self._index.close()  # where the next line starts is unknown now: index no more steps
            raise
        self._size += len(line) + 1

    def close(self) -> None:
        self._index.close()
        try:
            self._events.close()
        except OSError:
            pass  # a full disk: the events written so far were flushed one by one


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def read_run_events(run_dir: str | Path) -> list[dict]:
    """The events of a run so far (another process may still be appending)."""
    events = []
    path = Path(run_dir) / "events.jsonl"
    if not path.exists():
        return events
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                try:
                    events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return events


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


__all__ = ["Event", "Started", "StepEvent", "EvalEvent", "SampleEvent", "CheckpointEvent", "StateEvent",
           "FinishedEvent", "FailedEvent", "EVENT_TYPES", "Callback", "event_record", "RunLog", "new_run_id",
           "read_run_events"]
