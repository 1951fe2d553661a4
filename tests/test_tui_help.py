"""Help (F1, ?), the command palette built from the screens' bindings, and the app's texts (header,
finished notification, the line printed after "stop, save and quit"), driven through Textual's pilot."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from textual.command import CommandList, CommandPalette
from textual.widgets import Input

import test_tui as base  # a module, so that pytest does not collect its tests here a second time
import test_faults
import test_tui_exit as exit_tests
from test_runs import wait_for
from gpttui.core.train import EvalEvent, FinishedEvent
from gpttui.tui.app import create_app, finished_text
from gpttui.tui.dialogs import QuitScreen
from gpttui.tui.screens.compare import CompareScreen
from gpttui.tui.screens.help import HelpScreen, key_label, node_entries
from tui_helpers import Messages, settle

SMALL = base.SMALL
corpus, zygote, apps = test_faults.corpus, exit_tests.zygote, exit_tests.apps  # fixtures, shared

SCREEN_KEYS = ("f2", "f3", "f4", "f5", "f10")
BUILTIN_LABEL = "Python reference topics (built in)"


def titles(app) -> list[str]:
    return [c.title for c in app.get_system_commands(app.screen)]


async def open_help(app, pilot, key: str) -> HelpScreen:
    under = app.screen
    if key == "question_mark":
        under.set_focus(None)  # ? is a key of the app only where no input takes it
        await pilot.pause()
    await pilot.press(key)
    await pilot.pause()
    assert isinstance(app.screen, HelpScreen), (key, type(under).__name__, app.screen)
    assert app.screen.target is under
    return app.screen


def assert_lists_keys(help_screen: HelpScreen) -> None:
    """Every described binding of the screen under the help, and the app's, with its key."""
    text = help_screen.plain_text()
    for node in (help_screen.target, help_screen.app):
        for entry in node_entries(node):
            for key in entry.keys:
                assert key in text, (type(node).__name__, entry, text)
    assert help_screen.purpose and help_screen.purpose in text


async def test_f1_and_question_mark_open_the_help_of_every_screen(tmp_path):
    """At 80×24, on every screen: F1 Help in the footer; F1 and ? open the help of that screen, listing
    its keys and the app's; Esc, q and F1 close it."""
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        for screen_key in SCREEN_KEYS:
            await pilot.press(screen_key)
            await settle(app, pilot)
            shown = [(key, b.binding.description) for key, b in app.screen.active_bindings.items()
                     if b.binding.show]
            assert ("f1", "Help") in shown, (screen_key, shown)
            closers = ("escape", "q") if screen_key != "f3" else ("f1", "question_mark")
            for opener, closer in zip(("f1", "question_mark"), closers):
                help_screen = await open_help(app, pilot, opener)
                assert_lists_keys(help_screen)
                await pilot.press(closer)
                await pilot.pause()
                assert not isinstance(app.screen, HelpScreen), (screen_key, opener, closer)
        text = (await open_help(app, pilot, "f1")).plain_text()  # on the Runs screen
        assert "Attach to the highlighted run" in text and "Enter" in text and "F1, ?" in text
        await pilot.press("escape")
        await pilot.press("f3")
        await pilot.pause()
        text = (await open_help(app, pilot, "f1")).plain_text()
        assert "F6" in text and "Start training" in text and "F10" in text
        await pilot.press("escape")
        # the Compare screen (pushed over the Runs screen) has its own help
        app.push_screen(CompareScreen([tmp_path / "a", tmp_path / "b"]))
        await pilot.pause()
        help_screen = await open_help(app, pilot, "f1")
        assert isinstance(help_screen.target, CompareScreen) and "Compare" in help_screen.purpose
        assert_lists_keys(help_screen)


