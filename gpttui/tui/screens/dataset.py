"""Dataset screen: pick a corpus, set the book's data settings, see the numbers and the checks.

What is typed is never rewritten by an answer: the form is only read (by :meth:`DatasetScreen.load`),
and the worker's answers only fill the statistics side. Keys typed fast land where they are meant to: the
Source field has the focus when the screen opens, and Tab moves the focus at once (a priority binding),
not after the keys typed behind it were already delivered to the widget it leaves.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Iterable

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import (Button, DirectoryTree, Footer, Header, Input, Label, OptionList, ProgressBar, Select,
                             Static)
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from gpttui.core.corpus_types import Cancelled, SourceStats
from gpttui.core.data import TEXT_SUFFIXES, DataSettings, PreparedData, prepare_data
from gpttui.core.errors import GPTTUIError, TokenizerError
from gpttui.core.tokenizer import GPT2_FILES, TOKENIZERS, clip_words, get_tokenizer
from gpttui.tui.messages import DatasetCancelled, DatasetFailed, DatasetProgress, DatasetReady
from gpttui.tui.render import (cancelled_line, dataset_checks, dataset_stats, sources_table, sources_title,
                               tokenize_line)
from gpttui.tui.state import load_recent, remember_dataset, remember_source
from gpttui.tui.widgets import Field, read_field

BUILTIN = "builtin:pydoc"
PREVIEW_LINES = 12
MAX_FILES_SHOWN = 1000  # inputs listed for a folder corpus (the count is always the whole)
PREVIEW_CHARS = 4000
PROGRESS_INTERVAL = 0.1  # the worker posts at most ~10 progress reports a second
TRIED_CHARS = 160  # each "What was tried" line, cut at a word


class TokenizerMissing(DatasetFailed):
    """The GPT-2 tokenizer's files could not be found: the screen loads again when it is shown again
    (after F5 → k imported them)."""


class _Superseded(Exception):
    """Raised from the progress callback of a cancelled preparation, to stop the tokenizer."""


class TextTree(DirectoryTree):
    """Folders and text files only."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if p.is_dir() or p.suffix.lower() in TEXT_SUFFIXES:
                    yield p
            except OSError:
                continue


