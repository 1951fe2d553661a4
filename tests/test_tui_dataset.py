"""The Dataset screen as a newcomer meets it (issue 13): typing that is never lost, the missing GPT-2
tokenizer fixed in the app, texts that follow the current source, token totals that are explained, the
joined files of a folder, and the last dataset remembered across restarts. Plus the core pieces under them."""

from __future__ import annotations

import json

import pytest
from textual import events
from textual.geometry import Region
from textual.keys import _character_to_key
from textual.widgets import Input, Static

from gpttui.core import data as D
from gpttui.core import paths
from gpttui.core import tokenizer as T
from gpttui.core.data import DataSettings
from gpttui.core.errors import TokenizerError
from gpttui.tui.app import create_app
from gpttui.tui.messages import DatasetFailed, DatasetReady
from gpttui.tui.screens.dataset import DatasetScreen, TokenizerMissing
from gpttui.tui.state import LAST_DATASET_FILE, AppState, load_last_dataset, load_recent
from tui_helpers import Messages, settle, wait_workers

BYTES = DataSettings(source="builtin:pydoc", tokenizer="bytes", context_length=32, batch_size=4)
STORY = "Once upon a time a small model read a story, one window at a time, and learned it.\n" * 60


async def wait_dataset(app, pilot) -> None:
    """Until the Dataset screen has answered its newest request."""
    await pilot.pause()
    await wait_workers(app, ("dataset",))
    await pilot.pause()


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def answers(messages: Messages, start: int = 0) -> list:
    """The Dataset screen's answers since ``start``, each once (a message is seen by every pump it reaches)."""
    return list({id(m): m for m in messages.seen[start:] if isinstance(m, (DatasetReady, DatasetFailed))}.values())


def answer_source(message) -> str | None:
    """The source a Dataset screen answer is about (None for other messages)."""
    if isinstance(message, DatasetReady):
        return message.prepared.settings.source
    return message.source if isinstance(message, DatasetFailed) else None


def make_folder(root, names=("alpha.txt", "beta.md", "sub/gamma.txt")):
    folder = root / "folder"
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"Document {i}. " + STORY, encoding="utf-8")
    return folder


@pytest.fixture
def no_gpt2_files(monkeypatch):
    """No GPT-2 files anywhere and no network for tiktoken's download (a proxy on a closed port refuses at
    once), and the in-process tokenizer caches emptied before and after: gpttui's, and tiktoken's registry
    of built encodings (an earlier test in this process may have built "gpt2" from its cache, and tiktoken
    would hand that out instead of downloading)."""
    import tiktoken.registry

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.delenv(T.BPE_DIR_ENV, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    T.forget_cached()
    yield
    T.forget_cached()


# --- item 11: what is typed stays typed ----------------------------------------------------------


async def test_typing_fast_goes_into_the_source_and_no_answer_rewrites_it(tmp_path, monkeypatch):
    """Keys pressed one by one from the moment the app is up (no click, no Tab: the Source field has the
    focus), with Enter on two intermediate values, whose answers arrive while the field already holds more
    text: the field ends with exactly what was typed, and the dataset loaded is the last one."""
    monkeypatch.chdir(tmp_path)  # a path relative to it: short to type
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "story.txt").write_text(STORY, encoding="utf-8")
    (tmp_path / "first.txt").write_text(STORY, encoding="utf-8")
    path = "texts/story.txt"
    cut_folder, cut_partial = len("texts/"), len("texts/story.")
    messages = Messages()
    app = create_app(settings=DataSettings(source="first.txt", tokenizer="bytes", context_length=32, batch_size=4))
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        source = app.screen.query_one("#source", Input)
        assert app.focused is source and source.selected_text == "first.txt"  # typing replaces it
        for i, char in enumerate(path):
            if i in (cut_folder, cut_partial):
                await pilot.press("enter")  # load what is there so far: a folder, then a missing file
                loading = path[:i]
            await pilot.press(char)
            assert source.value == path[:i + 1], f"after {i + 1} keys"
            if i in (cut_folder + 2, cut_partial + 1):  # the field holds more: now let that load answer
                answer = await messages.wait_for(lambda m: answer_source(m) == loading, timeout=60)
                assert isinstance(answer, DatasetReady if i < cut_partial else DatasetFailed)
                await pilot.pause()
                assert source.value == path[:i + 1]
        await pilot.press("enter")
        await wait_dataset(app, pilot)
        assert source.value == path
        loaded = [m.prepared.corpus.source for m in answers(messages) if isinstance(m, DatasetReady)]
        failed = [m.source for m in answers(messages) if isinstance(m, DatasetFailed)]
        assert loaded[-2:] == [path[:cut_folder], path] and failed == [path[:cut_partial]]
        assert app.state.prepared is not None and app.state.prepared.corpus.source == path
        assert app.state.prepared.corpus.text == STORY
    # kept for later as an absolute path: a start from another folder still finds it
    absolute = str(tmp_path / "texts" / "story.txt")
    assert load_last_dataset()[0].source == absolute and load_recent()[0] == absolute


