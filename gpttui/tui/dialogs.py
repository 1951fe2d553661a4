"""The app's dialogs (modal screens): quitting during a run, how to continue a checkpoint, and the
Checkpoints screen's rename, confirm, export and import dialogs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.markup import escape
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, ProgressBar, Select, Static

from gpttui.core import checkpoints, interop
from gpttui.core.errors import GPTTUIError

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


# The engine's names for a model's settings, and the words of the app's fields for them: an engine
# message shown in a dialog speaks of the fields the user sees. Longer phrases first.
UI_WORDS: tuple[tuple[str, str], ...] = (
    (r"give n_heads \(or the whole model config\)", "give Heads"),
    (r"use --tokenizer (\w+)", r"choose Tokenizer \1"),
    (r"use --allow-nonfinite \(allow_nonfinite=True\)",
     "use the command line: gpttui checkpoints import --allow-nonfinite"),
    (r"\bn_heads\b", "Heads"), (r"\bemb_dim\b", "Width"), (r"\bn_layers\b", "Layers"),
    (r"\bcontext_length\b", "Context"), (r"\bvocab_size\b", "vocabulary size"),
)
IMPORT_FIELDS = ("path", "size", "name", "heads", "tokenizer")  # each has a row and an error line below it


def in_ui_words(message: str) -> str:
    """``message`` with the engine's setting names replaced by the labels of the app's fields."""
    for pattern, words in UI_WORDS:
        message = re.sub(pattern, words, message)
    return message


def error_field(kind: str, message: str) -> str:
    """The import dialog's field an engine error is about ("" when it is about none: memory, disk)."""
    text = message.lower()
    if "already exists" in text and "checkpoint" in text:
        return "name"
    if kind == "book" and ("n_heads" in text or "attention heads" in text):
        return "heads"
    if kind == "book" and "tokenizer" in text and "vocabulary" in text:
        return "tokenizer"
    if any(s in text for s in ("not enough memory", "no space left", "could not write", "could not save")):
        return ""
    return "" if kind == "size" else "path"


