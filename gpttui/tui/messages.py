"""Every message the app passes around, as dataclasses: most are posted by a thread worker with its
result, so the UI thread only renders."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from gpttui.core.checkpoints import CheckpointInfo
from gpttui.core.corpus_types import TokenizeProgress
from gpttui.core.data import PreparedData
from gpttui.core.generate import GenerationResult, TokenEvent
from gpttui.core.train import Event


@dataclass
class Progress(Message):
    """How far a worker got; a newer one replaces one still waiting in the queue."""

    done: int
    total: int

    def can_replace(self, message: Message) -> bool:
        return type(message) is type(self)


@dataclass
class TrainingEvent(Message):
    """An engine event worth reacting to at once (eval, sample, checkpoint, state, end). Step events
    only feed the shared history, which the monitor redraws from on a timer."""

    event: Event


# --- the Dataset screen's preparation worker


@dataclass
class DatasetProgress(Progress):
    """Bytes of the input tokenized so far; ``report`` has the tokens, the rate and the ETA."""

    report: TokenizeProgress | None = None
    request: int = 0


@dataclass
class DatasetReady(Message):
    prepared: PreparedData
    request: int = 0


@dataclass
class DatasetFailed(Message):
    source: str
    message: str
    request: int = 0


@dataclass
class DatasetCancelled(Message):
    """The user cancelled the tokenizing (the shards done are kept): ``message`` is the engine's words,
    ``report`` how far it got (None when it had not started)."""

    source: str
    message: str
    request: int = 0
    report: TokenizeProgress | None = None


# --- the checkpoints folder, listed off the UI thread (every screen that shows checkpoints)


@dataclass
class CheckpointsListed(Message):
    infos: list[CheckpointInfo]
    error: str | None = None


@dataclass
class CheckpointDeleted(Message):
    name: str
    error: str | None = None


# --- the Checkpoints screen's import/export job and its loss curve


@dataclass
class JobStage(Message):
    text: str


class JobProgress(Progress):
    """Bytes downloaded or read so far by an import."""


@dataclass
class JobDone(Message):
    message: str
    select: str | None = None


@dataclass
class JobFailed(Message):
    message: str
    cancelled: bool = False


@dataclass
class LossCurve(Message):
    name: str
    series: list  # [(label, xs, ys)]
    note: str = ""


# --- the Generate screen's stream


@dataclass
class GenerationChunk(Message):
    turn: int
    events: list[TokenEvent]


@dataclass
class GenerationDone(Message):
    turn: int
    result: GenerationResult | None
    error: str | None = None