class DatasetScreen(Screen):
    AUTO_FOCUS = "#source"  # typing at once goes into the Source field, not to a panel
    BINDINGS = [
        Binding("ctrl+o", "browse", "Browse", priority=True, tooltip="pick a file or folder"),
        Binding("ctrl+b", "builtin", "Built-in", priority=True, tooltip="Python's reference manual, shipped with CPython"),
        # Priority: the focus moves before the next key is delivered. Without it Tab travels up from the
        # focused widget to the app first, and keys typed right behind it go to the widget being left.
        Binding("tab", "app.focus_next", "Next field", show=False, priority=True),
        Binding("shift+tab", "app.focus_previous", "Previous field", show=False, priority=True),
        Binding("escape", "cancel_tokenize", "Cancel", show=False,  # (the Cancel button is beside the bar)
                tooltip="stop tokenizing; the shards done are kept"),
    ]
    PALETTE = {"cancel_tokenize": ("Cancel tokenizing", "Stop tokenizing the corpus; the shards done are kept")}

    def compose(self) -> ComposeResult:
        s: DataSettings = self.app.state.settings
        yield Header()
        with Horizontal(id="dataset-main"):
            with VerticalScroll(id="dataset-side", classes="panel", can_focus=False):
                yield Label("Source", classes="section")
                with Horizontal(id="source-row"):
                    yield Input(s.source, id="source", placeholder="a text file, a folder, or builtin:pydoc")
                    yield Button("Load", id="load", variant="primary")
                with Horizontal(id="source-buttons"):
                    yield Button("Built-in corpus", id="builtin")
                    yield Button("Browse…", id="browse")
                yield Label("Recent", classes="section")
                yield OptionList(id="recent")
                yield Label("Settings", classes="section")
                yield Select([(f"{k} — {v}", k) for k, v in TOKENIZERS.items()], value=s.tokenizer,
                             allow_blank=False, id="tokenizer")
                yield Field("Context length", s.context_length, id="context_length", minimum=1)
                yield Field("Stride", s.stride or "", id="stride", kind="optional int", minimum=1,
                            placeholder="= context")
                yield Field("Batch size", s.batch_size, id="batch_size", minimum=1)
                yield Field("Train ratio", s.train_ratio, id="train_ratio", kind="float", minimum=0.01, maximum=1.0)
                yield Field("Text field", s.text_field, id="text_field", kind="text",
                            placeholder=".jsonl field / column")
                yield Field("HF split", s.split, id="split", kind="text", placeholder="a dataset's split")
            with VerticalScroll(id="dataset-info", classes="panel"):
                yield Label("Statistics", classes="section")
                with Horizontal(id="tokenize-row", classes="hidden"):
                    yield ProgressBar(id="tokenize-progress", show_eta=False)
                    yield Button("Cancel", id="cancel-tokenize", variant="warning", compact=True)
                yield Static("", id="tokenize-line", classes="hidden")
                yield Static("Pick a source to see its statistics.", id="stats")
                yield Static("", id="problems")
                yield Label("Inputs", id="files-title", classes="section hidden")
                with VerticalScroll(id="files-box", classes="hidden"):
                    yield Static("", id="files")
                yield Label("Preview", classes="section")
                yield Static("", id="preview")
        yield Footer(compact=True)  # at 80 columns: the screen's keys, the app's F-keys and Quit

    def on_mount(self) -> None:
        self._refresh_recent()
        self._timer = None
        self._request = 0  # the newest load request: answers to older ones are dropped
        self._shown: PreparedData | None = None
        self._tokenizer_missing = False  # the newest answer said so: load again when shown again
        self._cancel: threading.Event | None = None  # the newest request's: Cancel (and a newer request) set it
        self._tokenizing = False  # the newest request reported progress and has not answered yet
        self.load()

    def on_screen_resume(self) -> None:
        self.app.refresh_header()
        state = self.app.state
        if getattr(self, "_tokenizer_missing", False):
            self.load()  # the files may have been imported meanwhile (F5, then k)
        elif state.prepared is not None and state.prepared is not getattr(self, "_shown", None):
            # the Train screen windowed the data at the model's context: show what will be trained on
            self.query_one("#context_length", Input).value = str(state.settings.context_length)
            self._show_prepared(state.prepared)

    # -- choosing a source
    def _refresh_recent(self) -> None:
        recent = self.query_one("#recent", OptionList)
        recent.clear_options()
        items = load_recent() or [BUILTIN]
        recent.add_options([Option(s, id=s) for s in items])

    def action_builtin(self) -> None:
        self.query_one("#source", Input).value = BUILTIN
        self.load()

    def action_browse(self) -> None:
        """Show (or hide) a file tree of folders and text files, built on first use."""
        trees = self.query("#tree")
        if not trees:
            start = Path(self.query_one("#source", Input).value.strip() or ".").expanduser()
            start = start if start.is_dir() else start.parent if start.parent.is_dir() else Path.cwd()
            tree = TextTree(str(start.resolve()), id="tree")
            self.query_one("#dataset-side").mount(tree, after="#source-buttons")
            tree.focus()
            return
        tree = trees.first(TextTree)
        tree.toggle_class("hidden")
        if not tree.has_class("hidden"):
            tree.focus()

    @on(Button.Pressed, "#builtin")
    def _builtin(self) -> None:
        self.action_builtin()

    @on(Button.Pressed, "#browse")
    def _browse(self) -> None:
        self.action_browse()

    @on(Button.Pressed, "#load")
    @on(Input.Submitted, "#source")
    def _load(self) -> None:
        self.load()

    @on(DirectoryTree.FileSelected)
    @on(DirectoryTree.DirectorySelected)
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        event.stop()
        if isinstance(event, DirectoryTree.DirectorySelected) and event.path == Path(self.query_one(TextTree).path):
            return
        self.query_one("#source", Input).value = str(event.path)
        if isinstance(event, DirectoryTree.FileSelected):
            self.query_one("#tree").add_class("hidden")
        self.load()

    @on(OptionList.OptionSelected, "#recent")
    def _recent(self, event: OptionList.OptionSelected) -> None:
        self.query_one("#source", Input).value = str(event.option.id)
        self.load()

    # -- cancelling the tokenizing
    @on(Button.Pressed, "#cancel-tokenize")
    def _cancel_pressed(self) -> None:
        self.action_cancel_tokenize()

    def action_cancel_tokenize(self) -> None:
        """Stop the newest request's tokenizing: the engine stops at its next task and keeps the finished shards."""
        if self._cancel is not None and self._tokenizing:
            self._cancel.set()
            self.query_one("#tokenize-line", Static).update(Text("Cancelling… (the shards done are kept)"))

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "cancel_tokenize":
            return getattr(self, "_tokenizing", False)  # offered (footer, palette) only while tokenizing
        return True

    def _set_tokenizing(self, on: bool) -> None:
        """The progress row shows while the newest request tokenizes; Cancel (and its key) only then."""
        if on != self._tokenizing:
            self._tokenizing = on
            self.refresh_bindings()
        for wid in ("#tokenize-row", "#tokenize-line"):
            self.query_one(wid).set_class(not on, "hidden")

    # -- settings
    @on(Input.Changed, ".field-input")
    @on(Select.Changed, "#tokenizer")
    def _settings_changed(self) -> None:
        try:
            if self.read_settings() == self.app.state.settings:
                return  # e.g. the widgets announcing their initial values
        except ValueError:
            pass
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.3, self.load)

    def read_settings(self) -> DataSettings:
        """The settings in the form; ValueError naming the field that is wrong."""
        values = {}
        for name, kind in (("context_length", "int"), ("stride", "optional int"), ("batch_size", "int"),
                           ("train_ratio", "float")):
            inp = self.query_one(f"#{name}", Input)
            try:
                values[name] = read_field(inp, kind)
            except ValueError as exc:
                raise ValueError(f"{name.replace('_', ' ').capitalize()}: {exc}") from None
        for name, default in (("text_field", "text"), ("split", "train")):  # empty: the default
            values[name] = self.query_one(f"#{name}", Input).value.strip() or default
        source = self.query_one("#source", Input).value.strip()
        tokenizer = self.query_one("#tokenizer", Select).value
        kept = self.app.state.settings  # not on this form: kept as it was
        return DataSettings(source=source, tokenizer=str(tokenizer), seed=kept.seed, **values)

    def load(self) -> None:
        try:
            settings = self.read_settings()
        except ValueError as exc:
            self._show_problem(str(exc))
            return
        state = self.app.state
        if settings.context_length != state.settings.context_length:
            state.data_context_set = True  # the user's own context: the data no longer follows the model
        state.settings = settings
        state.prepared = None
        self._shown = None
        self._tokenizer_missing = False
        # Nothing of the previous corpus stays on view (nor in the header) while this one is read.
        self.query_one("#stats", Static).update(Text(f"Reading {settings.source or '…'}…"))
        self.query_one("#problems", Static).update("")
        self._show_sources([], [])
        self.app.refresh_header()
        self._request += 1
        if self._cancel is not None:
            self._cancel.set()  # the older request's tokenizing stops (its shards done are kept)
        self._cancel = threading.Event()
        self._set_tokenizing(False)
        self.prepare(settings, self._request, self._cancel)

    # -- the work, off the UI thread
    @work(thread=True, exclusive=True, group="dataset")
    def prepare(self, settings: DataSettings, request: int, cancel: threading.Event) -> None:
        """Read and tokenize in a thread (the corpus text stays in the engine: nothing of it is kept here).
        A newer request cancels this worker and sets ``cancel``: the tokenizer stops at its next check
        instead of finishing for nothing; Cancel sets ``cancel`` too, and that one is answered."""
        worker = get_current_worker()
        last = [None, 0.0]  # the newest report, when one was last posted

        def progress(report) -> None:
            if worker.is_cancelled:
                raise _Superseded
            now = time.monotonic()
            final = report.total_bytes and report.done_bytes >= report.total_bytes
            if last[0] is None or final or now - last[1] >= PROGRESS_INTERVAL:
                last[1] = now
                self.post_message(DatasetProgress(report.done_bytes, report.total_bytes, report, request))
            last[0] = report

        try:
            tokenizer = get_tokenizer(settings.tokenizer)
            prepared = prepare_data(settings, tokenizer, strict=False, progress=progress, cancel=cancel)
        except _Superseded:
            return
        except Cancelled as exc:
            message = DatasetCancelled(settings.source, str(exc), request, last[0])
        except TokenizerError as exc:
            if getattr(exc, "tried", None) is None:  # not the files missing (e.g. an unknown name)
                message = DatasetFailed(settings.source, str(exc), request)
            else:
                message = TokenizerMissing(settings.source, missing_tokenizer_text(exc.tried), request)
        except GPTTUIError as exc:
            message = DatasetFailed(settings.source, str(exc), request)
        except Exception as exc:  # never crash the screen on a bad file
            message = DatasetFailed(settings.source, f"{type(exc).__name__}: {exc}", request)
        else:
            message = DatasetReady(prepared, request)
        if not worker.is_cancelled:
            self.post_message(message)

    def on_dataset_progress(self, message: DatasetProgress) -> None:
        if message.request != self._request or (self._cancel is not None and self._cancel.is_set()):
            return  # an older request's, or one cancelled: "Cancelling…" stays
        report = message.report
        if report is None or report.phase == "done" or (message.total and message.done >= message.total):
            self._set_tokenizing(False)
            return
        self._set_tokenizing(True)
        self.query_one("#tokenize-progress", ProgressBar).update(total=message.total or None, progress=message.done)
        self.query_one("#tokenize-line", Static).update(Text(tokenize_line(report)))

    def on_dataset_cancelled(self, message: DatasetCancelled) -> None:
        """Cancelled by the user: say how far it got and that Load goes on; training stays blocked."""
        if message.request != self._request:
            return
        self._set_tokenizing(False)
        self.query_one("#stats", Static).update(Text(cancelled_line(message.report)))
        self.query_one("#preview", Static).update("")
        self._show_sources([], [])
        self.query_one("#problems", Static).update(Text.assemble(
            ("! " + message.message, "yellow"),
            "\nPress Load (or Enter in Source) to tokenize it again: it resumes after the shards done."))
        self.app.refresh_header()

    def on_tokenizer_missing(self, message: TokenizerMissing) -> None:
        if message.request == self._request:
            self.on_dataset_failed(message)
            self._tokenizer_missing = True

    def on_dataset_failed(self, message: DatasetFailed) -> None:
        if message.request != self._request:
            return  # an older request
        what = message.source or "the source"
        self.query_one("#stats", Static).update(Text(f"No statistics: {what} could not be used."))
        self.query_one("#preview", Static).update("")
        self._show_sources([], [])
        self._show_problem(message.message)
        self._set_tokenizing(False)
        self.app.refresh_header()

    def on_dataset_ready(self, message: DatasetReady) -> None:
        prepared = message.prepared
        if message.request != self._request:
            return  # an older request
        self._set_tokenizing(False)
        self.app.state.prepared = prepared
        self._show_prepared(prepared)
        if prepared.corpus.source:
            remember_source(lasting_source(prepared.corpus.source))
            self._refresh_recent()
        self.app.refresh_header()

    def _show_prepared(self, prepared: PreparedData) -> None:
        self._shown = prepared
        note = split_note(prepared.stats)
        stats = dataset_stats(prepared) + (f"\n[dim]{escape(note)}[/dim]" if note else "")
        self.query_one("#stats", Static).update(stats)
        self.query_one("#problems", Static).update(dataset_checks(prepared.stats))
        self._show_sources(prepared.sources, getattr(prepared.corpus, "files", None) or [])
        self.query_one("#preview", Static).update(Text("\n".join(preview_text(prepared).splitlines()[:PREVIEW_LINES])))
        lasting = dataclasses.replace(prepared.settings, source=lasting_source(prepared.settings.source))
        remember_dataset(lasting, self.app.state.data_context_set)  # the next start opens on it

    def _show_sources(self, sources: list[SourceStats], names: list[str]) -> None:
        """The corpus's inputs (a folder's files, skipped ones first) with their documents, tokens and notes,
        scrollable; hidden for a single input with nothing to say. ``names``: a folder's files, when the
        engine gives no per-input counts."""
        counted = bool(sources)
        rows = sources or [SourceStats(name, "text") for name in names]
        shown = len(rows) > 1 or bool(names) or any(s.notes() for s in rows)
        self.query_one("#files-title", Label).update(sources_title(rows))
        self.query_one("#files", Static).update(sources_table(rows, MAX_FILES_SHOWN, counted) if shown else "")
        for wid in ("#files-title", "#files-box"):
            self.query_one(wid).set_class(not shown, "hidden")

    def _show_problem(self, text: str) -> None:
        """The problem's first line in red; the lines after it (what to do, what was tried) in the normal colour."""
        head, _, rest = text.partition("\n")
        self.query_one("#problems", Static).update(Text.assemble(("✗ " + head, "red"), "\n" + rest if rest else ""))