class FieldError(ValueError):
    """What is wrong with one field of a dialog (``field`` names it; "" for the dialog as a whole)."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field


@dataclass
class ImportRequest:
    kind: str  # book | hf | size | tokenizer
    path: str = ""
    name: str = ""
    size: str = "gpt2-small"
    heads: int | None = None
    tokenizer: str = "auto"


def default_name(path: str) -> str:
    """A checkpoint name from a file or folder name (``model.pth`` → ``model``)."""
    p = Path(path.rstrip("/\\")).expanduser()
    stem = p.stem if p.suffix in (".pth", ".pt", ".bin", ".safetensors") else p.name
    name = re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip(".-+") or "imported"
    return name[: checkpoints.MAX_NAME_LENGTH]


class QuitScreen(ModalScreen[str]):
    """Asked when quitting while a run is in progress."""

    BINDINGS = [Binding("escape", "dismiss('cancel')", "Cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-dialog", classes="dialog"):
            yield Label("A training run is in progress. Stop it before quitting?")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop, save and quit", id="save", variant="primary")
                yield Button("Quit without saving", id="nosave", variant="error")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")


class ContinueDialog(ModalScreen[str | None]):
    """Continuing a checkpoint while the Dataset screen holds other text: on its own data (the default),
    or on this text under a new name, or on this text replacing it (the user's explicit word)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, name: str, own_label: str | None, this_label: str | None, new_name: str) -> None:
        super().__init__()
        self.ckpt, self.own_label, self.this_label, self.new_name = name, own_label, this_label, new_name

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog ckpt-dialog", id="continue-dialog"):
            own = (f"it was trained on {self.own_label}" if self.own_label
                   else "it records no training text (imported weights)")
            this = (f"the Dataset screen holds {self.this_label}" if self.this_label
                    else "the Dataset screen has no usable text")
            yield Label(f"Continue {self.ckpt!r}: {own}; {this}.", classes="dialog-title")
            with Vertical(classes="dialog-buttons continue-choices"):
                if self.own_label:
                    yield Button(f"On its own data, saving over {self.ckpt!r}", id="own", variant="primary")
                if self.this_label:
                    yield Button(f"On {self.this_label}, saving as {self.new_name!r}", id="new",
                                 variant="default" if self.own_label else "primary")
                    yield Button(f"On {self.this_label}, replacing {self.ckpt!r}", id="replace", variant="error")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#own" if self.own_label else "#new", Button).focus()

    @on(Button.Pressed)
    def _chosen(self, event: Button.Pressed) -> None:
        self.dismiss(None if event.button.id == "cancel" else event.button.id)


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
        self.action_cancel()


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
        try:  # where the engine would refuse to write (no such folder, inside the checkpoints folder): said here
            interop.export_target(text, with_optimizer, force=True)
        except GPTTUIError as exc:
            self.show_error(str(exc))
            return
        if path.is_file() and self._overwrite_ok != key:
            self._overwrite_ok = key
            self.show_error(f"{path} exists; press Export again to replace it.")
            return
        self.dismiss((text, with_optimizer, self._overwrite_ok == key))


class ImportDialog(CheckpointDialog):
    """What to import and as which name. The form is checked here; then ``start(request, dialog)`` (the
    screen) runs the import while the dialog stays open, showing its progress, until the screen closes it
    on success or hands back an engine error (:meth:`job_failed`), shown beside the field it is about, in the
    fields' words, with everything typed still there. A download (GPT-2 by size) closes the dialog at once:
    it is long, its progress is on the screen, and its errors are about the network, not the form.
    Without ``start`` the dialog dismisses with the :class:`ImportRequest`."""

    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]  # 24 lines: the form without blank lines

    def __init__(self, kind: str = "book", start: Callable[[ImportRequest, "ImportDialog"], str | None] | None = None,
                 cancel: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.kind = kind if kind in IMPORT_KINDS else "book"
        self._auto_name = ""
        self._start, self._cancel_job = start, cancel
        self.busy = False

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog ckpt-dialog", id="import-dialog"):
            yield Label("Import", classes="dialog-title")
            yield Select([(v, k) for k, v in IMPORT_KINDS.items()], value=self.kind, allow_blank=False,
                         id="import-kind", compact=True)
            with Horizontal(classes="dialog-field", id="import-path-row"):
                yield Label("Path", classes="dialog-label")
                yield Input("", id="import-path", placeholder="a file or folder", compact=True)
            yield Static("", id="import-path-error", classes="field-error hidden")
            with Horizontal(classes="dialog-field", id="import-size-row"):
                yield Label("Size", classes="dialog-label")
                yield Select([(f"{s} ({GPT2_SIZE_NOTES[s]})", s) for s in GPT2_SIZES], value="gpt2-small",
                             allow_blank=False, id="import-size", compact=True)
            yield Static("", id="import-size-error", classes="field-error hidden")
            with Horizontal(classes="dialog-field", id="import-name-row"):
                yield Label("Save as", classes="dialog-label")
                yield Input("", id="import-name", placeholder="checkpoint name", compact=True)
            yield Static("", id="import-name-error", classes="field-error hidden")
            with Horizontal(classes="dialog-field", id="import-heads-row"):
                yield Label("Heads", classes="dialog-label")
                yield Input("", id="import-heads", compact=True,
                            placeholder="empty: GPT-2's for widths 768, 1024, 1280, 1600")
            yield Static("", id="import-heads-error", classes="field-error hidden")
            with Horizontal(classes="dialog-field", id="import-tokenizer-row"):
                yield Label("Tokenizer", classes="dialog-label")
                yield Select([("auto (from the vocabulary size)", "auto"), ("gpt2", "gpt2"), ("bytes", "bytes")],
                             value="auto", allow_blank=False, id="import-tokenizer", compact=True)
            yield Static("", id="import-tokenizer-error", classes="field-error hidden")
            yield Static("", id="import-help", classes="dialog-help")
            with Horizontal(id="import-job", classes="hidden"):
                yield Label("", id="import-job-stage")
                yield ProgressBar(id="import-job-progress", show_eta=False)
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

    # -- errors beside their fields
    def show_error(self, text: str, field: str = "") -> None:
        """``text`` below ``field``'s row (when that row is shown), else at the foot of the dialog."""
        self.clear_error()
        if field in IMPORT_FIELDS and not self.query_one(f"#import-{field}-row").has_class("hidden"):
            error = self.query_one(f"#import-{field}-error", Static)
            error.update(f"[$error]✗ {escape(text)}[/]")
            error.remove_class("hidden")
            self.query_one(f"#import-{field}-row").add_class("-invalid")
            self.query_one(f"#import-{field}").focus()
        else:
            super().show_error(text)

    def clear_error(self) -> None:
        super().clear_error()
        for field in IMPORT_FIELDS:
            self.query_one(f"#import-{field}-error").add_class("hidden")
            self.query_one(f"#import-{field}-row").remove_class("-invalid")

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
        if self.busy:
            return
        try:
            request = self.read_request()
        except FieldError as exc:
            self.show_error(str(exc), exc.field)
            return
        if self._start is None:
            self.dismiss(request)
            return
        self.clear_error()
        refused = self._start(request, self)
        if refused:
            self.show_error(refused)
        elif request.kind == "size":
            self.dismiss(None)
        else:
            self._set_busy(True)

    # -- while the screen runs the import
    def _set_busy(self, busy: bool) -> None:
        self.busy = busy
        for widget in self.query("Input, Select, #ok"):
            widget.disabled = busy
        self.query_one("#import-job").set_class(not busy, "hidden")
        self.query_one("#cancel", Button).label = "Cancel import" if busy else "Cancel"
        if busy:
            self.query_one("#import-job-stage", Label).update("Starting…")
            self.query_one("#import-job-progress", ProgressBar).update(total=None, progress=0)
            self.query_one("#cancel", Button).focus()

    def job_stage(self, text: str) -> None:
        if self.busy:
            self.query_one("#import-job-stage", Label).update(text)
            self.query_one("#import-job-progress", ProgressBar).update(total=None, progress=0)

    def job_progress(self, done: int, total: int) -> None:
        if self.busy:
            self.query_one("#import-job-progress", ProgressBar).update(total=max(total, 1), progress=done)

    def job_failed(self, message: str) -> None:
        """The engine refused the import: the form comes back as it was, the error beside its field."""
        self._set_busy(False)
        self.show_error(in_ui_words(message), error_field(self.kind, message))

    def action_cancel(self) -> None:
        if self.busy and self._cancel_job is not None:
            self._cancel_job()
        self.dismiss(None)

    def read_request(self) -> ImportRequest:
        """The request in the form; :class:`FieldError` with what is wrong, and where."""
        kind = self.kind
        request = ImportRequest(kind)
        if kind == "size":
            request.size = str(self.query_one("#import-size", Select).value)
        else:
            text = self.query_one("#import-path", Input).value.strip()
            if not text:
                raise FieldError("path", "Give a path.")
            path = Path(text).expanduser()
            if not path.exists():
                raise FieldError("path", f"{path} does not exist.")
            if kind == "book" and not path.is_file():
                raise FieldError("path", f"{path} is not a file: give the .pth file the book's code saved.")
            if kind == "tokenizer" and not path.is_dir():
                raise FieldError("path", f"{path} is not a folder: give the folder holding encoder.json and "
                                         "vocab.bpe.")
            request.path = str(path)
        if kind != "tokenizer":
            name = self.query_one("#import-name", Input).value.strip()
            if not name:
                raise FieldError("name", "Give the checkpoint a name.")
            try:
                checkpoints.validate_name(name)
                exists = checkpoints.checkpoint_exists(name)
            except GPTTUIError as exc:
                raise FieldError("name", str(exc)) from None
            if exists:
                raise FieldError("name", f"Checkpoint {name!r} already exists; choose another name.")
            request.name = name
        if kind == "book":
            heads = self.query_one("#import-heads", Input).value.strip()
            if heads:
                if not heads.isdigit() or int(heads) < 1:
                    raise FieldError("heads", f"Heads must be a positive whole number, not {heads!r}.")
                request.heads = int(heads)
            request.tokenizer = str(self.query_one("#import-tokenizer", Select).value)
        return request
