"""Messages the app passes around, as dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from gpttui.core.data import PreparedData
from gpttui.core.train import Event


@dataclass
class TrainingEvent(Message):
    """An engine event worth reacting to at once (eval, sample, checkpoint, state, end). Step events
    only feed the shared history, which the monitor redraws from on a timer."""

    event: Event


@dataclass
class DatasetProgress(Message):
    done: int
    total: int


@dataclass
class DatasetReady(Message):
    prepared: PreparedData
    request: int = 0


@dataclass
class DatasetFailed(Message):
    source: str
    message: str
    request: int = 0
