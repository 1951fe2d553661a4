"""Waiting in pilot tests, the Textual way: a ``run_test(message_hook=...)`` recorder for messages,
worker waits, and ``pilot.pause()``. Nothing here lives in the app."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from textual.message import Message
from textual.worker import WorkerCancelled, WorkerFailed

from gpttui.tui.messages import GenerationDone, TrainingEvent

BACKGROUND = ("training", "warm-up", "follow")  # workers that outlive a test step: never waited for here


class Messages:
    """A message hook for ``app.run_test(message_hook=...)``: records every message the app dispatches
    and lets a test await the first (already seen or still to come) that matches. A message that
    bubbles is seen once per message pump it reaches."""

    def __init__(self) -> None:
        self.seen: list[Message] = []
        self._signal = asyncio.Event()

    def __call__(self, message: Message) -> None:  # called in the app's event loop
        self.seen.append(message)
        self._signal.set()

    async def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 300.0, start: int = 0) -> Message:
        async def waiter() -> Message:
            checked = start
            while True:
                for message in self.seen[checked:]:
                    if predicate(message):
                        return message
                checked = len(self.seen)
                self._signal.clear()
                await self._signal.wait()

        return await asyncio.wait_for(waiter(), timeout)

    async def event(self, predicate: Callable, timeout: float = 300.0):
        """The first training event (from the app's TrainingEvent messages) that matches."""
        message = await self.wait_for(lambda m: isinstance(m, TrainingEvent) and predicate(m.event), timeout)
        return message.event

    def mark(self) -> int:
        """A position: ``wait_for(..., start=mark)`` looks only at messages after it."""
        return len(self.seen)


async def wait_workers(app, groups: tuple[str, ...] | None = None) -> None:
    """Until the app's workers (those in ``groups``; all but training's by default) have ended,
    including any they led to; cancelled or failed ones count as ended."""
    while True:
        workers = [w for w in app.workers if w.group not in BACKGROUND and (groups is None or w.group in groups)
                   and not w.is_finished]
        if not workers:
            return
        for worker in workers:
            try:
                await worker.wait()
            except (WorkerCancelled, WorkerFailed):
                pass


async def settle(app, pilot) -> None:
    """Let key presses and posted messages land, and wait for the screens' workers (and what their
    answers start) to end."""
    await pilot.pause()
    for _ in range(5):
        await wait_workers(app)
        await pilot.pause()
        if not [w for w in app.workers if w.group not in BACKGROUND and not w.is_finished]:
            return


async def generation_done(messages: Messages, pilot, screen, start: int = 0):
    """Until the Generate screen's newest turn has ended; that turn."""
    index = len(screen.turns) - 1
    await messages.wait_for(lambda m: isinstance(m, GenerationDone) and m.turn == index, timeout=120, start=start)
    await pilot.pause()
    return screen.turns[-1]


async def until(pilot, condition: Callable, what: str, timeout: float = 120.0):
    """Let the app run until ``condition()`` (a worker thread's or another process's result) is truthy,
    checked a frame at a time, and return it; fail after ``timeout`` seconds naming ``what``."""
    end = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await pilot.pause(0.05)
    return value


async def start_tiny_run(app, pilot, messages: Messages, save_name: str) -> None:
    """From the Dataset screen: a 1-layer model started on the Train screen (F6) for as long as a test
    needs it (it is stopped by the test or when the app ends), until its first evaluation."""
    from textual.widgets import Input

    await pilot.pause()
    await wait_workers(app, ("dataset",))
    await pilot.press("f3")
    await pilot.pause()
    for wid, value in (("n_layers", "1"), ("n_heads", "2"), ("emb_dim", "32"), ("max_steps", "100000"),
                       ("save_name", save_name)):
        app.screen.query_one(f"#{wid}", Input).value = value
    await pilot.press("f6")
    await messages.event(lambda e: e.event == "eval")
