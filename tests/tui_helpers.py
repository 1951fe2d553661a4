"""Waiting in pilot tests, the Textual way: a ``run_test(message_hook=...)`` recorder for messages,
worker waits, and ``pilot.pause()``. Nothing here lives in the app."""

from __future__ import annotations

import asyncio
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