def _burst(app, text: str, first: str) -> None:
    """Keys as a terminal delivers fast typing: all handed to the app's driver at once, before the app
    handles the first (``pilot.press`` waits for the app to go idle after each key, which hides the race)."""
    keys = [(first, None)] + [(c if c.isalnum() else _character_to_key(c), c) for c in text]
    for key, char in keys:
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)


async def test_keys_typed_right_behind_tab_land_in_the_field_tab_moved_to(tmp_path):
    """Shift+Tab from the Load button back to Source, and the path right behind it in one burst: every key
    reaches the Source field (a Tab that only moved the focus after bubbling up to the app let the keys
    queued behind it go to the button)."""
    story = tmp_path / "story.txt"
    story.write_text(STORY, encoding="utf-8")
    app = create_app(settings=BYTES)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_dataset(app, pilot)
        app.screen.query_one("#load").focus()
        await pilot.pause()
        _burst(app, str(story), "shift+tab")
        await pilot.pause()
        await pilot.press("enter")
        await wait_dataset(app, pilot)
        assert app.screen.query_one("#source", Input).value == str(story)
        assert app.state.prepared.corpus.source == str(story)


# --- item 8: texts follow the current source; item 12: a folder's files -----------------------------


async def test_a_folder_lists_its_files_and_a_bad_path_after_it_leaves_nothing_of_it(tmp_path):
    folder = make_folder(tmp_path, ["alpha.txt", "beta.md", "sub/gamma.txt"] + [f"ch{i:02}.txt" for i in range(9)])
    (folder / "empty.txt").write_text("")  # listed among the inputs (issue 16), with no text: not joined
    app = create_app(settings=DataSettings(source=str(folder), tokenizer="bytes", context_length=32, batch_size=4))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_dataset(app, pilot)
        assert "folder/ (12 files)" in app.sub_title and "folder/ (12 files)" in text_of(app, "#stats")  # joined
        screen = app.screen
        assert str(screen.query_one("#files-title").render()) == "Inputs: 13"
        files = screen.query_one("#files", Static)  # a table (issue 16): its lines as drawn
        rows = [strip.text.split() for strip in files.render_lines(Region(0, 0, *files.size))]
        names = [row[0] for row in rows[1:] if row != ["no", "text"]]  # after the header, not the note
        assert names[:3] == ["alpha.txt", "beta.md", "ch00.txt"] and "sub/gamma.txt" in names and len(names) == 13
        assert rows[rows.index(["empty.txt", "0", "0"]) + 1] == ["no", "text"]
        box = screen.query_one("#files-box")
        assert box.display and box.max_scroll_y > 0  # at most a few lines on screen: it scrolls
        source = screen.query_one("#source", Input)
        source.value = str(tmp_path / "nope" / "story.txt")
        await pilot.press("enter")
        await wait_dataset(app, pilot)
        assert "does not exist" in text_of(app, "#problems")
        assert "folder/" not in app.sub_title and "folder/" not in text_of(app, "#stats")
        assert f"No statistics: {source.value} could not be used." == text_of(app, "#stats")
        assert not box.display and not screen.query_one("#files-title").display
        assert app.state.prepared is None


def test_a_folder_corpus_keeps_the_names_of_the_files_it_joined(tmp_path):
    folder = make_folder(tmp_path, ["b.txt", "a.md", "sub/c.txt", ".hidden/d.txt", "notes.rst"])
    (folder / "blank.txt").write_text("  \n")
    (folder / "blob.txt").write_bytes(b"\x00\x01" * 50)
    corpus = D.read_corpus(folder)
    assert corpus.files == ["a.md", "b.txt", "sub/c.txt"]  # joined, in the joining order
    assert corpus.n_files == 3 and corpus.text.count(T.ENDOFTEXT) == 2
    assert any("blob.txt" in w for w in corpus.warnings)
    assert D.read_corpus(folder / "b.txt").files == [] and D.read_corpus("builtin:pydoc-20k").files == []


