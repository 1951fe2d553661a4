"""The Dataset screen with corpora at scale (issue 16, items 3-5): the progress line while tokenizing, Cancel
(button and key) and what the screen says after it, a newer source superseding the one being tokenized, and
the table of a folder's inputs."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from textual.geometry import Region
from textual.widgets import Input, ProgressBar, Static

from gpttui.core.corpus_types import SourceStats
from gpttui.core.data import DataSettings
from gpttui.tui.app import create_app
from gpttui.tui.messages import DatasetCancelled, DatasetFailed, DatasetProgress, DatasetReady
from gpttui.tui.render import sources_table
from test_cli_corpus import make_folder, write_corpus
from tui_helpers import Messages, wait_workers

LINE = re.compile(r"^Tokenizing \d+\.\d of 40\.0 MB · \d+\.\d [KMG]B/s · [\d.]+[KMB]? tokens( · ETA \d+:\d\d)?$")


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """40 MB: a few seconds of GPT-2 tokenizing on two cores, time enough to see it and cancel it."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    write_corpus(path, 40)
    return path


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def drawn_lines(widget) -> list[str]:
    """A widget's lines as drawn on the screen (a table's included)."""
    return [strip.text.rstrip() for strip in widget.render_lines(Region(0, 0, *widget.size))]


def gpt2_on(source) -> DataSettings:
    return DataSettings(source=str(source), tokenizer="gpt2", context_length=64, batch_size=2)


async def tokenizing(app, pilot, messages: Messages) -> DatasetProgress:
    """Until the screen shows the newest request's progress (a report part way through)."""
    request = app.screen._request
    message = await messages.wait_for(lambda m: isinstance(m, DatasetProgress) and m.request == request
                                      and 0 < m.done < m.total, timeout=120)
    await pilot.pause()
    return message


@pytest.mark.requires_gpt2_bpe
async def test_progress_shows_while_tokenizing_and_cancel_stops_it(big_corpus):
    messages = Messages()
    app = create_app(settings=gpt2_on(big_corpus))
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        await tokenizing(app, pilot, messages)
        screen = app.screen
        assert screen.query_one("#tokenize-row").display and screen.query_one("#cancel-tokenize").display
        line = " ".join(text_of(app, "#tokenize-line").split())
        assert LINE.match(line), line
        bar = screen.query_one("#tokenize-progress", ProgressBar)
        assert 39_000_000 < bar.total < 41_000_000  # the input's size
        assert 0 < bar.progress < bar.total
        assert screen.check_action("cancel_tokenize", ()) is True  # offered in the palette now
        await pilot.click("#cancel-tokenize")
        cancelled = await messages.wait_for(lambda m: isinstance(m, DatasetCancelled), timeout=60)
        await wait_workers(app, ("dataset",))
        await pilot.pause()
        stats = text_of(app, "#stats")
        assert re.fullmatch(r"Tokenizing cancelled at \d+% \(\d+\.\d of 40\.0 MB\)\.", stats), stats
        assert int(re.search(r"at (\d+)%", stats).group(1)) < 100
        problems = " ".join(text_of(app, "#problems").split())
        assert problems.startswith("! " + " ".join(cancelled.message.split())) and "Load" in problems
        assert "cancel" in cancelled.message.lower()
        assert app.state.prepared is None  # training stays blocked
        assert not screen.query_one("#tokenize-row").display and not screen.query_one("#tokenize-line").display
        assert screen.check_action("cancel_tokenize", ()) is False
        assert not [m for m in messages.seen if isinstance(m, (DatasetReady, DatasetFailed))]


@pytest.mark.requires_gpt2_bpe
async def test_escape_cancels_too_at_120_columns(big_corpus):
    messages = Messages()
    app = create_app(settings=gpt2_on(big_corpus))
    async with app.run_test(size=(120, 40), message_hook=messages) as pilot:
        await tokenizing(app, pilot, messages)
        assert app.focused is app.screen.query_one("#source", Input)  # escape passes the Source field by
        await pilot.press("escape")
        await messages.wait_for(lambda m: isinstance(m, DatasetCancelled), timeout=60)
        await wait_workers(app, ("dataset",))
        await pilot.pause()
        assert text_of(app, "#stats").startswith("Tokenizing cancelled at ")
        assert app.state.prepared is None and big_corpus.name not in app.sub_title


