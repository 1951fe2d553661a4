"""Control of a running training from any thread: pause, resume, stop, save now, weight snapshots.
The trainer honours each request between two optimizer steps."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass


@dataclass(frozen=True)
class Decisions:
    """What a run does next, read from its control (and, with several processes, agreed by all of them:
    any rank's request counts, see :mod:`gpttui.core.distributed`)."""

    stop: bool = False
    nosave: bool = False  # stop without the final save
    pause: bool = False
    save: bool = False  # save now

    def flags(self) -> list[float]:
        return [float(self.stop), float(self.nosave), float(self.pause), float(self.save)]

    @classmethod
    def from_sums(cls, sums: list[float]) -> "Decisions":
        """From the flags summed over the ranks."""
        stop, nosave, pause, save = (v > 0 for v in sums[:4])
        return cls(stop, nosave, pause, save)


class TrainControl:
    """Pause / resume / stop / save-now from any thread; the trainer honours them between steps."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._save_now = threading.Event()
        self._lock = threading.Lock()
        self._snapshots: list[Future] = []
        self.save_on_stop = True
        self.stop_reason = "stopped"

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self, save: bool = True, reason: str = "stopped") -> None:
        self.save_on_stop = save
        self.stop_reason = reason
        self._stop.set()
        self._running.set()  # wake a paused trainer

    def request_save(self) -> None:
        self._save_now.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def take_save_request(self) -> bool:
        if self._save_now.is_set():
            self._save_now.clear()
            return True
        return False

    def decide(self, take_save: bool = True) -> Decisions:
        """The requests standing now; ``take_save`` takes a save request (it is then answered once)."""
        stopped = self.stopped
        return Decisions(stopped, stopped and not self.save_on_stop, self.paused,
                         self.take_save_request() if take_save else False)

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Wait until running again (or ``timeout`` seconds); whether it runs."""
        return self._running.wait(timeout)

    def request_snapshot(self) -> Future:
        """A copy of the model's weights, taken by the trainer between two steps (so it never mixes
        weights from before and after an update). Resolves to a state_dict of CPU tensors."""
        future: Future = Future()
        with self._lock:
            self._snapshots.append(future)
        return future

    def take_snapshot_requests(self) -> list[Future]:
        with self._lock:
            requests, self._snapshots = self._snapshots, []
        return requests


__all__ = ["TrainControl", "Decisions"]
