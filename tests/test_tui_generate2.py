"""The Generate screen as a newcomer meets it (issue 13): keys that leave inputs alone, the token
inspector where the eye is, the colour legend, blank replies, control characters, the training entry."""

from __future__ import annotations

import re

import pytest
from textual.geometry import Region
from textual.widgets import Checkbox, Input, Select, Static

from gpttui.core.printable import CONTROL, escape_controls
from gpttui.tui.app import create_app
from gpttui.tui.screens.generate import TRAINING
from test_printable import control_seed, save_newline_model
from test_tui_generate import SMALL, open_generate, train_tiny
from tui_helpers import Messages, generation_done, settle, start_tiny_run, until


def shown_text(widget) -> str:
    """What the widget puts on the screen: the text of its rendered lines' segments."""
    width, height = widget.size
    return "\n".join("".join(seg.text for seg in strip) for strip in widget.render_lines(Region(0, 0, width, height)))


def flat(text: str) -> str:
    """Text with its wrapping undone (runs of whitespace as one space), to find a sentence in it."""
    return " ".join(text.split())


def on_screen(app, widget) -> bool:
    """Whether the widget is shown, all of it, inside the terminal (not scrolled away or clipped)."""
    region = widget.region
    return widget.display and region.area > 0 and app.screen.region.contains_region(region) and \
        app.screen.find_widget(widget).region == region


async def send(pilot, screen, messages, prompt: str, **fields: str):
    for fid, value in fields.items():
        screen.query_one(f"#{fid}", Input).value = value
    screen.query_one("#prompt", Input).value = prompt
    screen.query_one("#prompt", Input).focus()
    await pilot.press("enter")
    return await generation_done(messages, pilot, screen)


async def test_ctrl_k_edits_the_prompt_and_f6_toggles_the_colours():
    train_tiny("keys", steps=1)
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_generate(app, pilot, "keys")
        prompt = screen.query_one("#prompt", Input)
        prompt.focus()
        await pilot.press("4", "0", "0", "ctrl+a", "ctrl+k", "3", "0")
        await pilot.pause()
        assert prompt.value == "30"  # ctrl+k deleted to the end of the line, as inputs do
        colour = screen.query_one("#colour", Checkbox)
        assert colour.value is False and not screen.query_one("#token-panel").display
        await pilot.press("f6")
        await pilot.pause()
        assert colour.value is True and prompt.value == "30" and app.focused is prompt
        legend = screen.query_one("#prob-legend", Static)
        assert on_screen(app, legend)
        assert all(band in shown_text(legend) for band in ("■\u00a0≥60%", "30–60%", "10–30%", "<10%"))
        await pilot.press("f6")
        await pilot.pause()
        assert colour.value is False and not screen.query_one("#token-panel").display


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
async def test_the_token_inspector_shows_its_numbers_under_the_chat(size):
    train_tiny("inspect", steps=1)
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=size, message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "inspect")
        for i in range(3):  # a chat longer than the screen: the panel still sits under it
            turn = await send(pilot, screen, messages, f"def {i}", max_new_tokens="24")
        details = screen.query_one("#token-details", Static)
        assert not screen.query_one("#token-panel").display  # colours off: no panel
        await pilot.press("f6")
        await pilot.pause()
        assert on_screen(app, details) and "F7 / F8" in shown_text(details)  # the keys, until a token is picked
        await pilot.press("f7")  # from inside the prompt: the key is no input's
        await pilot.pause()
        tokens = [t for t in turn.tokens if t.token_id is not None]
        assert on_screen(app, details)
        text = shown_text(details)
        assert f"token {len(tokens)} of {len(tokens)}" in text and f"p = {tokens[-1].prob:.3f}" in text
        assert f"{tokens[-1].alternatives[1].prob:.3f}" in text
        assert details.region.y >= screen.query_one("#chat").region.bottom  # under the reply, not in a sidebar
        await pilot.press("f7", "f7")
        await pilot.pause()
        assert f"token {len(tokens) - 2} of {len(tokens)}" in shown_text(details)
        await pilot.press("f8")
        await pilot.pause()
        assert f"token {len(tokens) - 1} of {len(tokens)}" in shown_text(details)
        assert screen.query_one("#prompt", Input).value == ""  # nothing was typed or moved in the prompt


async def test_escape_and_slash_bring_the_prompt_back():
    train_tiny("focus", steps=1)
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_generate(app, pilot, "focus")
        prompt = screen.query_one("#prompt", Input)
        screen.query_one("#temperature", Input).focus()
        await pilot.press("escape")
        assert app.focused is prompt
        screen.query_one("#colour", Checkbox).focus()
        await pilot.press("slash")
        assert app.focused is prompt and prompt.value == ""
        await pilot.press("slash")  # typing: the prompt takes it
        assert prompt.value == "/"


async def test_a_whitespace_reply_says_so():
    save_newline_model("newlines")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "newlines")
        turn = await send(pilot, screen, messages, "Hi", max_new_tokens="3")
        assert turn.text == "\n\n\n"
        assert "(the model replied with whitespace only: 3 newlines)" in flat(shown_text(screen.views[-1]))


async def test_control_characters_are_shown_as_symbols():
    seed, text = control_seed("noisy", "abc\x07")
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        screen = await open_generate(app, pilot, "noisy")
        turn = await send(pilot, screen, messages, "abc\x07", max_new_tokens="20", temperature="1.0", seed=str(seed))
        assert turn.text == text and "\x1b" in text
        shown = shown_text(screen.views[-1])
        assert "␛" in shown and "abc␇" in shown
        assert not CONTROL.search(shown)
        for part in re.split("[\t\n]", escape_controls("abc\x07" + text)):  # nothing swallowed after the ESC
            assert part.rstrip() in shown  # (tabs stay tabs: drawn as spaces to the next stop)
        await pilot.press("f6")
        await pilot.pause()
        assert not CONTROL.search(shown_text(screen.views[-1]))




async def test_the_training_entry_names_its_step_and_the_end_of_the_run():
    messages = Messages()
    app = create_app(settings=SMALL)
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await start_tiny_run(app, pilot, messages, "entry")
        await pilot.press("f4")
        await settle(app, pilot)
        screen = app.screen
        select = screen.query_one("#model", Select)
        assert select.value == TRAINING
        run = app.state.session.label
        label = dict((v, lbl) for lbl, v in screen.model_options)[TRAINING]
        assert run and label == f"Run {run}, live (step taken at send)"
        turn = await send(pilot, screen, messages, "The ", max_new_tokens="4")
        assert turn.error is None and turn.model.startswith(f"run {run} @ step ")
        assert turn.model.split("@ step ")[1] in shown_text(screen.views[-1])

        app.state.session.stop(save=False)
        await app.state.session.worker.wait()
        step = app.state.session.trainer.pos.step
        ended = f"Run {run}, step {step:,} (run ended)"
        await until(pilot, lambda: (ended, TRAINING) in screen.model_options, "the entry to say the run ended", 30)  # by itself, within a second
        assert select.value == TRAINING
        turn = await send(pilot, screen, messages, "The ", max_new_tokens="4")
        assert turn.error is None and turn.model == f"run {run} @ step {step:,}"