# --- item 12: token totals -------------------------------------------------------------------------


def _book_counts(tokenizer, text: str, ratio: float) -> tuple[int, int, int]:
    """The book's way: the whole text, and each side of ``int(ratio * len(text))`` encoded on its own."""
    split = int(ratio * len(text))
    return (len(tokenizer.encode(text)), len(tokenizer.encode(text[:split])), len(tokenizer.encode(text[split:])))


@pytest.mark.parametrize("ratio", [0.9, 0.85, 0.5])
def test_train_and_val_tokens_are_the_books_and_their_difference_from_the_total_is_told(gpt2_tokenizer, ratio):
    corpus = D.read_corpus("builtin:pydoc-20k")
    stats = D.prepare_data(DataSettings(source=corpus.source, train_ratio=ratio), gpt2_tokenizer, corpus=corpus,
                           strict=False).stats
    total, train, val = _book_counts(gpt2_tokenizer, corpus.text, ratio)
    assert (stats.tokens, stats.train_tokens, stats.val_tokens) == (total, train, val)
    assert stats.split_token_difference == train + val - total
    expected = {0.9: 2, 0.85: 0, 0.5: 1}[ratio]  # a split inside "floating" (fl|oating), between words, in "for"
    assert stats.split_token_difference == expected


def test_with_one_token_per_character_the_totals_add_up():
    corpus = D.read_corpus("builtin:pydoc-20k")
    stats = D.prepare_data(DataSettings(source=corpus.source, tokenizer="bytes", train_ratio=0.9), T.ByteTokenizer(),
                           corpus=corpus, strict=False).stats
    assert stats.split_token_difference == 0 and stats.train_tokens + stats.val_tokens == stats.tokens


@pytest.mark.requires_gpt2_bpe
async def test_the_screen_explains_totals_that_do_not_add_up():
    messages = Messages()
    app = create_app(settings=DataSettings(source="builtin:pydoc-20k", tokenizer="gpt2", context_length=64))
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        s = app.state.prepared.stats
        assert s.train_tokens + s.val_tokens == s.tokens + 2
        stats = " ".join(text_of(app, "#stats").split())
        assert "train + val = total + 2: the split (at a character, as in the book) cuts a word" in stats
        app.screen.query_one("#train_ratio", Input).value = "0.85"  # a split between two words
        await messages.wait_for(lambda m: isinstance(m, DatasetReady) and m.prepared.settings.train_ratio == 0.85,
                                timeout=60)  # loaded after the settings' debounce
        await pilot.pause()
        assert app.state.prepared.stats.split_token_difference == 0
        assert "train + val" not in text_of(app, "#stats")


# --- item 6: the GPT-2 tokenizer's files missing -----------------------------------------------------


def test_a_failed_download_is_cut_at_a_word_and_the_sources_tried_are_kept(no_gpt2_files):
    with pytest.raises(TokenizerError) as info:
        T.get_tokenizer("gpt2")
    tried = info.value.tried
    assert tried and tried[-1].startswith("download failed:")
    assert all(len(t) <= 300 for t in tried)
    assert str(info.value).endswith(tried[-1])
    long = "download failed: ProxyError: " + "word " * 100
    clipped = T.clip_words(long, 60)
    assert len(clipped) <= 60 and clipped.endswith("word…")
    assert T.clip_words("short text", 60) == "short text"


