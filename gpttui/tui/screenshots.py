"""Regenerate the README's screenshots: ``python -m gpttui.tui.screenshots [OUT_DIR]``.

Drives the real app headless (Textual's pilot) in a temporary GPTTUI_HOME: loads the built-in
corpus, trains a tiny model until its charts have a shape, and saves an SVG of each screen.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

SIZE = (120, 40)


class _Recorder:
    """``run_test(message_hook=...)``: the messages the app dispatched, and a way to await one."""

    def __init__(self) -> None:
        self.seen: list = []
        self.signal = asyncio.Event()

    def __call__(self, message) -> None:
        self.seen.append(message)
        self.signal.set()

    async def wait_for(self, predicate, timeout: float = 900) -> object:
        async def waiter():
            checked = 0
            while True:
                found = next((m for m in self.seen[checked:] if predicate(m)), None)
                if found is not None:
                    return found
                checked = len(self.seen)
                self.signal.clear()
                await self.signal.wait()

        return await asyncio.wait_for(waiter(), timeout)


async def _workers_done(app, *groups: str) -> None:
    from textual.worker import WorkerCancelled, WorkerFailed

    for worker in [w for w in app.workers if w.group in groups]:
        try:
            await worker.wait()
        except (WorkerCancelled, WorkerFailed):
            pass


async def _shoot(out: Path) -> list[Path]:
    from gpttui.core.data import DataSettings
    from gpttui.core.errors import TokenizerError
    from gpttui.core.tokenizer import get_tokenizer
    from gpttui.tui.app import create_app

    try:
        get_tokenizer("gpt2", download=False)
        tokenizer = "gpt2"
    except TokenizerError:
        tokenizer = "bytes"
    settings = DataSettings(source="builtin:pydoc", tokenizer=tokenizer, context_length=64, batch_size=8)
    app = create_app(settings=settings)
    seen = _Recorder()
    async with app.run_test(size=SIZE, message_hook=seen) as pilot:
        await pilot.pause()
        await _workers_done(app, "dataset")
        await pilot.pause()
        written = [Path(app.save_screenshot(str(out / "dataset.svg")))]
        await _train(app, pilot, seen)
        written.append(Path(app.save_screenshot(str(out / "train.svg"))))
        await _generate(app, pilot, seen)
        written.append(Path(app.save_screenshot(str(out / "generate.svg"))))
        # Stop and save, so the Checkpoints screen lists the run's checkpoint with its loss curve.
        app.state.session.stop(save=True)
        await app.state.session.worker.wait()
        await pilot.press("f5")
        for group in ("list-checkpoints", "details"):
            await pilot.pause()
            await _workers_done(app, group)
        await pilot.pause()
        written.append(Path(app.save_screenshot(str(out / "checkpoints.svg"))))
        await pilot.press("f10")  # the run just trained, listed with every other run
        await seen.wait_for(lambda m: type(m).__name__ == "RunsListed")
        await pilot.pause()
        written.append(Path(app.save_screenshot(str(out / "runs.svg"))))
    return written


async def _train(app, pilot, seen: _Recorder) -> None:
    """A tiny model trained until its charts have a shape, then paused."""
    from textual.widgets import Input

    from gpttui.core.train import EvalEvent, StateEvent
    from gpttui.tui.messages import TrainingEvent

    def training(predicate):
        return lambda m: isinstance(m, TrainingEvent) and predicate(m.event)

    await pilot.press("f3")
    await pilot.pause()
    screen = app.screen
    for wid, value in (("n_layers", "2"), ("n_heads", "4"), ("emb_dim", "64"), ("model_context", "64"),
                       ("lr", "0.003"), ("min_lr", "0.0003"), ("warmup_steps", "10"), ("grad_clip", "1.0"),
                       ("eval_freq", "5"), ("eval_iter", "2"), ("max_steps", "400"),
                       ("start_context", "The return statement"), ("save_name", "pydoc-tiny")):
        screen.query_one(f"#{wid}", Input).value = value
    await pilot.pause()
    await pilot.press("f6")
    await seen.wait_for(training(lambda e: isinstance(e, EvalEvent) and e.step >= 250))
    await pilot.press("f7")
    await seen.wait_for(training(lambda e: isinstance(e, StateEvent) and e.paused))
    screen.redraw()
    await pilot.pause()


async def _generate(app, pilot, seen: _Recorder) -> None:
    """Talk to the model being trained (paused, so its weights are still), colours on."""
    from textual.widgets import Checkbox, Input, Select

    from gpttui.tui.messages import GenerationDone

    await pilot.press("f4")
    await pilot.pause()
    await _workers_done(app, "list-checkpoints")
    await pilot.pause()
    chat = app.screen
    chat.query_one("#colour", Checkbox).value = True
    for turn, (preset, prompt) in enumerate((("creative", "The return statement"),
                                             ("book top-k 25, T 1.4", "A class definition"))):
        chat.query_one("#sampling-preset", Select).value = preset
        await pilot.pause()
        chat.query_one("#max_new_tokens", Input).value = "40"
        chat.query_one("#seed", Input).value = "123"
        chat.query_one("#prompt", Input).value = prompt
        await pilot.press("enter")
        await seen.wait_for(lambda m, t=turn: isinstance(m, GenerationDone) and m.turn == t)
        await pilot.pause()
    for _ in range(3):  # a token of the last reply picked: its probability and the alternatives under the chat
        await pilot.press("f7")
    await pilot.pause()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "screenshots").resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpttui-shots-") as home:
        os.environ["GPTTUI_HOME"] = home
        for path in asyncio.run(_shoot(out)):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
