"""What the app knows, shared by its screens: the dataset in use and the training sessions.

The monitor's view of a run is the engine's :class:`RunHistory`, fed by the trainer's thread (a run in
this app, :class:`TrainingSession`) or by a thread following a run directory (a run in another
process, :class:`FollowedRun`); the screens redraw from its snapshots, never from counting messages.
Both offer the same small interface (``history``, ``label``, ``kind``, ``running``, ``paused``,
``pause()``, ``resume()``, ``stop()``, ``request_save()``, ``run_dir``), so no screen reaches into a
trainer's control.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

from textual.worker import Worker

from gpttui.core import paths
from gpttui.core.data import DataSettings, PreparedData
from gpttui.core.fileio import atomic_write
from gpttui.core.history import RunHistory, typed_event
from gpttui.core.runs import FINAL_STATES, EventFollower, RunStatus, run_status, send_command
from gpttui.core.train import Event, FailedEvent, StepEvent, TrainControl, Trainer

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


LAST_DATASET_FILE = "last_dataset.json"


def load_last_dataset() -> tuple[DataSettings, bool] | None:
    """The data settings the Dataset screen last loaded successfully, and whether their context length was
    the user's own (``AppState.data_context_set``); None when there are none. A file that is missing,
    unreadable, corrupt or holds invalid settings is ignored: the app then starts on the defaults."""
    try:
        data = json.loads((paths.config_dir() / LAST_DATASET_FILE).read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(DataSettings)}
        values = {k: v for k, v in data["settings"].items() if k in fields}
        settings = DataSettings(**values)
        if not isinstance(settings.source, str) or not isinstance(settings.tokenizer, str) or settings.problems():
            return None
        return settings, bool(data.get("context_set", False))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def remember_dataset(settings: DataSettings, context_set: bool) -> None:
    """Keep ``settings`` for the next start (written atomically; a failure to write only costs that)."""
    record = {"settings": dataclasses.asdict(settings), "context_set": bool(context_set)}
    try:
        atomic_write(paths.config_dir() / LAST_DATASET_FILE, json.dumps(record, indent=1).encode(), durable=False)
    except OSError:
        pass


def _last_settings() -> DataSettings:
    last = load_last_dataset()
    return last[0] if last is not None else DataSettings()


def _last_context_set() -> bool:
    last = load_last_dataset()
    return last[1] if last is not None else False


IN_APP = "in this app"
BACKGROUND = "in the background"


class TrainingSession:
    """One training run at a time, in a thread worker owned by the app (switching screens does not
    cancel it)."""

    kind = IN_APP

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
        # The training thread's own flag, not the worker's state: when the app shuts down Textual cancels
        # the worker object, but the thread trains on until it is told to stop (and must be told).
        return not self.done.is_set()

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

    @property
    def paused(self) -> bool:
        return bool(self.control is not None and self.running and self.control.paused)

    def pause(self) -> None:
        if self.control is not None and self.running:
            self.control.pause()

    def resume(self) -> None:
        if self.control is not None and self.running:
            self.control.resume()

    def request_save(self) -> None:
        if self.control is not None and self.running:
            self.control.request_save()

    @property
    def run_dir(self) -> Path | None:
        """The run directory the trainer writes (``runs/<id>/``), once a run was started."""
        return paths.runs_dir() / self.trainer.run_id if self.trainer is not None else None


FOLLOW_SECONDS = 0.25  # new events are read this often
STATUS_SECONDS = 1.0  # status.json (paused / crashed / finished) is re-read this often


class FollowedRun:
    """A run in another process (``gpttui train``, detached or not, or this app's "in the background"),
    followed through its run directory by a thread worker of the app (group ``follow``): its events feed
    :attr:`history` (everything once on attach, then only the new bytes), its ``status.json`` is
    re-read about every second, and its controls are commands dropped in ``commands/``. Letting it go
    (:meth:`detach`) ends the thread, never the run."""

    kind = BACKGROUND

    def __init__(self, run_dir: str | Path, label: str = "") -> None:
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name
        self.history = RunHistory()
        self.history.status = "starting"
        self.status: RunStatus | None = None
        self.worker: Worker | None = None
        self.ended = False  # the run finished, failed or crashed (as far as its directory says)
        self._label = label
        self._detached = threading.Event()
        self.done = threading.Event()  # the following thread has ended

    @property
    def label(self) -> str:
        started = self.history.started
        return (self._label or (started.save_name if started is not None else None)
                or (self.status.save_name if self.status is not None else None) or self.run_id)

    @property
    def running(self) -> bool:
        """Whether the run lives (and is followed): its controls apply."""
        return self.worker is not None and not self.ended and not self.done.is_set()

    @property
    def paused(self) -> bool:
        return self.running and self.history.status == "paused"

    def start(self, app: "App") -> Worker:
        self.worker = app.run_worker(lambda: self._follow(app), name=f"follow {self.run_id}", group="follow",
                                     thread=True, exit_on_error=False)
        return self.worker

    def detach(self) -> None:
        """Stop following (the thread ends within :data:`FOLLOW_SECONDS`); the run goes on."""
        self._detached.set()

    def wait_done(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    # -- controls: commands through the run directory, honoured by the trainer between two steps
    def _send(self, command: str) -> None:
        if self.running:
            send_command(self.run_dir, command)

    def pause(self) -> None:
        self._send("pause")

    def resume(self) -> None:
        self._send("resume")

    def stop(self, save: bool = True) -> None:
        """Stop after the current step; the trainer saves (a run directory's stop always saves)."""
        self._send("stop")

    def request_save(self) -> None:
        self._send("save")

    # -- the following thread
    def _follow(self, app: "App") -> None:
        from gpttui.tui.messages import TrainingEvent

        def announce(event: Event) -> None:
            if not isinstance(event, StepEvent):
                app.post_message(TrainingEvent(event))

        try:
            follower = EventFollower(self.run_dir)
            follower.feed(self.history)  # the past: drawn, not announced (parsed piece by piece)
            next_status = 0.0
            while not self.ended:
                for record in follower.read_new():
                    self._feed_record(record, announce)
                if self.history.finished is not None or self.history.failed is not None:
                    self.ended = True
                    break
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + STATUS_SECONDS
                    self._check_status(follower, announce)
                if self.ended or self._detached.wait(FOLLOW_SECONDS):
                    break
        finally:
            self.done.set()

    def _check_status(self, follower: EventFollower, announce) -> None:
        """Re-read status.json: a crashed run is reported (status line and notification) with its last
        checkpoint; a run that ended without its final event reaching us ends the following too."""
        status = self.status = run_status(self.run_dir)
        if status.state == "crashed":
            where = (f"Its last checkpoint is {status.last_checkpoint!r}." if status.last_checkpoint
                     else "It saved no checkpoint.")
            log = self.run_dir / "train.log"
            if log.is_file():  # a background run's output: its last words are there
                where += f" Its output: {log}."
            event = FailedEvent(f"Run {self.run_id} crashed ({status.message}). {where}", status.step,
                                status.last_checkpoint)
            self.history.feed(event)
            self.history.status = "crashed"
            self.history.version += 1
            announce(event)
            self.ended = True
        elif status.state in FINAL_STATES:  # its final event is read in this last pass (or was lost)
            for record in follower.read_new():
                self._feed_record(record, announce)
            self.ended = True

    def _feed_record(self, record: dict, announce) -> None:
        event = typed_event(record)
        if event is not None:
            self.history.feed(event)
            announce(event)


Session = Union[TrainingSession, FollowedRun]


@dataclass
class AppState:
    settings: DataSettings = field(default_factory=_last_settings)  # the last dataset loaded, else the defaults
    prepared: PreparedData | None = None
    session: TrainingSession = field(default_factory=TrainingSession)  # the run in this app (one at a time)
    followed: FollowedRun | None = None  # a run in another process the monitor follows instead
    # Intents between screens (set by one, read by the other when it is shown): no screen writes
    # another screen's widgets.
    generate_checkpoint: str | None = None  # the Checkpoints screen's Generate
    continue_checkpoint: str | None = None  # the Checkpoints screen's Continue
    checkpoints_version: int = 0  # bumped when the running training saves: lists of checkpoints re-read
    # the Dataset screen's context was set by the user (else it follows the model); restored with the settings
    data_context_set: bool = field(default_factory=_last_context_set)

    @property
    def monitored(self) -> Session:
        """The run the Train screen monitors and the header names: a followed one, else the in-app one."""
        return self.followed if self.followed is not None else self.session

    def follow(self, app: "App", run_dir: str | Path, label: str = "") -> Session:
        """Monitor the run in ``run_dir``: the in-app session when it is that run, else a new
        :class:`FollowedRun` (the one followed before is let go; its process is left alone)."""
        run_dir = Path(run_dir)
        self.unfollow()
        own = self.session.run_dir
        if own is not None and own.resolve() == run_dir.resolve():
            return self.session
        self.followed = FollowedRun(run_dir, label)
        self.followed.start(app)
        return self.followed

    def unfollow(self) -> None:
        """Monitor the in-app session again; the followed run's thread ends (its process goes on)."""
        if self.followed is not None:
            self.followed.detach()
            self.followed = None

