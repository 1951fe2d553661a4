"""Control of a running training from any thread: pause, resume, stop, save now, weight snapshots.
The trainer honours each request between two optimizer steps."""

from __future__ import annotations

import threading
from concurrent.futures import Future


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


__all__ = ["TrainControl"]
