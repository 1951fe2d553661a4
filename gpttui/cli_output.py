"""How the command line prints: lines that stop quietly once the terminal is gone, training events as the
book's loop prints them (or as JSON lines), and a one-line progress bar."""

from __future__ import annotations

import json
import sys
import time

from gpttui.core.printable import escape_controls
from gpttui.core.units import format_bytes, format_duration

EXIT_ERROR = 2  # bad input: the message says what to change


class Out:
    """Writes to stdout, and stops writing (without failing the run) once the terminal is gone,
    e.g. after the SSH link closed."""

    def __init__(self) -> None:
        self.alive = True

    def __call__(self, text: str = "", err: bool = False) -> None:
        if not self.alive:
            return
        try:
            stream = sys.stderr if err else sys.stdout
            stream.write(text + "\n")
            stream.flush()
        except (OSError, ValueError):
            self.alive = False


def _speed(step) -> str:
    """What follows the book's line: tokens/s, MFU and peak memory when known, the ETA."""
    parts = [f"{step.tokens_per_sec:,.0f} tok/s"]
    if step.mfu is not None:
        parts.append(f"MFU {step.mfu:.0%}")
    if step.peak_memory is not None:
        parts.append(f"peak {format_bytes(step.peak_memory)}")
    parts.append(f"ETA {format_duration(step.eta)}")
    return ", " + ", ".join(parts)


class EventPrinter:
    """Prints training events as the book's loop does (one line per evaluation), or as JSON lines.
    ``memory_plan`` (the preflight's :class:`~gpttui.core.memory.MemoryPlan`) is printed when the run starts."""

    def __init__(self, out: Out, as_json: bool, memory_plan=None) -> None:
        self.out = out
        self.as_json = as_json
        self.memory_plan = memory_plan
        self.last_step = None
        self.book = False  # book mode: the book's lines exactly, nothing appended
        self.book_check = None  # the book's own run: each evaluation compared with its printed table

    def __call__(self, event) -> None:
        from gpttui.core import events as ev

        out = self.out
        if isinstance(event, ev.Started):
            self._print_memory_plan()
        if self.as_json:
            out(json.dumps(ev.event_record(event)))
        elif isinstance(event, ev.Started):
            resumed = f", resumed from {event.resumed_from} at step {event.start_step}" if event.resumed_from else ""
            where = f"{event.processes} processes (DDP; rank 0 on {event.device})" if event.processes > 1 else event.device
            out(f"Training {event.n_params:,} parameters on {where} ({event.dtype}){resumed}: "
                f"{event.total_steps:,} steps, {event.tokens_per_step:,} tokens/step, saving as "
                f"{event.save_name!r}. Run: {event.run_dir}")
            for note in event.notes:
                out(f"note: {note}", err=True)
            self._start_book(event)
        elif isinstance(event, ev.StepEvent):
            self.last_step = event
            if event.compile_seconds is not None:
                out(f"Compiled in {event.compile_seconds:.1f} s (the first step; not counted in tok/s or the ETA).",
                    err=True)
        elif isinstance(event, ev.EvalEvent):
            from gpttui.core.book import book_line

            last = self.last_step
            extra = _speed(last) if last and not self.book else ""
            out(book_line(event.epoch, event.step, event.train_loss, event.val_loss) + extra)
            if self.book_check is not None:
                self.book_check.add(event.step, event.train_loss, event.val_loss)
        elif isinstance(event, ev.SampleEvent):  # the book's line, control characters shown as symbols
            out(escape_controls(event.text.replace("\n", " ")))
        elif isinstance(event, ev.CheckpointEvent):
            out(f"Saved checkpoint {event.name!r} at step {event.step} -> {event.path}")
        elif isinstance(event, ev.StateEvent):
            out("Paused." if event.paused else "Resumed.")
        elif isinstance(event, ev.FinishedEvent):
            best = f", best val loss {event.best_val_loss:.3f}" if event.best_val_loss is not None else ""
            out(f"Finished ({event.reason}) after step {event.step} in {format_duration(event.elapsed)}, "
                f"{event.tokens_seen:,} tokens seen{best}.")
            if self.book_check is not None:
                out(self.book_check.summary())
        elif isinstance(event, ev.FailedEvent):
            last = f" Last checkpoint: {event.last_checkpoint}." if event.last_checkpoint else ""
            out(f"error: {event.message}{last}", err=True)

    def _print_memory_plan(self) -> None:
        """The plan's one line on stderr, in every mode: stdout stays the run's own lines (book mode's are the
        book's; --json's are its events). Printed as the run starts, so an error before it stays one line; once
        (a resumed run has no plan here: the trainer makes its own)."""
        if self.memory_plan is not None:
            self.out(self.memory_plan.describe(), err=True)
            self.memory_plan = None

    def _start_book(self, event) -> None:
        """Book mode prints the book's lines; on the book's own run it also checks them against the book."""
        from gpttui.core.book import BookCheck, book_run_differences

        self.book = bool(event.config.get("book"))
        if not self.book:
            return
        differences = book_run_differences(event.config, event.model_config, event.dataset)
        if not differences and not event.resumed_from:
            self.book_check = BookCheck(event.device)
            self.out("Book mode on the book's text and settings: each evaluation line is checked against the "
                     "book's table.")
        else:
            self.out(f"Book mode: the book's loop; the book's table needs its run ({'; '.join(differences[:3])}"
                     f"{'; ...' if len(differences) > 3 else ''}).", err=True)


class ProgressBar:
    """``bar(done, total)``: one line on stderr when it is a terminal, redrawn at most 10 times a second;
    :meth:`end` ends the line (before other output)."""

    def __init__(self, out: Out) -> None:
        self.out = out
        self.tty = sys.stderr.isatty()
        self.shown = False
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.tty or (done < total and now - self.last < 0.1):
            return
        self.last = now
        frac = min(done / total, 1.0) if total else 0.0
        filled = int(30 * frac)
        try:
            sys.stderr.write(f"\r  [{'#' * filled}{'.' * (30 - filled)}] {100 * frac:5.1f}%  "
                             f"{format_bytes(done)} / {format_bytes(total)}   ")
            sys.stderr.flush()
            self.shown = True
        except (OSError, ValueError):
            pass

    def end(self) -> None:
        if self.shown:
            self.out("", err=True)
            self.shown = False
