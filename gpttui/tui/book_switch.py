"""The Train screen's "Book mode" switch (issue 14): the book's chapter-5 loop exactly.

The book's loop has no warmup, learning-rate decay, gradient clipping or accumulation, autocast,
torch.compile, or samples at each evaluation (:func:`gpttui.core.book.book_conflicts`), and
``TrainConfig.validate`` refuses book mode with any of them; it runs in one process. So while the
switch is on, those settings (the processes field too) show the book's values and are disabled; what
the user had typed there is kept and comes back when the switch goes off.
Everything else (lr, weight decay, epochs, evaluation, seed, prompt, the model's shape) stays the
user's: book mode with other values is still the book's loop, just not the book's table.
"""

from __future__ import annotations

from dataclasses import replace

from textual.app import ComposeResult
from textual.widgets import Checkbox, Input, Select, Static

# The settings the book's loop does not have: the Input's id and the book's value ("" is off/none).
# The book's loop is one process: "nproc" 1 (its Changed message gives "run where" back, hardware.py).
BOOK_INPUTS = {"warmup_steps": "0", "min_lr": "", "grad_clip": "", "grad_accum": "1", "nproc": "1"}
BOOK_CHECKBOXES = {"sample_at_eval": False, "compile": False}
BOOK_DTYPE = "fp32"
BOOK_TOOLTIP = ("The book's chapter-5 loop exactly: same data order, dropout, AdamW and printout; with the "
                "book's text and settings, the book's table. Warmup, lr decay, grad clip and accumulation, "
                "autocast, torch.compile, several processes and samples at each eval are off while it is on.")
BOOK_HINT = "The book's loop. Its table needs the-verdict.txt and GPT-2 124M settings."
BOOK_TAG = "book mode"  # after the run's device and dtype in the status


def book_widgets() -> ComposeResult:
    """The switch (off) and its hint (shown while it is on), for the settings pane."""
    yield Checkbox("Book mode", False, id="book", tooltip=BOOK_TOOLTIP)
    yield Static(BOOK_HINT, id="book-hint", classes="hidden")


def with_book_tag(snap):
    """``snap`` with "book mode" after its run's dtype when the run trains in book mode (its Started
    event's config says so, in this app or read from a followed run's log), for the status line."""
    started = snap.started
    if started is None or not (started.config or {}).get("book"):
        return snap
    return replace(snap, started=replace(started, dtype=f"{started.dtype} · {BOOK_TAG}"))


class BookSwitch:
    """Mixin for the Train screen: ``set_book_mode`` disables the settings the book's loop lacks (at the
    book's values) and later restores what the user had typed there."""

    _typed_before_book: dict | None = None  # the user's values while book mode holds the fields

    def set_book_mode(self, on: bool) -> None:
        """Book mode on: remember the conflicting settings, show the book's, disable them; off: the
        user's come back, editable. Idempotent, so a repeated call never forgets what was typed."""
        if on == (self._typed_before_book is not None):
            return
        inputs = {fid: self.query_one(f"#{fid}", Input) for fid in BOOK_INPUTS}
        boxes = {fid: self.query_one(f"#{fid}", Checkbox) for fid in BOOK_CHECKBOXES}
        dtype = self.query_one("#dtype", Select)
        if on:
            self._typed_before_book = {"inputs": {fid: w.value for fid, w in inputs.items()},
                                       "boxes": {fid: w.value for fid, w in boxes.items()}, "dtype": dtype.value}
            for fid, widget in inputs.items():
                widget.value = BOOK_INPUTS[fid]
            for fid, box in boxes.items():
                box.value = BOOK_CHECKBOXES[fid]
            dtype.value = BOOK_DTYPE
        else:
            typed, self._typed_before_book = self._typed_before_book, None
            for fid, widget in inputs.items():
                widget.value = typed["inputs"][fid]
            for fid, box in boxes.items():
                box.value = typed["boxes"][fid]
            dtype.value = typed["dtype"]
        for widget in (*inputs.values(), *boxes.values(), dtype):
            widget.disabled = on
        self.query_one("#book-hint", Static).set_class(not on, "hidden")

    @property
    def book_mode(self) -> bool:
        return self.query_one("#book", Checkbox).value
