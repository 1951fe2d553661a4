"""Checkpoints screen: the manager of saved models.

A table of every checkpoint (broken ones with their error), a details pane (metadata and, for a
checkpoint trained here, its run's loss curve), and the actions: generate with it, continue training
it, rename, delete, export to the book's ``model.pth``, and import (the book's ``.pth``, a Hugging Face
GPT-2 folder, GPT-2 downloaded by size, the GPT-2 tokenizer files). Imports and exports run in a thread
worker (group ``"import"``) with a progress bar and a Cancel button; every failure is a message on the
screen, never a crash.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Checkbox, DataTable, Footer, Header, Input, Label, ProgressBar, Select, Static
from textual.widgets.data_table import CellDoesNotExist

from gpttui.core import checkpoints, interop
from gpttui.core.units import format_bytes as human_bytes, format_count as human_count
from gpttui.core.errors import GPTTUIError
from gpttui.core.train import CheckpointEvent, FinishedEvent
from gpttui.tui.widgets import MetricChart

JOB_GROUP = "import"  # imports and exports: one at a time, in a thread
DETAILS_GROUP = "details"  # reading a run's loss curve
GPT2_SIZES = ("gpt2-small", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_SIZE_NOTES = {"gpt2-small": "124M, 0.5 GB", "gpt2-medium": "355M, 1.4 GB", "gpt2-large": "774M, 3.1 GB",
                   "gpt2-xl": "1.6B, 6.4 GB"}
IMPORT_KINDS = {
    "book": "the book's model.pth (or model_and_optimizer.pth)",
    "hf": "a Hugging Face GPT-2 folder (config.json + weights)",
    "size": "GPT-2 by size, downloaded from the Hugging Face Hub",
    "tokenizer": "the GPT-2 tokenizer files (encoder.json + vocab.bpe)",
}
IMPORT_HELP = {
    "book": "Saved by the book's code (torch.save(model.state_dict(), ...)); read with "
            "torch.load(weights_only=True), so a file that would run code is refused. Give the heads for "
            "widths that are not GPT-2's.",
    "hf": "A folder as transformers saves it (save_pretrained) or as the Hub has it: config.json and "
          "model.safetensors (or pytorch_model.bin), or OpenAI's original TensorFlow checkpoint.",
    "size": "Taken from the Hugging Face cache when it is there, else downloaded (needs a network and "
            "huggingface_hub). Cancel stops the download; it resumes next time.",
    "tokenizer": "Copies OpenAI's encoder.json and vocab.bpe (checked by sha256) into gpttui's data folder, "
                 "so the gpt2 tokenizer works offline.",
}
SOURCE_LABELS = {"trained": "trained", "imported-gpt2": "GPT-2", "imported-book": "book file"}
COLUMNS = (("Name", "name"), ("Model", "model"), ("Params", "params"), ("Source", "source"), ("Step", "step"),
           ("Tokens", "tokens"), ("Best val", "best_val"), ("Dataset", "dataset"), ("Created", "created"),
           ("Size", "size"))


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------


def local_time(iso: str | None, short: bool = False) -> str:
    """Local time of an ISO timestamp; ``short``: "Nov 23 20:28" this year, else "2024-11-23"."""
    try:
        when = _dt.datetime.fromisoformat(str(iso))
    except (TypeError, ValueError):
        return "?"
    if when.tzinfo is not None:
        when = when.astimezone()
    if short:
        return when.strftime("%b %d %H:%M" if when.year == _dt.datetime.now().year else "%Y-%m-%d")
    return when.strftime("%Y-%m-%d %H:%M")


def _number(value: Any, fmt: str = "{:.3f}") -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return fmt.format(value)
    return "–"


def model_shape(cfg: dict | None) -> str:
    cfg = cfg or {}
    try:
        return (f"{cfg['n_layers']}L·{cfg['n_heads']}H·{cfg['emb_dim']}d "
                f"ctx {cfg['context_length']}")
    except KeyError:
        return "?"


def _short(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def short_error(info: checkpoints.CheckpointInfo) -> str:
    """A broken checkpoint's error without its folder's path (the details pane has it all)."""
    error = info.error or "broken"
    return error.replace(str(info.path) + "/", "").replace(str(info.path), info.name)


def row_cells(info: checkpoints.CheckpointInfo, problem_column: bool = False) -> list[Any]:
    """The table cells of one checkpoint, in :data:`COLUMNS` order (then its error, with
    ``problem_column``: the column the table gets when some checkpoint is broken)."""
    meta = info.meta or {}
    created = local_time(info.created, short=True)
    size = human_bytes(info.size_bytes)
    if not info.ok:
        cells = [info.name, Text("✗ broken", style="red"), "–", "–", "–", "–", "–", "–", created, size]
        return cells + [Text(_short(short_error(info), 70), style="red")] if problem_column else cells
    dataset = meta.get("dataset") if isinstance(meta.get("dataset"), dict) else {}
    label = dataset.get("label") or dataset.get("source") or "–"
    return [
        info.name,
        model_shape(meta.get("model_config")),
        human_count(meta.get("parameter_count")),
        SOURCE_LABELS.get(str(meta.get("source")), str(meta.get("source") or "?")),
        f"{meta.get('step') or 0:,}",
        human_count(meta.get("tokens_seen") or 0),
        _number(meta.get("best_val_loss")),
        _short(label, 16),
        created,
        size,
    ] + ([""] if problem_column else [])


def details_renderable(info: checkpoints.CheckpointInfo, note: str = "") -> Group:
    """The details pane for one checkpoint: a title, then a two-column grid (values wrap in their column)."""
    meta = info.meta or {}
    title = Text.assemble((info.name, "bold"), "  ·  ", str(meta.get("source") or "broken"))
    if not info.ok:
        return Group(title, Text(f"✗ {info.error or 'broken'}", style="red"),
                     Text("It cannot be loaded; delete it (d) or repair its folder:"), Text(str(info.path)))
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    extra: list[Text] = []

    def row(key: str, value: str) -> None:
        grid.add_row(Text(key), Text(value))  # Text: user strings are never read as markup

    cfg = meta.get("model_config") or {}
    layers, heads = cfg.get("n_layers"), cfg.get("n_heads")
    row("Model", f"{layers} layer{'s' * (layers != 1)} · {heads} head{'s' * (heads != 1)} · "
                 f"width {cfg.get('emb_dim')} · context {cfg.get('context_length')}")
    row("", f"vocab {cfg.get('vocab_size')} · qkv bias {'on' if cfg.get('qkv_bias') else 'off'} · "
            f"{'tied' if cfg.get('tie_weights') else 'separate'} output head · dropout {cfg.get('drop_rate')}")
    params = meta.get("parameter_count")
    row("Params", (f"{params:,}" if isinstance(params, int) else "?")
        + f" · {meta.get('dtype', '?')} · {human_bytes(info.size_bytes)} on disk")
    row("Tokenizer", str(meta.get("tokenizer") or "?"))
    if meta.get("source") == "trained" or meta.get("step"):
        row("Progress", f"step {meta.get('step') or 0:,} · epoch {meta.get('epoch') or 0} · "
                        f"{meta.get('tokens_seen') or 0:,} tokens seen")
        row("Loss", f"train {_number(meta.get('last_train_loss'))} · val {_number(meta.get('last_val_loss'))}"
                    f" · best val {_number(meta.get('best_val_loss'))}")
    row("Optimizer", "saved (training continues with its AdamW state)" if meta.get("has_optimizer")
        else "none (training continues with a fresh AdamW)")
    dataset = meta.get("dataset")
    if isinstance(dataset, dict) and dataset:
        row("Dataset", str(dataset.get("label") or dataset.get("source") or "?"))
        bits = []
        if isinstance(dataset.get("tokens"), int):
            bits.append(f"{dataset['tokens']:,} tokens")
        for key, name in (("context_length", "context"), ("stride", "stride"), ("batch_size", "batch"),
                          ("train_ratio", "train ratio")):
            if dataset.get(key) is not None:
                bits.append(f"{name} {dataset[key]}")
        if bits:
            row("", " · ".join(bits))
        if dataset.get("source") and dataset.get("source") != dataset.get("label"):
            row("", str(dataset["source"]))
    tc = meta.get("train_config")
    if isinstance(tc, dict) and tc:
        lr = f"lr {tc.get('lr')}" + (f" → {tc['min_lr']}" if tc.get("min_lr") is not None else "")
        bits = [lr, f"warmup {tc.get('warmup_steps', 0)}", f"wd {tc.get('weight_decay')}",
                f"clip {tc.get('grad_clip') if tc.get('grad_clip') is not None else 'off'}",
                f"accum {tc.get('grad_accum', 1)}", f"seed {tc.get('seed')}"]
        row("Training", " · ".join(bits))
        row("", f"epochs {tc.get('epochs')} · max steps {tc.get('max_steps') or '–'} · eval every "
                f"{tc.get('eval_freq')} ({tc.get('eval_iter')} batches) · {tc.get('device')} {tc.get('dtype')}")
    origin = meta.get("origin") if isinstance(meta.get("origin"), dict) else {}
    if meta.get("imported_from"):
        what = meta.get("gpt2_size") or ""
        how = []
        if origin.get("revision"):
            how.append(f"revision {str(origin['revision'])[:12]}")
        if meta.get("weights_format"):
            how.append(str(meta["weights_format"]))
        row("Origin", f"{what + ' from ' if what else ''}{meta['imported_from']}"
            + (f" ({', '.join(how)})" if how else ""))
    row("Created", f"{local_time(info.created)} · gpttui {meta.get('gpttui_version', '?')}")
    if meta.get("run_id"):
        row("Run", str(meta["run_id"]))
    row("Path", str(info.path))
    for text in meta.get("notes") or []:
        extra.append(Text(f"! {text}", style="italic"))
    if note:
        extra.append(Text(note, style="dim"))
    return Group(title, grid, *extra)


def default_name(path: str) -> str:
    """A checkpoint name from a file or folder name (``model.pth`` → ``model``)."""
    p = Path(path.rstrip("/\\")).expanduser()
    stem = p.stem if p.suffix in (".pth", ".pt", ".bin", ".safetensors") else p.name
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip(".-+") or "imported"
    return name[: checkpoints.MAX_NAME_LENGTH]


# ---------------------------------------------------------------------------------------------
# Messages from the job thread
# ---------------------------------------------------------------------------------------------


@dataclass
class JobStage(Message):
    text: str


@dataclass
class JobProgress(Message):
    done: int
    total: int


@dataclass
class JobDone(Message):
    message: str
    select: str | None = None


@dataclass
class JobFailed(Message):
    message: str
    cancelled: bool = False


@dataclass
class LossCurve(Message):
    name: str
    series: list  # [(label, xs, ys)]
    note: str = ""


@dataclass
class ImportRequest:
    kind: str  # book | hf | size | tokenizer
    path: str = ""
    name: str = ""
    size: str = "gpt2-small"
    heads: int | None = None
    tokenizer: str = "auto"


# ---------------------------------------------------------------------------------------------
# Dialogs
# ---------------------------------------------------------------------------------------------


class CheckpointDialog(ModalScreen):
    """Base of the screen's dialogs: Escape cancels, errors show in ``.dialog-error``."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def action_cancel(self) -> None:
        self.dismiss(None)

    def show_error(self, text: str) -> None:
        error = self.query_one(".dialog-error", Static)
        error.update(f"[$error]✗ {escape(text)}[/]")
        error.remove_class("hidden")

    def clear_error(self) -> None:
        self.query_one(".dialog-error", Static).add_class("hidden")

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)