@pytest.mark.requires_gpt2_bpe
async def test_typing_another_source_supersedes_the_one_being_tokenized(big_corpus, tmp_path):
    """The older request's tokenizing stops (it never reaches its end), nothing of it is shown, and the
    newer source is what the screen and the state hold."""
    small = tmp_path / "small.txt"
    small.write_text("A small story that is quick to tokenize.\n" * 400, encoding="utf-8")
    messages = Messages()
    app = create_app(settings=gpt2_on(big_corpus))
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        first = await tokenizing(app, pilot, messages)
        source = app.screen.query_one("#source", Input)
        source.value = str(small)
        await pilot.press("enter")
        ready = await messages.wait_for(lambda m: isinstance(m, DatasetReady), timeout=60)
        await wait_workers(app, ("dataset",))
        await pilot.pause()
        assert ready.prepared.settings.source == str(small) and ready.request > first.request
        older = [m for m in messages.seen if getattr(m, "request", None) == first.request]
        assert all(isinstance(m, DatasetProgress) for m in older)  # no answer, not even "cancelled"
        assert max(m.done for m in older) < first.total  # it stopped part way
        assert app.state.prepared is ready.prepared and "small.txt" in app.sub_title
        assert not app.screen.query_one("#tokenize-row").display
        assert "Tokenizing" not in text_of(app, "#stats")


async def test_a_folder_shows_its_inputs_in_a_table(tmp_path):
    folder = make_folder(tmp_path)
    app = create_app(settings=DataSettings(source=str(folder), tokenizer="bytes", context_length=16, batch_size=2))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await wait_workers(app, ("dataset",))
        await pilot.pause()
        screen = app.screen
        assert screen.query_one("#files-title").display and screen.query_one("#files-box").display
        assert str(screen.query_one("#files-title").render()).startswith("Inputs: ")
        names = [line.split()[0] for line in drawn_lines(screen.query_one("#files")) if line.strip()]
        assert {"a.txt", "b.md", "sub/c.txt"} <= set(names)


async def test_the_inputs_table_has_counts_and_notes_with_skipped_inputs_first(tmp_path):
    folder = make_folder(tmp_path)
    app = create_app(settings=DataSettings(source=str(folder), tokenizer="bytes", context_length=16, batch_size=2))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await wait_workers(app, ("dataset",))
        await pilot.pause()
        screen = app.screen
        assert str(screen.query_one("#files-title").render()) == "Inputs: 4 (1 skipped)"
        lines = [line for line in drawn_lines(screen.query_one("#files")) if line.strip()]
        assert lines[0].split() == ["input", "docs", "tokens"]
        assert lines[1].split() == ["latin1.txt", "–", "–"] and lines[2].strip().startswith("skipped:")
        rows = {line.split()[0]: line.split()[1:] for line in lines[3:] if not line.startswith(" ")}
        assert rows["a.txt"] == ["1", "3,200"]  # bytes tokenizer: a token per character
        assert set(rows) == {"a.txt", "b.md", "sub/c.txt"}  # (a wrapped note's lines are indented)


def test_the_inputs_table_lists_skipped_first_with_notes_and_says_how_many_more():
    sources = [SourceStats(f"chapter{i:02}.txt", "text", 100, 1, 90, 20 + i) for i in range(6)]
    sources.append(SourceStats("latin1.txt", "text", skipped="not UTF-8 text"))
    sources.insert(2, SourceStats("records.jsonl", "jsonl", 500, 7, 400, 99, bad_lines=2))
    console = Console(file=io.StringIO(), width=44, color_system=None)
    console.print(sources_table(sources, limit=4))
    lines = [line.rstrip() for line in console.file.getvalue().splitlines()]
    assert lines[0].split() == ["input", "docs", "tokens"]
    assert lines[1].split() == ["latin1.txt", "–", "–"] and lines[2].strip() == "skipped: not UTF-8 text"
    assert lines[3].split() == ["chapter00.txt", "1", "20"]
    assert lines[5].split() == ["records.jsonl", "7", "99"] and lines[6].strip() == "2 line(s) not JSON"
    assert lines[-1].strip() == "… and 4 more inputs"
    console = Console(file=io.StringIO(), width=44, color_system=None)
    console.print(sources_table(sources[:2], limit=10, counted=False))  # names only: no counts known
    assert [line.strip() for line in console.file.getvalue().splitlines()] == ["chapter00.txt", "chapter01.txt"]
