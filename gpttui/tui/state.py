"""What the app knows, shared by its screens: the dataset in use and the training session.

The monitor's view of a run is the engine's :class:`RunHistory`, fed by the trainer's thread; the
screens redraw from its snapshots, never from counting messages.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from textual.worker import Worker, WorkerState

from gpttui.core import paths
from gpttui.core.data import Corpus, DataSettings, PreparedData
from gpttui.core.history import RunHistory
from gpttui.core.train import Event, StepEvent, TrainControl, Trainer

if TYPE_CHECKING:
    from textual.app import App

RECENT_FILE = "recent_sources.json"
MAX_RECENT = 8


def load_recent() -> list[str]:
    try:
        data = json.loads((paths.config_dir() / RECENT_FILE).read_text(encoding="utf-8"))
        return [s for s in data if isinstance(s, str)][:MAX_RECENT]
    except (OSError, ValueError):
        return []


def remember_source(source: str) -> list[str]:
    recent = [source] + [s for s in load_recent() if s != source]
    recent = recent[:MAX_RECENT]
    try:
        (paths.config_dir() / RECENT_FILE).write_text(json.dumps(recent), encoding="utf-8")
    except OSError:
        pass
    return recent


class TrainingSession:
    """One training run at a time, in a thread worker owned by the app (switching screens does not
    cancel it)."""

    def __init__(self) -> None:
        self.history = RunHistory()
        self.control: TrainControl | None = None
        self.trainer: Trainer | None = None
        self.worker: Worker | None = None
        self.label = ""
        self.done = threading.Event()
        self.done.set()  # nothing running yet

    @property
    def running(self) -> bool:
        return self.worker is not None and self.worker.state in (WorkerState.PENDING, WorkerState.RUNNING)

    def start(self, app: "App", trainer: Trainer, label: str) -> Worker:
        from gpttui.tui.messages import TrainingEvent

        if self.running:
            raise RuntimeError("A training run is already in progress.")
        self.history.reset()
        self.history.status = "starting"
        self.trainer, self.control, self.label = trainer, trainer.control, label

        def callback(event: Event) -> None:  # runs in the training thread: never blocks on the UI
            self.history.feed(event)
            if not isinstance(event, StepEvent):
                app.post_message(TrainingEvent(event))

        trainer.callback = callback
        done = self.done = threading.Event()

        def run() -> Event:
            try:
                return trainer.run()
            finally:
                done.set()  # also when the app has gone and cancelled the worker object

        self.worker = app.run_worker(run, name="training", group="training", thread=True,
                                     exclusive=True, exit_on_error=False)
        return self.worker

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until the training thread has ended (its final save included)."""
        return self.done.wait(timeout)

    def stop(self, save: bool = True) -> None:
        if self.control is not None and self.running:
            self.control.stop(save=save)


@dataclass
class AppState:
    settings: DataSettings = field(default_factory=DataSettings)
    corpus: Corpus | None = None
    prepared: PreparedData | None = None
    session: TrainingSession = field(default_factory=TrainingSession)
    # Intents between screens (set by one, read by the other when it is shown): no screen writes
    # another screen's widgets.
    generate_checkpoint: str | None = None  # the Checkpoints screen's Generate
    continue_checkpoint: str | None = None  # the Checkpoints screen's Continue
    checkpoints_version: int = 0  # bumped when the running training saves: lists of checkpoints re-read
    data_context_set: bool = False  # the Dataset screen's context was set by the user (else it follows the model)
