"""The Train screen as a newcomer meets it (issue 13): every number of the status at 80×24, the
settings pane giving way to the charts while a run trains, charts that read right, and texts that
follow what happened (missing tokenizer files, a dataset loaded later, a run that ended)."""

from __future__ import annotations

import os
import re
import signal

import pytest
from textual.widgets import Input, Select, Static

from gpttui.core import tokenizer as T
from gpttui.core.data import DataSettings
from gpttui.core.train import EvalEvent, FinishedEvent
from gpttui.tui.app import create_app
from gpttui.core.runs import run_status, send_command
from gpttui.tui.screens.train import TrainScreen
from gpttui.tui.state import BACKGROUND, FollowedRun
from gpttui.tui.widgets import MetricChart
from tui_helpers import Messages, until, wait_workers

SMALL = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
BRAILLE = re.compile("[\u2801-\u28ff]")


def shown_text(widget) -> str:
    """What the terminal shows of a widget: its lines as rendered in its region."""
    lines = widget.render_lines(widget.region.reset_offset)
    return "\n".join("".join(seg.text for seg in strip) for strip in lines)


def inside(widget, app) -> bool:
    region, screen = widget.region, app.screen.region
    return region.width > 0 and region.height > 0 and screen.contains_region(region)


async def wait_dataset(app, pilot) -> None:
    await pilot.pause()
    await wait_workers(app, ("dataset",))
    await pilot.pause()


async def start_tiny_run(app, pilot, messages: Messages) -> TrainScreen:
    """F3, a tiny model with a constant lr (no min lr), F6, until the first evaluation is drawn."""
    await wait_dataset(app, pilot)
    await pilot.press("f3")
    await pilot.pause()
    screen = app.screen
    for wid, value in (("n_layers", "1"), ("n_heads", "2"), ("emb_dim", "32"), ("eval_freq", "3"),
                       ("eval_iter", "1"), ("max_steps", "100000"), ("min_lr", ""), ("lr", "0.0004"),
                       ("save_name", "monitor"), ("sample_at_eval", None)):
        if value is not None:
            screen.query_one(f"#{wid}", Input).value = value
    screen.query_one("#sample_at_eval").value = False
    await pilot.pause()
    await pilot.press("f6")
    await messages.event(lambda e: isinstance(e, EvalEvent) and e.step >= 3)
    screen.redraw()
    await pilot.pause()
    return screen


async def test_at_80x24_a_run_shows_every_number_and_the_settings_give_way():
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        form = app.screen.query_one("#train-form")
        assert form.display and inside(app.screen.query_one("#save"), app)  # Save F9 not clipped, idle
        screen = await start_tiny_run(app, pilot, messages)

        assert not form.display  # the settings gave way to the charts
        status = screen.query_one("#status", Static)
        assert inside(status, app)
        text = shown_text(status)
        for word in ("running", "step", "epoch", "elapsed", "ETA", "loss", "val", "train", "best val",
                     "tokens seen", "tok/s", "lr 4.00e-04", "grad norm", "params"):
            assert word in text, (word, text)
        hint = screen.query_one("#form-hint")
        assert inside(hint, app) and "ctrl+b settings" in shown_text(hint)
        for button in ("#start", "#pause", "#stop", "#save"):
            widget = screen.query_one(button)
            assert inside(widget, app) and str(widget.label) in shown_text(widget), button
        for chart_id in ("#chart-loss", "#chart-ppl"):
            chart = screen.query_one(chart_id, MetricChart)
            assert inside(chart, app) and chart.axes["rows"] >= 4, chart_id
        assert "train" in shown_text(screen.query_one("#chart-ppl")).splitlines()[0]
        for button, key in (("#pause", "F7"), ("#stop", "F8"), ("#save", "F9")):  # the run's keys: on its buttons
            assert key in shown_text(screen.query_one(button)), button
        keys = [k for k in app.screen.query("FooterKey") if k.display]
        footer = " ".join(shown_text(k) for k in keys if inside(k, app))  # ... and every screen's key, and Quit
        assert all(key in footer for key in ("f1", "f2", "f4", "f5", "f10", "^q")), footer

        # 120×40: all four charts; the constant lr is drawn on the row labelled with its value
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        lr = screen.query_one("#chart-lr", MetricChart)
        assert inside(lr, app)
        rows = [line for line in shown_text(lr).splitlines() if BRAILLE.search(line)]
        assert len(rows) == 1 and float(rows[0].split("┤")[0]) == pytest.approx(4e-4), shown_text(lr)
        for chart in screen.query(MetricChart):
            assert chart.title in shown_text(chart).splitlines()[0]

        await pilot.press("f8")
        await messages.event(lambda e: isinstance(e, FinishedEvent))
        await app.state.session.worker.wait()
        screen.redraw()
        await pilot.pause()
        text = shown_text(screen.query_one("#status", Static))
        assert "ETA" not in text and "took" in text and "stopped on request" in text and "saved as monitor" in text
        assert form.display and not hint.display  # wide enough: the settings come back after the run
        # ctrl+b hides and shows them at any time
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not form.display
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert form.display