async def test_missing_tokenizer_offers_the_fix_in_the_app_and_reloads_after_it(tmp_path, no_gpt2_files, bpe_dir):
    with pytest.raises(TokenizerError) as info:
        T.get_tokenizer("gpt2")
    tried = info.value.tried  # what the screen will list
    story = tmp_path / "story.txt"
    story.write_text(STORY, encoding="utf-8")
    messages = Messages()
    app = create_app(settings=DataSettings(source=str(story), tokenizer="gpt2", context_length=16))
    async with app.run_test(size=(80, 24), message_hook=messages) as pilot:
        await wait_dataset(app, pilot)
        assert any(isinstance(m, TokenizerMissing) for m in messages.seen)
        problems = text_of(app, "#problems")
        assert problems.startswith("✗ The GPT-2 tokenizer needs OpenAI's files encoder.json and vocab.bpe")
        assert "F5 (Checkpoints), then k" in problems and "--tokenizer" not in problems
        lines = problems.split("What was tried:\n", 1)[1].splitlines()
        assert len(lines) == len(tried) and all(line.startswith("  - ") for line in lines)
        for line, full in zip(lines, tried):  # each whole, or cut at a word with an ellipsis: never mid-word
            shown = line[4:]
            if shown != full:
                kept = shown.removesuffix("…")
                assert shown.endswith("…") and full.startswith(kept) and not full[len(kept)].isalnum(), (shown, full)
        # The fix, as the message says: F5, k, the folder that holds the files.
        await pilot.press("f5")
        await settle(app, pilot)
        await pilot.press("k")
        await pilot.pause()
        dialog = app.screen
        path = dialog.query_one("#import-path", Input)
        path.value = str(bpe_dir)
        path.focus()
        await pilot.press("enter")
        await settle(app, pilot)
        assert (T.gpt2_data_dir() / "vocab.bpe").is_file()
        start = messages.mark()
        await pilot.press("f2")  # back: the screen loads again by itself
        await wait_dataset(app, pilot)
        assert isinstance(app.screen, DatasetScreen)
        assert [type(m) for m in answers(messages, start)] == [DatasetReady]
        assert "Ready to train" in text_of(app, "#problems")
        assert app.state.prepared.tokenized.tokenizer.name == "gpt2"
        # and once it worked, coming back does not load again
        await pilot.press("f5")
        await settle(app, pilot)
        start = messages.mark()
        await pilot.press("f2")
        await wait_dataset(app, pilot)
        assert answers(messages, start) == []


# --- item 12: the last dataset, across restarts ------------------------------------------------------


async def test_the_last_dataset_is_remembered_across_restarts(tmp_path):
    folder = make_folder(tmp_path)
    assert AppState().settings == DataSettings()  # nothing remembered yet: the book's defaults
    app = create_app(settings=BYTES)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_dataset(app, pilot)
        screen = app.screen
        for wid, value in (("source", str(folder)), ("context_length", "16"), ("stride", "8"), ("batch_size", "3"),
                           ("train_ratio", "0.8")):
            screen.query_one(f"#{wid}", Input).value = value
        screen.load()
        await wait_dataset(app, pilot)
        assert app.state.prepared.corpus.source == str(folder)
        # a bad path afterwards is not remembered: the last dataset that loaded is
        screen.query_one("#source", Input).value = str(tmp_path / "missing.txt")
        screen.load()
        await wait_dataset(app, pilot)
        assert app.state.prepared is None
    expected = DataSettings(source=str(folder), tokenizer="bytes", context_length=16, stride=8, batch_size=3,
                            train_ratio=0.8)
    app = create_app()  # a restart, in the same GPTTUI_HOME
    assert app.state.settings == expected and app.state.data_context_set
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_dataset(app, pilot)
        screen = app.screen
        assert screen.query_one("#source", Input).value == str(folder)
        assert [screen.query_one(f"#{w}", Input).value for w in ("context_length", "stride", "batch_size",
                                                                 "train_ratio")] == ["16", "8", "3", "0.8"]
        assert app.state.prepared is not None and app.state.prepared.settings == expected
        assert "folder/ (3 files)" in text_of(app, "#stats")


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'{"settings": []}',
                                     b'{"settings": {"context_length": -3}}', b'{"settings": {"source": 7}}',
                                     b'{"settings": {"batch_size": "two"}}'])
def test_a_missing_or_bad_last_dataset_file_is_ignored(content):
    path = paths.config_dir() / LAST_DATASET_FILE
    assert load_last_dataset() is None  # missing
    path.write_bytes(content)
    assert load_last_dataset() is None
    state = AppState()
    assert state.settings == DataSettings() and not state.data_context_set
    assert path.read_bytes() == content  # left as it was


def test_unknown_keys_in_the_last_dataset_file_are_ignored():
    record = {"settings": {"source": "builtin:pydoc-20k", "tokenizer": "bytes", "batch_size": 5, "future": 1},
              "context_set": False}
    (paths.config_dir() / LAST_DATASET_FILE).write_text(json.dumps(record))
    settings, context_set = load_last_dataset()
    assert settings == DataSettings(source="builtin:pydoc-20k", tokenizer="bytes", batch_size=5)
    assert context_set is False
