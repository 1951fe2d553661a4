"""The Train screen's "Book mode" switch (issue 14): it holds the settings the book's loop does not
have at the book's values (and gives back what the user typed), and a run started with it, in the app
or in the background, trains in book mode and says so on the monitor."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Checkbox, Input, Select, Static

from gpttui.core.data import DataSettings
from gpttui.core.events import Started
from gpttui.core.runs import run_status
from gpttui.core.train import FinishedEvent
from gpttui.tui.app import create_app
from gpttui.tui.book_switch import BOOK_HINT, BOOK_TAG
from gpttui.tui.state import BACKGROUND, FollowedRun
from tui_helpers import Messages, until, wait_workers

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
# The user's own values of the settings the book's loop lacks, and the book's values shown instead.
TYPED = {"warmup_steps": "7", "min_lr": "0.0001", "grad_clip": "1.5", "grad_accum": "3"}
BOOKS = {"warmup_steps": "0", "min_lr": "", "grad_clip": "", "grad_accum": "1"}
TINY = {"n_layers": "1", "n_heads": "2", "emb_dim": "32", "model_context": "32", "max_steps": "2",
        "eval_freq": "1", "eval_iter": "1"}


def shown_text(widget) -> str:
    """What the terminal shows of a widget: its lines as rendered in its region."""
    lines = widget.render_lines(widget.region.reset_offset)
    return "\n".join("".join(seg.text for seg in strip) for strip in lines)


async def open_train(app, pilot):
    await pilot.pause()
    await wait_workers(app, ("dataset",))
    await pilot.press("f3")
    await pilot.pause()
    return app.screen


async def press_book(screen, pilot) -> None:
    """The switch as a user flips it: focused, then space."""
    screen.query_one("#book", Checkbox).focus()
    await pilot.press("space")
    await pilot.pause()


def fill(screen, values: dict) -> None:
    for wid, value in values.items():
        screen.query_one(f"#{wid}", Input).value = value


async def test_the_switch_holds_the_books_settings_and_gives_back_what_was_typed():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_train(app, pilot)
        switch, hint = screen.query_one("#book", Checkbox), screen.query_one("#book-hint", Static)
        assert not switch.value and not hint.display and switch.tooltip and "AdamW" in str(switch.tooltip)
        assert screen.train_config().book is False
        fill(screen, {**TYPED, "lr": "0.001", "seed": "7"})
        screen.query_one("#sample_at_eval", Checkbox).value = True
        screen.query_one("#dtype", Select).value = "bf16"
        await pilot.pause()

        await press_book(screen, pilot)
        assert switch.value and hint.display
        for fid, value in BOOKS.items():
            widget = screen.query_one(f"#{fid}", Input)
            assert widget.value == value and widget.disabled, fid
        sample, dtype = screen.query_one("#sample_at_eval", Checkbox), screen.query_one("#dtype", Select)
        assert sample.value is False and sample.disabled and dtype.value == "fp32" and dtype.disabled
        for fid in ("lr", "weight_decay", "epochs", "eval_freq", "eval_iter", "seed", "start_context", "n_layers"):
            assert not screen.query_one(f"#{fid}", Input).disabled, fid
        config = screen.train_config()  # validates: book mode without the settings it refuses
        assert config.book is True and config.lr == 0.001 and config.seed == 7
        assert (config.warmup_steps, config.min_lr, config.grad_clip, config.grad_accum) == (0, None, None, 1)
        assert (config.sample_at_eval, config.dtype) == (False, "fp32")

        # the hint fits the settings pane at 80x24 and 120x40: inside it, every word shown
        for size in ((80, 24), (120, 40)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            screen.query_one("#train-form").scroll_to_widget(hint, animate=False)
            await pilot.pause()
            form = screen.query_one("#train-form").content_region
            assert form.contains_region(hint.region), (size, hint.region, form)
            assert " ".join(shown_text(hint).split()) == BOOK_HINT, size

        await press_book(screen, pilot)  # off: the user's values come back, editable
        assert not switch.value and not hint.display
        for fid, value in TYPED.items():
            widget = screen.query_one(f"#{fid}", Input)
            assert widget.value == value and not widget.disabled, fid
        assert sample.value is True and not sample.disabled and dtype.value == "bf16" and not dtype.disabled
        config = screen.train_config()
        assert config.book is False and (config.warmup_steps, config.grad_accum, config.dtype) == (7, 3, "bf16")

        # on and off again: still the user's values (what is remembered is never the book's)
        await press_book(screen, pilot)
        await press_book(screen, pilot)
        assert {fid: screen.query_one(f"#{fid}", Input).value for fid in TYPED} == TYPED


async def test_an_in_app_run_in_book_mode_trains_in_book_mode_and_says_so():
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        screen = await open_train(app, pilot)
        fill(screen, {**TINY, "save_name": "book-inapp"})
        await press_book(screen, pilot)
        await pilot.press("f6")
        started = await messages.event(lambda e: isinstance(e, Started), timeout=120)
        assert started.config["book"] is True
        await messages.event(lambda e: isinstance(e, FinishedEvent), timeout=120)
        await app.state.session.worker.wait()
        assert json.loads((Path(started.run_dir) / "config.json").read_text())["train_config"]["book"] is True
        screen.redraw()
        await pilot.pause()
        status = shown_text(screen.query_one("#status", Static))
        shown = " ".join(status.split())  # as read, however the monitor's width wraps it
        assert f"{BOOK_TAG} · " in shown and started.run_id in shown, status


async def test_a_background_run_in_book_mode_gets_book_through_its_command_line():
    """The screen's background launch builds `gpttui train ... --book`: the child records book mode in its
    config.json and Started event, and the followed run's status shows the tag."""
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_train(app, pilot)
        fill(screen, {**TINY, "save_name": "book-bg"})
        await press_book(screen, pilot)
        screen.query_one("#run-where", Select).value = BACKGROUND
        await pilot.pause()
        await pilot.press("f6")
        followed = await until(pilot, lambda: isinstance(app.state.monitored, FollowedRun) and app.state.monitored,
                               "the app to follow its background run")
        started = await until(pilot, lambda: followed.history.started, "the run's Started event", timeout=180)
        assert started.config["book"] is True
        assert json.loads((followed.run_dir / "config.json").read_text())["train_config"]["book"] is True
        await until(pilot, lambda: BOOK_TAG in shown_text(screen.query_one("#status")), "the book tag on the status")
        await until(pilot, lambda: followed.ended or not run_status(followed.run_dir).live, "the run to end",
                    timeout=180)