@pytest.fixture
def no_gpt2_files(monkeypatch):
    """No GPT-2 tokenizer files anywhere gpttui looks, and no network for tiktoken's download (a
    proxy on a closed local port refuses at once)."""
    monkeypatch.delenv(T.BPE_DIR_ENV, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    import tiktoken.registry  # an encoding an earlier test loaded stays in tiktoken's own registry

    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    T.forget_cached()
    yield
    T.forget_cached()


async def test_f6_without_tokenizer_files_says_what_is_missing_then_follows_the_dataset(no_gpt2_files):
    messages = Messages()
    app = create_app(settings=DataSettings(source="builtin:pydoc", tokenizer="gpt2", context_length=32,
                                           batch_size=4))
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        assert app.state.prepared is None
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("f6")
        await pilot.pause()
        status = app.screen.query_one("#status", Static)
        text = str(status.render())
        assert "GPT-2 tokenizer files (encoder.json, vocab.bpe) are missing" in text, text
        assert "F5, then k imports the tokenizer files" in text and "No dataset is ready" not in text
        assert not app.state.session.running

        # the bytes tokenizer needs no files: once the Dataset screen has data, the message goes
        await pilot.press("f2")
        await pilot.pause()
        app.screen.query_one("#tokenizer", Select).value = "bytes"
        await pilot.pause()
        app.screen.load()  # what the form's 0.3 s debounce timer does
        await wait_dataset(app, pilot)
        assert app.state.prepared is not None
        await pilot.press("f3")
        await pilot.pause()
        app.screen.redraw()
        await pilot.pause()
        text = str(app.screen.query_one("#status", Static).render())
        assert "missing" not in text and "is ready: press F6" in text, text


async def test_f6_with_no_dataset_and_the_files_present_asks_for_a_dataset(tmp_path):
    messages = Messages()
    app = create_app(settings=DataSettings(source=str(tmp_path / "absent.txt"), tokenizer="bytes"))
    async with app.run_test(size=(100, 30), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        await pilot.press("f6")
        await pilot.pause()
        assert "No dataset is ready" in str(app.screen.query_one("#status", Static).render())


async def test_the_buttons_fit_beside_the_settings_at_every_size():
    """Idle, the settings pane shown: all four buttons whole (Save F9 was clipped at 80 columns)."""
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_dataset(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        assert "Not started" in str(app.screen.query_one("#status", Static).render())
        for size in ((80, 24), (80, 40), (100, 30), (120, 40)):
            await pilot.resize_terminal(*size)
            await pilot.pause()
            assert app.screen.query_one("#train-form").display
            controls = app.screen.query_one("#controls").region
            for button in app.screen.query("#controls Button"):
                assert inside(button, app) and controls.contains_region(button.region), (size, button.id)
                assert str(button.label) in shown_text(button), (size, button.id)




async def test_a_followed_background_run_gets_the_same_monitor_at_80x24():
    """A run in its own process (as the Runs screen's attach follows one): the settings give way, the
    status shows its numbers, and after it stopped no ETA stays (80 columns: the charts stay in view)."""
    app = create_app(settings=SMALL)
    pid = None
    async with app.run_test(size=(80, 24)) as pilot:
        try:
            await wait_dataset(app, pilot)
            await pilot.press("f3")
            await pilot.pause()
            screen = app.screen
            for wid, value in (("n_layers", "1"), ("n_heads", "2"), ("emb_dim", "32"), ("eval_freq", "2"),
                               ("eval_iter", "1"), ("max_steps", "100000"), ("save_name", "followed")):
                screen.query_one(f"#{wid}", Input).value = value
            screen.query_one("#run-where", Select).value = BACKGROUND
            await pilot.press("f6")
            followed = await until(pilot, lambda: isinstance(app.state.monitored, FollowedRun) and app.state.monitored,
                                   "the app to follow its background run")
            pid = (await until(pilot, lambda: run_status(followed.run_dir).pid, "its pid"))
            await until(pilot, lambda: followed.history.last_eval, "an evaluation on the monitor")
            await until(pilot, lambda: not screen.query_one("#train-form").display, "the settings to give way")
            words = ("ETA", "loss", "val", "elapsed", "tok/s", "gpttui runs attach")  # drawn a few times a second
            await until(pilot, lambda: all(w in shown_text(screen.query_one("#status")) for w in words),
                        f"the status with {words}")
            send_command(followed.run_dir, "stop")
            await until(pilot, lambda: not followed.running, "the run to stop")
            text = await until(pilot, lambda: "took" in (t := shown_text(screen.query_one("#status"))) and t,
                               "the final status")
            assert "ETA" not in text and "saved as followed" in text
            assert not screen.query_one("#train-form").display  # 80 columns: the final curves stay in view
            assert inside(screen.query_one("#form-hint"), app)  # and the key that shows it is named
        finally:
            if pid and run_status(app.state.monitored.run_dir).live:
                os.kill(pid, signal.SIGKILL)