class RenameDialog(CheckpointDialog):
    """Asks for a new name; ``attempt(new)`` renames and returns an error message or ``None``."""

    def __init__(self, name: str, attempt: Callable[[str], str | None]) -> None:
        super().__init__()
        self.old = name
        self.attempt = attempt

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog ckpt-dialog"):
            yield Label(f"Rename checkpoint {self.old!r} to:", classes="dialog-title")
            yield Input(self.old, id="rename-input")
            yield Static("", classes="dialog-error hidden")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Rename", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        new = self.query_one("#rename-input", Input).value.strip()
        error = self.attempt(new)
        if error:
            self.show_error(error)
        else:
            self.dismiss(new)


class ConfirmDialog(CheckpointDialog):
    """Yes or no; the default (focused) answer is no."""

    BINDINGS = [Binding("escape", "cancel", "Cancel"), Binding("y", "confirm", "Yes"), Binding("n", "cancel", "No")]

    def __init__(self, question: str, confirm: str = "Delete") -> None:
        super().__init__()
        self.question = question
        self.confirm_label = confirm

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog ckpt-dialog danger"):
            yield Label(self.question, classes="dialog-title")
            yield Static("", classes="dialog-error hidden")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (y)", id="confirm", variant="error")
                yield Button("Cancel (n)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed, "#confirm")
    def action_confirm(self) -> None:
        self.dismiss(True)

    def action_cancel(self) -> None:
        self.dismiss(False)

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(False)


class ExportDialog(CheckpointDialog):
    """Where to write the book's file; dismisses with ``(path, with_optimizer, force)``, ``force`` when
    the user confirmed replacing an existing file."""

    def __init__(self, name: str, has_optimizer: bool) -> None:
        super().__init__()
        self.ckpt = name
        self.has_optimizer = has_optimizer
        self._overwrite_ok: str | None = None

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog ckpt-dialog"):
            yield Label(f"Export {self.ckpt!r} as the book saves it (torch.save of model.state_dict()):",
                        classes="dialog-title")
            yield Input(f"./{self.ckpt}.pth", id="export-path", placeholder="a .pth file, or a folder")
            yield Checkbox("with the optimizer (the book's model_and_optimizer.pth)", False,
                           id="export-optimizer", disabled=not self.has_optimizer)
            yield Static("", classes="dialog-error hidden")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        text = self.query_one("#export-path", Input).value.strip()
        if not text:
            self.show_error("Give a file to write (for example ./model.pth).")
            return
        with_optimizer = self.query_one("#export-optimizer", Checkbox).value
        path = Path(text).expanduser()
        if path.is_dir():
            path = path / (interop.BOOK_MODEL_AND_OPTIMIZER_FILE if with_optimizer else interop.BOOK_MODEL_FILE)
        key = f"{text}\0{with_optimizer}"
        if path.is_file() and self._overwrite_ok != key:
            self._overwrite_ok = key
            self.show_error(f"{path} exists; press Export again to replace it.")
            return
        self.dismiss((text, with_optimizer, self._overwrite_ok == key))


class ImportDialog(CheckpointDialog):
    """What to import and as which name; checks what it can and dismisses with an :class:`ImportRequest`."""

    def __init__(self, kind: str = "book") -> None:
        super().__init__()
        self.kind = kind if kind in IMPORT_KINDS else "book"
        self._auto_name = ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog ckpt-dialog", id="import-dialog"):
            yield Label("Import", classes="dialog-title")
            yield Select([(v, k) for k, v in IMPORT_KINDS.items()], value=self.kind, allow_blank=False,
                         id="import-kind", compact=True)
            with Horizontal(classes="dialog-field", id="import-path-row"):
                yield Label("Path", classes="dialog-label")
                yield Input("", id="import-path", placeholder="a file or folder", compact=True)
            with Horizontal(classes="dialog-field", id="import-size-row"):
                yield Label("Size", classes="dialog-label")
                yield Select([(f"{s} ({GPT2_SIZE_NOTES[s]})", s) for s in GPT2_SIZES], value="gpt2-small",
                             allow_blank=False, id="import-size", compact=True)
            with Horizontal(classes="dialog-field", id="import-name-row"):
                yield Label("Save as", classes="dialog-label")
                yield Input("", id="import-name", placeholder="checkpoint name", compact=True)
            with Horizontal(classes="dialog-field", id="import-heads-row"):
                yield Label("Heads", classes="dialog-label")
                yield Input("", id="import-heads", compact=True,
                            placeholder="empty: GPT-2's for widths 768, 1024, 1280, 1600")
            with Horizontal(classes="dialog-field", id="import-tokenizer-row"):
                yield Label("Tokenizer", classes="dialog-label")
                yield Select([("auto (from the vocabulary size)", "auto"), ("gpt2", "gpt2"), ("bytes", "bytes")],
                             value="auto", allow_blank=False, id="import-tokenizer", compact=True)
            yield Static("", id="import-help", classes="dialog-help")
            yield Static("", classes="dialog-error hidden")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Import", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self._show_kind()

    def _show_kind(self) -> None:
        kind = self.kind
        self.query_one("#import-path-row").set_class(kind == "size", "hidden")
        self.query_one("#import-size-row").set_class(kind != "size", "hidden")
        self.query_one("#import-name-row").set_class(kind == "tokenizer", "hidden")
        self.query_one("#import-heads-row").set_class(kind != "book", "hidden")
        self.query_one("#import-tokenizer-row").set_class(kind != "book", "hidden")
        self.query_one("#import-help", Static).update(IMPORT_HELP[kind])
        self.clear_error()
        path = self.query_one("#import-path", Input)
        path.placeholder = {"book": "path of model.pth", "hf": "folder with config.json",
                            "tokenizer": "folder with encoder.json and vocab.bpe"}.get(kind, "")
        if kind == "size":
            self._suggest_name(str(self.query_one("#import-size", Select).value))
        (path if kind != "size" else self.query_one("#import-size")).focus()

    def _suggest_name(self, name: str) -> None:
        field = self.query_one("#import-name", Input)
        if not field.value.strip() or field.value == self._auto_name:
            field.value = name
            self._auto_name = name

    @on(Select.Changed, "#import-kind")
    def _kind_changed(self, event: Select.Changed) -> None:
        if str(event.value) != self.kind:
            self.kind = str(event.value)
            self._show_kind()

    @on(Select.Changed, "#import-size")
    def _size_changed(self, event: Select.Changed) -> None:
        if self.kind == "size":
            self._suggest_name(str(event.value))

    @on(Input.Changed, "#import-path")
    def _path_changed(self, event: Input.Changed) -> None:
        if self.kind in ("book", "hf") and event.value.strip():
            self._suggest_name(default_name(event.value.strip()))

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _submit(self) -> None:
        try:
            request = self.read_request()
        except ValueError as exc:
            self.show_error(str(exc))
            return
        self.dismiss(request)

    def read_request(self) -> ImportRequest:
        """The request in the form; ValueError with what is wrong (shown in the dialog)."""
        kind = self.kind
        request = ImportRequest(kind)
        if kind == "size":
            request.size = str(self.query_one("#import-size", Select).value)
        else:
            text = self.query_one("#import-path", Input).value.strip()
            if not text:
                raise ValueError("Give a path.")
            path = Path(text).expanduser()
            if not path.exists():
                raise ValueError(f"{path} does not exist.")
            if kind == "book" and not path.is_file():
                raise ValueError(f"{path} is not a file: give the .pth file the book's code saved.")
            if kind == "tokenizer" and not path.is_dir():
                raise ValueError(f"{path} is not a folder: give the folder holding encoder.json and vocab.bpe.")
            request.path = str(path)
        if kind != "tokenizer":
            name = self.query_one("#import-name", Input).value.strip()
            if not name:
                raise ValueError("Give the checkpoint a name.")
            try:
                checkpoints.validate_name(name)
                exists = checkpoints.checkpoint_exists(name)
            except GPTTUIError as exc:
                raise ValueError(str(exc)) from None
            if exists:
                raise ValueError(f"Checkpoint {name!r} already exists; choose another name.")
            request.name = name
        if kind == "book":
            heads = self.query_one("#import-heads", Input).value.strip()
            if heads:
                if not heads.isdigit() or int(heads) < 1:
                    raise ValueError(f"Heads must be a positive whole number, not {heads!r}.")
                request.heads = int(heads)
            request.tokenizer = str(self.query_one("#import-tokenizer", Select).value)
        return request


# ---------------------------------------------------------------------------------------------
# The screen
# ---------------------------------------------------------------------------------------------


class CheckpointsScreen(Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("g", "generate", "Generate"),
        Binding("t", "train", "Continue"),
        Binding("r", "rename", "Rename"),
        Binding("d", "delete", "Delete"),
        Binding("delete", "delete", "Delete", show=False),
        Binding("e", "export", "Export"),
        Binding("i", "import('book')", "Import"),
        Binding("h", "import('hf')", "Import HF folder", show=False),
        Binding("w", "import('size')", "Download GPT-2", show=False),
        Binding("k", "import('tokenizer')", "Tokenizer files", show=False),
        Binding("ctrl+r", "refresh", "Refresh", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="ckpt-main"):
            yield DataTable(id="ckpt-table", cursor_type="row", zebra_stripes=True, fixed_columns=1)
            with Horizontal(classes="ckpt-buttons", id="ckpt-actions"):
                yield Button("Generate g", id="ckpt-generate", variant="primary", compact=True)
                yield Button("Continue t", id="ckpt-train", compact=True)
                yield Button("Rename r", id="ckpt-rename", compact=True)
                yield Button("Delete d", id="ckpt-delete", variant="error", compact=True)
                yield Button("Export e", id="ckpt-export", compact=True)
            with Horizontal(classes="ckpt-buttons", id="ckpt-imports"):
                yield Label("Import:", classes="ckpt-buttons-label")
                yield Button("Book .pth i", id="ckpt-import-book", compact=True)
                yield Button("HF folder h", id="ckpt-import-hf", compact=True)
                yield Button("Download GPT-2 w", id="ckpt-import-size", compact=True)
                yield Button("Tokenizer k", id="ckpt-import-tokenizer", compact=True)
            with Horizontal(id="ckpt-job", classes="hidden"):
                yield Label("", id="ckpt-job-stage")
                yield ProgressBar(id="ckpt-job-progress", show_eta=False)
                yield Button("Cancel", id="ckpt-job-cancel", variant="warning", compact=True)
            yield Static("", id="ckpt-status")
            with Horizontal(id="ckpt-details", classes="panel"):
                with VerticalScroll(id="ckpt-meta-scroll"):
                    yield Static("", id="ckpt-meta")
                yield MetricChart("loss: green train, red val", id="ckpt-chart")
        yield Footer()

    def on_mount(self) -> None:
        self.infos: dict[str, checkpoints.CheckpointInfo] = {}
        self._job_cancel: threading.Event | None = None
        self._job_title = ""
        self._shown: tuple | None = None
        self._events_seen = 0
        self.query_one("#ckpt-details").border_title = "Details"
        self.refresh_table()
        self.set_interval(1.0, self._watch_training)

    def on_screen_resume(self) -> None:
        self.app.refresh_header()
        self.refresh_table()
        self.query_one("#ckpt-table", DataTable).focus()

    def on_unmount(self) -> None:
        if self._job_cancel is not None:
            self._job_cancel.set()

    # -- the table
    @property
    def selected(self) -> str | None:
        """The name of the highlighted checkpoint (``None`` when the table is empty)."""
        table = self.query_one("#ckpt-table", DataTable)
        if not table.row_count:
            return None
        try:
            key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        except CellDoesNotExist:
            return None
        return str(key.value) if key is not None and key.value is not None else None

    def refresh_table(self, select: str | None = None) -> None:
        """Re-read the checkpoints folder; keep (or move to ``select``) the highlighted row."""
        table = self.query_one("#ckpt-table", DataTable)
        keep = select or self.selected
        try:
            infos = checkpoints.list_checkpoints()
        except (GPTTUIError, OSError) as exc:
            self.set_status(f"Cannot list the checkpoints: {exc}", "error")
            infos = []
        self.infos = {i.name: i for i in infos}
        old_row = table.cursor_row
        table.clear()
        broken = any(not i.ok for i in infos)
        if not table.columns:
            for label, key in COLUMNS:
                table.add_column(label, key=key)
        has_problem = "problem" in table.columns
        if broken and not has_problem:
            table.add_column("Problem", key="problem")
        elif has_problem and not broken:
            table.remove_column("problem")
        for info in infos:
            table.add_row(*row_cells(info, broken), key=info.name)
        if infos:
            names = [i.name for i in infos]
            row = names.index(keep) if keep in names else min(max(old_row, 0), len(names) - 1)
            table.move_cursor(row=row, animate=False)
        self.show_details()

    def _watch_training(self) -> None:
        """Refresh when the running training saved a checkpoint (the app keeps its events)."""
        events = self.app.training_events
        new = events[self._events_seen:]
        self._events_seen = len(events)
        if self.is_current and any(isinstance(e, (CheckpointEvent, FinishedEvent)) for e in new):
            self.refresh_table()

    @on(DataTable.RowHighlighted, "#ckpt-table")
    def _highlighted(self) -> None:
        self.show_details()

    @on(DataTable.RowSelected, "#ckpt-table")
    def _selected(self) -> None:
        self.action_generate()

    # -- the details pane
    def show_details(self) -> None:
        name = self.selected
        info = self.infos.get(name) if name else None
        meta_widget = self.query_one("#ckpt-meta", Static)
        chart = self.query_one("#ckpt-chart", MetricChart)
        if info is None:
            self._shown = None
            meta_widget.update("No checkpoints yet. Train a model (F3), or import one: the book's model.pth "
                               "(i), a Hugging Face GPT-2 folder (h), or GPT-2 by size (w).")
            chart.display = False
            return
        key = (info.name, info.created, info.size_bytes, info.error)
        if key == self._shown:
            return
        self._shown = key
        meta_widget.update(details_renderable(info))
        chart.display = False
        run_dir = (info.meta or {}).get("run_dir")
        if info.ok and run_dir:
            self.load_curve(info.name, str(run_dir))

    @work(thread=True, exclusive=True, group=DETAILS_GROUP, exit_on_error=False)
    def load_curve(self, name: str, run_dir: str) -> None:
        from gpttui.core.history import RunHistory

        try:
            if not Path(run_dir).is_dir():
                self.post_message(LossCurve(name, [], f"(the run's folder {run_dir} is gone: no loss curve)"))
                return
            evals = RunHistory.from_run_dir(run_dir).snapshot().evals
        except Exception as exc:  # a damaged log must not break the pane
            self.post_message(LossCurve(name, [], f"(cannot read the run's log: {exc})"))
            return
        series = [("", [], []), ("train", evals.step, evals.values.get("train_loss", [])),
                  ("val", evals.step, evals.values.get("val_loss", []))]
        self.post_message(LossCurve(name, series, "" if len(evals) else "(the run logged no evaluations)"))

    def on_loss_curve(self, message: LossCurve) -> None:
        if message.name != self.selected:
            return
        chart = self.query_one("#ckpt-chart", MetricChart)
        chart.set_series(message.series)
        chart.display = chart.point_count > 0
        if message.note:
            info = self.infos.get(message.name)
            if info is not None:
                self.query_one("#ckpt-meta", Static).update(details_renderable(info, message.note))

    # -- status
    def set_status(self, text: str, severity: str = "information", notify: bool = True,
                   title: str | None = None) -> None:
        colour = {"error": "$error", "warning": "$warning", "success": "$success"}.get(severity)
        mark = {"error": "✗ ", "warning": "! ", "success": "✓ "}.get(severity, "")
        body = escape(mark + text)
        self.query_one("#ckpt-status", Static).update(f"[{colour}]{body}[/]" if colour else body)
        if notify:
            self.app.notify(text, title=title, timeout=10 if severity == "error" else 5,
                            severity="information" if severity == "success" else severity)

    def _need(self, ok_only: bool = False) -> checkpoints.CheckpointInfo | None:
        name = self.selected
        info = self.infos.get(name) if name else None
        if info is None:
            self.set_status("No checkpoint is selected.", "warning")
            return None
        if ok_only and not info.ok:
            self.set_status(f"Checkpoint {info.name!r} is broken: {info.error}", "error")
            return None
        return info

    def _in_use(self, name: str) -> str | None:
        """Why ``name`` cannot be renamed or deleted now (the running training writes it), or None."""
        session = self.app.state.session
        trainer = session.trainer
        if session.running and trainer is not None and name in (trainer.save_name, trainer.resume):
            return (f"Checkpoint {name!r} belongs to the training run in progress; stop it first (F3, then F8).")
        return None

    # -- actions
    @on(Button.Pressed, "#ckpt-generate")
    def action_generate(self) -> None:
        info = self._need(ok_only=True)
        if info is None:
            return
        self.app.state.generate_checkpoint = info.name
        if "generate" in getattr(self.app, "MODES", {}):
            self.app.switch_mode("generate")
        else:
            self.set_status(f"{info.name!r} is the model to generate with; the Generate screen is not "
                            "available in this version.", "warning")

    @on(Button.Pressed, "#ckpt-train")
    async def action_train(self) -> None:
        info = self._need(ok_only=True)
        if info is None:
            return
        from gpttui.tui.train_screen import TrainScreen

        name = info.name
        await self.app.switch_mode("train")
        screen = self.app.screen
        if not isinstance(screen, TrainScreen):
            return
        screen.refresh_checkpoints()
        try:
            screen.query_one("#resume", Select).value = name
        except Exception as exc:  # the checkpoint vanished meanwhile
            self.app.notify(f"Cannot select {name!r}: {exc}", severity="error")
            return
        dataset = (info.meta or {}).get("dataset") or {}
        where = (f"on its own data ({dataset.get('label') or dataset.get('source')}) unless you choose otherwise"
                 if dataset.get("source") else "on the Dataset screen's text, saved under a new name")
        self.app.notify(f"Continue training {name!r}: press F6. It continues {where}.", timeout=8)

    @on(Button.Pressed, "#ckpt-rename")
    def action_rename(self) -> None:
        info = self._need()
        if info is None:
            return
        old = info.name

        def attempt(new: str) -> str | None:
            if new == old:
                return "That is already its name."
            if (why := self._in_use(old)) is not None:
                return why
            try:
                checkpoints.rename_checkpoint(old, new)
            except GPTTUIError as exc:
                return str(exc)
            except OSError as exc:
                return f"Could not rename {old!r}: {exc}"
            if self.app.state.generate_checkpoint == old:
                self.app.state.generate_checkpoint = new
            self.refresh_table(select=new)
            self.set_status(f"Renamed {old!r} to {new!r}.", "success")
            return None

        self.app.push_screen(RenameDialog(old, attempt))

    @on(Button.Pressed, "#ckpt-delete")
    def action_delete(self) -> None:
        info = self._need()
        if info is None:
            return
        name = info.name
        if (why := self._in_use(name)) is not None:
            self.set_status(why, "error")
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                self.set_status(f"Kept {name!r}.", notify=False)
                return
            try:
                checkpoints.delete_checkpoint(name)
            except GPTTUIError as exc:
                self.set_status(str(exc), "error")
            except OSError as exc:
                self.set_status(f"Could not delete {name!r}: {exc}", "error")
            else:
                if self.app.state.generate_checkpoint == name:
                    self.app.state.generate_checkpoint = None
                self.set_status(f"Deleted {name!r}.", "success")
            self.refresh_table()

        size = human_bytes(info.size_bytes)
        self.app.push_screen(ConfirmDialog(f"Delete checkpoint {name!r} ({size})? This cannot be undone."),
                             answered)

    @on(Button.Pressed, "#ckpt-export")
    def action_export(self) -> None:
        info = self._need(ok_only=True)
        if info is None:
            return
        name = info.name

        def answered(result: tuple[str, bool, bool] | None) -> None:
            if not result:
                return
            path, with_optimizer, force = result

            def job(progress, cancel, stage) -> tuple[str, str | None]:
                stage(f"Exporting {name!r}")
                out = interop.export_book(name, path, with_optimizer=with_optimizer, force=force)
                what = "model and optimizer" if with_optimizer else "model.state_dict()"
                return (f"Exported {name!r} to {out} ({what}; load it with torch.load(..., weights_only=True) "
                        "and the book's GPTModel.load_state_dict)."), None

            self.start_job(f"Export {name}", job)

        self.app.push_screen(ExportDialog(name, bool((info.meta or {}).get("has_optimizer"))), answered)

    @on(Button.Pressed, "#ckpt-import-book")
    def _import_book(self) -> None:
        self.action_import("book")

    @on(Button.Pressed, "#ckpt-import-hf")
    def _import_hf(self) -> None:
        self.action_import("hf")

    @on(Button.Pressed, "#ckpt-import-size")
    def _import_size(self) -> None:
        self.action_import("size")

    @on(Button.Pressed, "#ckpt-import-tokenizer")
    def _import_tokenizer(self) -> None:
        self.action_import("tokenizer")

    def action_import(self, kind: str = "book") -> None:
        if self.job_running:
            self.set_status(f"{self._job_title} is still running; wait for it or cancel it.", "warning")
            return

        def answered(request: ImportRequest | None) -> None:
            if request is not None:
                self.start_import(request)

        self.app.push_screen(ImportDialog(kind), answered)

    def action_refresh(self) -> None:
        self.refresh_table()
        self.set_status(f"{len(self.infos)} checkpoint(s).", notify=False)

    # -- imports and exports, in a thread
    def start_import(self, request: ImportRequest) -> None:
        """Run an import (book file, HF folder, size download, tokenizer files) in the job thread."""
        from gpttui.core import gpt2_import

        name, path = request.name, request.path
        if request.kind == "book":
            def job(progress, cancel, stage):
                stage(f"Reading {Path(path).name}")
                tokenizer = None if request.tokenizer == "auto" else request.tokenizer  # None: from the vocabulary
                imported = interop.read_book(path, n_heads=request.heads, tokenizer=tokenizer)
                stage(f"Saving {name!r}")
                checkpoints.save_checkpoint(name, imported.model, optimizer=imported.optimizer_state,
                                            meta=imported.meta, overwrite=False)
                return f"Imported {path} as {name!r} ({imported.meta['tokenizer']} tokenizer).", name
            title = f"Import {Path(path).name}"
        elif request.kind in ("hf", "size"):
            source = path if request.kind == "hf" else request.size

            def job(progress, cancel, stage):
                result = gpt2_import.import_gpt2(source, name, progress=progress, cancel=cancel, on_stage=stage)
                what = result.size or "GPT-2"
                text = (f"Imported {what} ({result.parameter_count / 1e6:.1f}M parameters) from "
                        f"{result.origin.get('repo_id') or result.origin.get('path') or source} as {name!r} "
                        f"in {result.seconds:.1f} s.")
                if result.notes:
                    text += " " + " ".join(result.notes)
                return text, name
            title = f"Import {request.size}" if request.kind == "size" else f"Import {Path(path).name}"
        else:
            from gpttui.core import tokenizer as tokenizer_mod

            def job(progress, cancel, stage):
                stage("Checking encoder.json and vocab.bpe")
                dest = tokenizer_mod.import_gpt2_files(path)
                return f"GPT-2 tokenizer files copied to {dest}; the gpt2 tokenizer now works offline.", None
            title = "Import tokenizer files"
        self.start_job(title, job)

    @property
    def job_running(self) -> bool:
        return self._job_cancel is not None

    def start_job(self, title: str, job: Callable) -> None:
        if self.job_running:
            self.set_status(f"{self._job_title} is still running; wait for it or cancel it.", "warning")
            return
        self._job_cancel = threading.Event()
        self._job_title = title
        self.query_one("#ckpt-job").remove_class("hidden")
        self.query_one("#ckpt-job-stage", Label).update(f"{title}…")
        self.query_one("#ckpt-job-progress", ProgressBar).update(total=None, progress=0)
        cancel_button = self.query_one("#ckpt-job-cancel", Button)
        cancel_button.disabled = False
        self.set_status(f"{title}…", notify=False)
        self.run_job(job, self._job_cancel)

    @work(thread=True, group=JOB_GROUP, exit_on_error=False)
    def run_job(self, job: Callable, cancel: threading.Event) -> None:
        from gpttui.core.gpt2_import import ImportCancelled

        last = [0.0]

        def progress(done: int, total: int) -> None:
            import time

            now = time.monotonic()
            if done >= total or now - last[0] > 0.1:  # at most ten redraws a second
                last[0] = now
                self.post_message(JobProgress(int(done), int(total)))

        def stage(text: str) -> None:
            self.post_message(JobStage(text))

        try:
            message, select = job(progress, cancel, stage)
        except ImportCancelled as exc:
            self.post_message(JobFailed(str(exc), cancelled=True))
        except GPTTUIError as exc:
            self.post_message(JobFailed(str(exc)))
        except MemoryError:
            self.post_message(JobFailed("Not enough memory for this model."))
        except Exception as exc:  # a disk error, a file torch cannot read...: a message, not a crash
            self.post_message(JobFailed(f"{type(exc).__name__}: {exc}"))
        else:
            self.post_message(JobDone(message, select))

    @on(Button.Pressed, "#ckpt-job-cancel")
    def action_cancel_job(self) -> None:
        if self._job_cancel is not None:
            self._job_cancel.set()
            self.query_one("#ckpt-job-cancel", Button).disabled = True
            self.query_one("#ckpt-job-stage", Label).update("Cancelling…")

    def on_job_stage(self, message: JobStage) -> None:
        if self.job_running:
            self.query_one("#ckpt-job-stage", Label).update(_short(message.text, 60))
            self.query_one("#ckpt-job-progress", ProgressBar).update(total=None, progress=0)

    def on_job_progress(self, message: JobProgress) -> None:
        if self.job_running:
            self.query_one("#ckpt-job-progress", ProgressBar).update(total=max(message.total, 1),
                                                                      progress=message.done)

    def _job_over(self) -> None:
        self._job_cancel = None
        self.query_one("#ckpt-job").add_class("hidden")

    def on_job_done(self, message: JobDone) -> None:
        self._job_over()
        self.refresh_table(select=message.select)
        self.set_status(message.message, "success", title=self._job_title)

    def on_job_failed(self, message: JobFailed) -> None:
        self._job_over()
        self.refresh_table()
        self.set_status(message.message, "warning" if message.cancelled else "error",
                        title=f"{self._job_title} cancelled" if message.cancelled else f"{self._job_title} failed")