async def test_question_mark_typed_in_an_input_is_text():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        for screen_key, selector in (("f2", "#source"), ("f4", "#prompt")):
            await pilot.press(screen_key)
            await settle(app, pilot)
            field = app.screen.query_one(selector, Input)
            field.value = ""
            field.focus()
            await pilot.pause()
            await pilot.press("w", "h", "y", "question_mark")
            await pilot.pause()
            assert field.value == "why?" and not isinstance(app.screen, HelpScreen), (screen_key, field.value)
            await pilot.press("f1")  # F1 works in an input too
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            await pilot.pause()


async def test_help_fits_and_scrolls_at_80x24():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(app, pilot)
        await pilot.press("f5")  # the screen with the most keys
        await settle(app, pilot)
        help_screen = await open_help(app, pilot, "f1")
        box = help_screen.query_one("#help-box").region
        assert box.right <= 80 and box.bottom <= 24 and box.x >= 0 and box.y >= 0
        body = help_screen.query_one("#help-body")
        assert body.max_scroll_y > 0  # more than fits: it scrolls
        assert body.has_focus
        await pilot.press("end")
        await pilot.pause()
        assert body.scroll_y == body.max_scroll_y
        await pilot.press("home")
        await pilot.pause()
        assert body.scroll_y == 0


async def palette_search(app, pilot, query: str) -> list[str]:
    """Open the palette, type ``query``, and read the commands it lists once they stop changing."""
    await pilot.press("ctrl+p")
    await pilot.pause()
    assert isinstance(app.screen, CommandPalette)
    await pilot.press(*query)
    results = app.screen.query_one(CommandList)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    found, stable = [], 0
    while loop.time() < deadline and stable < 5:
        await pilot.pause(0.05)
        now = [str(results.get_option_at_index(i).prompt).split("\n")[0] for i in range(results.option_count)]
        stable = stable + 1 if now == found and now else 0
        found = now
    await pilot.press("escape")
    await pilot.pause()
    return found


async def test_palette_finds_import_and_probabilities():
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("f5")
        await settle(app, pilot)
        found = palette_search_text(await palette_search(app, pilot, "import"))
        for words in ("book's .pth", "Hugging Face", "download by size", "tokenizer files"):
            assert words in found, found
        await pilot.press("f4")
        await settle(app, pilot)
        assert "Probabilities" in palette_search_text(await palette_search(app, pilot, "prob"))
        await pilot.press("f2")  # from another screen, the imports are found too (they go to F5)
        await settle(app, pilot)
        assert "Import GPT-2 weights: the book's .pth file" in await palette_search(app, pilot, "import")


def palette_search_text(found: list[str]) -> str:
    return "\n".join(found)


async def test_checkpoint_actions_are_offered_only_for_a_highlighted_checkpoint(tmp_path):
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("f5")
        await settle(app, pilot)
        offered = titles(app)
        assert "Import GPT-2 weights: the book's .pth file" in offered
        assert not any("highlighted checkpoint" in t for t in offered), offered
    base._train_base(tmp_path, name="base")
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(app, pilot)
        await pilot.press("f5")
        await settle(app, pilot)
        assert app.screen.selected == "base"
        offered = titles(app)
        for title in ("Generate with the highlighted checkpoint", "Delete the highlighted checkpoint",
                      "Continue training the highlighted checkpoint"):
            assert title in offered, offered