def preview_text(prepared: PreparedData) -> str:
    """The corpus's first characters: the engine's ``preview`` (it reads only those), else the text."""
    preview = getattr(prepared, "preview", None)
    if callable(preview):
        return preview(PREVIEW_CHARS)
    return prepared.corpus.text[:PREVIEW_CHARS]


def lasting_source(source: str) -> str:
    """A source as it is kept for later (recent list, next start): a path made absolute, so that it still
    names the same file when the app is started from another folder; ``builtin:`` names as they are."""
    if not source or source.startswith("builtin:"):
        return source
    return os.path.abspath(os.path.expanduser(source))


def split_note(stats) -> str:
    """Why train + val tokens may not add up to the total (issue: 35,775 vs 32,229 + 3,547), in a line."""
    diff = stats.split_token_difference
    if diff == 0:
        return ""
    sign = "+" if diff > 0 else "−"
    return (f"train + val = total {sign} {abs(diff):,}: the split (at a character, as in the book) cuts a word, "
            "and each side tokenizes its part.")


def missing_tokenizer_text(tried: list[str]) -> str:
    """The GPT-2 files are missing: what, the fix in this app, and what was tried (each line cut at a word)."""
    lines = [
        f"The GPT-2 tokenizer needs OpenAI's files {' and '.join(sorted(GPT2_FILES))}, and they are not on "
        "this machine.",
        "Fix it here: F5 (Checkpoints), then k, and give the folder that holds them; this screen reloads "
        "when you come back.",
        "Download them from https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/",
        "Or pick the bytes tokenizer above: it needs no files.",
    ]
    if tried:
        lines.append("What was tried:")
        lines += [f"  - {clip_words(t, TRIED_CHARS)}" for t in tried]
    return "\n".join(lines)