async def test_palette_header_and_quit_follow_the_run(tmp_path):
    """Idle: Start is offered, pause/stop/save are not. While a tiny run trains: the reverse, the
    header names the run's corpus even after the Dataset screen loaded another, and the Runs screen
    offers pausing the run but not resuming it. Stop, save and quit:
    the line printed after the app names the checkpoint and its folder."""
    other = tmp_path / "other.txt"
    other.write_text(("Another text for the dataset screen. " * 400), encoding="utf-8")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await base.wait_dataset(app, pilot)
        await pilot.press("f3")
        await pilot.pause()
        idle = titles(app)
        assert "Start training" in idle and "Stop training and save" not in idle
        assert "Pause or resume training" not in idle and "Save a checkpoint now" not in idle
        await base.set_tiny_model(app, pilot)
        app.screen.query_one("#max_steps", Input).value = "100000"
        await pilot.press("f6")
        await messages.event(lambda e: isinstance(e, EvalEvent))
        busy = titles(app)
        assert "Start training" not in busy
        for title in ("Pause or resume training", "Stop training and save", "Save a checkpoint now"):
            assert title in busy, busy
        assert BUILTIN_LABEL in app.sub_title and "model " in app.sub_title

        await pilot.press("f2")
        await pilot.pause()
        source = app.screen.query_one("#source", Input)
        source.value = str(other)
        source.focus()
        await pilot.press("enter")
        await base.wait_dataset(app, pilot)
        assert app.state.prepared.corpus.label != BUILTIN_LABEL  # the Dataset screen moved on
        app.refresh_header()
        assert BUILTIN_LABEL in app.sub_title and app.state.prepared.corpus.label not in app.sub_title

        await pilot.press("f10")  # the run, highlighted on the Runs screen: pause and stop it, not resume
        await settle(app, pilot)
        deadline = asyncio.get_running_loop().time() + 30
        while not app.screen.runs and asyncio.get_running_loop().time() < deadline:
            await pilot.pause(0.05)
        offered = titles(app)
        assert "Pause the highlighted run" in offered and "Stop the highlighted run" in offered, offered
        assert "Resume the highlighted run" not in offered and "Compare the marked runs" not in offered

        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, QuitScreen)
        await pilot.click("#save")
        await app.state.session.worker.wait()
        await pilot.pause()
    finished = app.state.session.history.finished
    assert finished is not None and finished.checkpoint == "pilot"
    assert "'pilot'" in app.exit_note
    from gpttui.core import paths

    assert str(paths.checkpoints_dir() / "pilot") in app.exit_note
    assert f"step {finished.step:,}" in app.exit_note


def test_finished_notification_reads_well():
    stopped = FinishedEvent("stopped", 1234, 5000, 3.0, "tiny")
    assert finished_text(stopped) == "Stopped at step 1,234; saved as checkpoint 'tiny' (F5 Checkpoints)."
    assert finished_text(FinishedEvent("completed", 10, 50, 1.0, None)) == "Done after step 10; not saved."
    assert "stopped by" not in finished_text(stopped)


def test_key_labels():
    assert [key_label(k) for k in ("ctrl+left", "f6", "d", "question_mark", "escape", "ctrl+t", "space")] == \
        ["Ctrl+←", "F6", "d", "?", "Esc", "Ctrl+T", "Space"]


def test_every_way_a_reply_ends_has_words():
    from gpttui.core.generate import STOP_REASONS, stop_phrase

    phrases = [stop_phrase(reason) for reason in STOP_REASONS]
    assert len(set(phrases)) == len(STOP_REASONS) and all(p and "stopped by stop" not in p for p in phrases)
    assert stop_phrase("stop") == "hit a stop string"


def test_sigterm_mid_run_prints_where_the_run_saved(zygote, corpus, tmp_path, apps):
    """The real app on a pty (tests/pty_app.py, as in test_tui_exit): after SIGTERM the run saves and,
    the terminal restored, the app's last line names the checkpoint and its folder."""
    app = exit_tests.PtyApp(zygote, corpus, "noted", tmp_path)
    apps.append(app)
    wait_for(app.training, "the run's step events", exit_tests.START_DEADLINE_S)
    os.kill(app.pid, signal.SIGTERM)
    app.wait_exit(time.monotonic())
    app.finish_reading()
    after = app.output[app.output.rfind(b"\x1b[?1049l"):].decode("utf-8", "replace")
    assert "training interrupted at step" in after and "saved as checkpoint 'noted'" in after, after[-2000:]
    from gpttui.core import paths

    assert str(paths.checkpoints_dir() / "noted") in after.replace("\r\n", "").replace("\n", "")
    app.close_terminal()
