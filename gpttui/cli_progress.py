"""Tokenizing a corpus on the command line: progress, Ctrl+C, the summary; and `gpttui data stats` with its
per-source table.

A corpus of gigabytes takes minutes to tokenize; a silent terminal in the meantime looks hung. On a terminal
a rich progress bar on stderr (it disappears when done); in a log (not a terminal: `nohup`, CI, a detached
run's train.log) one plain line every ~10 s or 10 %. Either way one summary line at the end. Ctrl+C (or
SIGTERM) while tokenizing sets the cancel event, so the tokenizer stops between shards and keeps the ones
done; the command then prints the :class:`~gpttui.core.corpus_types.Cancelled` message and exits 130 (128 +
the signal) without a traceback. A second Ctrl+C stops at once.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gpttui.core.units import format_count, format_duration

EXIT_CANCELLED = 130  # 128 + SIGINT, as shells report a Ctrl+C
PLAIN_INTERVAL = 10.0  # seconds between two plain progress lines
PLAIN_STEP = 0.1  # ... or a line each time another 10 % is done
DRAW_INTERVAL = 0.1  # the bar is redrawn at most ~10 times a second
MAX_SOURCE_ROWS = 20  # inputs listed by `data stats` (--json lists them all)
PHASES = {"reading": "Reading", "tokenizing": "Tokenizing", "done": "Tokenized"}


# --- words ---------------------------------------------------------------------------------------------

def _unit(total: float) -> tuple[float, str]:
    """MB (10^6 bytes, as download tools count) from 1 MB up to 10 GB; KB below (the book's story is 20 KB),
    GB above (a 50 GB corpus reads "12.3/51.2 GB")."""
    return (1e9, "GB") if total >= 1e10 else (1e6, "MB") if total >= 1e6 else (1e3, "KB")


def size_pair(done: float, total: float, sep: str = "/") -> str:
    """``230.1/512.0 MB``; ``230.1 MB`` when the total is unknown (0)."""
    div, unit = _unit(total or done)
    if not total:
        return f"{done / div:.1f} {unit}"
    return f"{done / div:.1f}{sep}{total / div:.1f} {unit}"


def rate_text(bytes_per_s: float) -> str:
    div, unit = _unit(bytes_per_s)
    return f"{bytes_per_s / div:.1f} {unit}/s"


def plain_line(report) -> str:
    """``Tokenizing: 45% (230.1/512.0 MB), 12.4 MB/s, 118.2M tokens, ETA 0:23``; without the percent and
    the ETA when the total is unknown (a dataset streamed from the Hub)."""
    phase = PHASES.get(report.phase, report.phase.capitalize())
    parts = [rate_text(report.rate), f"{format_count(report.tokens)} tokens"]
    if report.fraction is None:
        head = f"{phase}: {size_pair(report.done_bytes, 0)}"
    else:
        head = f"{phase}: {report.fraction:.0%} ({size_pair(report.done_bytes, report.total_bytes)})"
        if report.eta is not None:
            parts.append(f"ETA {format_duration(report.eta)}")
    return ", ".join([head] + parts)


def bar_fields(report) -> str:
    """What follows the bar: ``230.1/512.0 MB · 12.4 MB/s · 118.2M tokens · ETA 0:23``."""
    parts = [size_pair(report.done_bytes, report.total_bytes), rate_text(report.rate),
             f"{format_count(report.tokens)} tokens"]
    if report.eta is not None:
        parts.append(f"ETA {format_duration(report.eta)}")
    return " · ".join(parts)


def summary_line(prepared, seconds: float, last=None) -> str:
    """``Tokenized 512.0 MB into 118,234,567 tokens in 41.2 s (12.4 MB/s)``, or ``Tokens from the cache
    (0.05 s)`` when nothing was tokenized."""
    tokenized = getattr(prepared, "tokenized", None)
    if getattr(tokenized, "from_cache", False):
        return f"Tokens from the cache ({seconds:.2f} s)"
    tokens = prepared.stats.tokens
    size = (last.total_bytes or last.done_bytes) if last is not None else 0
    if not size:
        return f"Tokenized into {tokens:,} tokens in {seconds:.1f} s"
    rate = rate_text(size / seconds) if seconds > 0 else "?"
    return f"Tokenized {size_pair(size, 0)} into {tokens:,} tokens in {seconds:.1f} s ({rate})"


def source_label(source: str) -> str:
    """The corpus as the bar names it: ``corpus/`` for a folder, a file's name, a built-in's name."""
    if not source or source.startswith("builtin:"):
        return source or "corpus"
    path = Path(source).expanduser()
    try:
        return path.name + "/" if path.is_dir() else path.name
    except OSError:
        return path.name or source


# --- the reporter --------------------------------------------------------------------------------------

class TokenizeReporter:
    """The ``progress`` callback and the ``cancel`` event for ``prepare_data``, as a context manager that
    catches Ctrl+C (and SIGTERM) meanwhile. The callback may come from any thread: it only draws."""

    def __init__(self, out, label: str = "corpus", tty: bool | None = None, console=None) -> None:
        self.out = out
        self.label = label
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.console = console  # a rich Console (tests); default: one on stderr
        self.cancel = threading.Event()
        self.signum: int | None = None  # the signal that cancelled
        self.last = None  # the newest report
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._next_time = self._started + PLAIN_INTERVAL
        self._next_fraction = PLAIN_STEP
        self._drawn = 0.0
        self._bar: Any = None
        self._task = None
        self._previous: dict[int, Any] = {}

    # -- the callback
    def __call__(self, report) -> None:
        with self._lock:
            self.last = report
            if report.phase == "done":
                return  # the summary says it
            if self.tty:
                self._draw(report)
            else:
                self._plain(report)

    def _plain(self, report) -> None:
        now = time.monotonic()
        fraction = report.fraction
        if fraction == 1.0:
            return  # all done: the summary line follows
        if now < self._next_time and (fraction is None or fraction < self._next_fraction):
            return
        self._next_time = now + PLAIN_INTERVAL
        if fraction is not None:
            self._next_fraction = (math.floor(fraction / PLAIN_STEP + 1e-9) + 1) * PLAIN_STEP
        self.out(plain_line(report), err=True)

    def _draw(self, report) -> None:
        now = time.monotonic()
        if self._bar is not None and now - self._drawn < DRAW_INTERVAL:
            return
        self._drawn = now
        if self._bar is None:
            self._start_bar()
        phase = PHASES.get(report.phase, report.phase.capitalize())
        self._bar.update(self._task, description=f"{phase} {self.label}", completed=report.done_bytes,
                         total=report.total_bytes or None, info=bar_fields(report))

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        console = self.console or Console(file=sys.stderr)
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                             TextColumn("{task.fields[info]}"), console=console, transient=True,
                             redirect_stdout=False, redirect_stderr=False)
        self._task = self._bar.add_task(f"Tokenizing {self.label}", total=None, info="")
        self._bar.start()

    def _stop_bar(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None

    def finish(self, prepared) -> None:
        """The bar goes; one summary line stays."""
        self._stop_bar()
        self.out(summary_line(prepared, time.monotonic() - self._started, self.last), err=True)

    # -- Ctrl+C
    def _on_signal(self, signum, frame) -> None:
        if self.cancel.is_set():  # a second Ctrl+C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        self.cancel.set()
        try:  # the handler may land while a progress line is being written
            self.out(f"\n{signal.Signals(signum).name}: cancelling the tokenizing (Ctrl+C again to stop at "
                     "once)...", err=True)
        except RuntimeError:  # a reentrant write: the Cancelled message follows anyway
            pass

    def __enter__(self) -> "TokenizeReporter":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(sig)
                if sig == signal.SIGTERM and previous == signal.SIG_IGN:
                    continue
                self._previous[sig] = previous
                signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._stop_bar()
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        if exc is not None and self.signum is not None:
            exc.exit_code = 128 + self.signum  # read by cancelled_exit
        if kind is None and self.cancel.is_set():
            raise KeyboardInterrupt  # Ctrl+C after the tokenizing ended: the command stops all the same


def prepare_with_progress(settings, tokenizer, out, report: bool = True, **kwargs):
    """``prepare_data`` with the progress shown and Ctrl+C caught; raises ``Cancelled`` when cancelled
    (give it to :func:`cancelled_exit`). ``report`` False (a DDP rank but 0): quiet, signals as they were."""
    from gpttui.core.data import prepare_data

    if not report:
        return prepare_data(settings, tokenizer, **kwargs)
    with TokenizeReporter(out, source_label(settings.source)) as reporter:
        prepared = prepare_data(settings, tokenizer, progress=reporter, cancel=reporter.cancel, **kwargs)
        reporter.finish(prepared)
    return prepared


def cancelled_exit(exc: Exception, out) -> int:
    """The Cancelled message on stderr, and the exit status: 128 + the signal (130 for Ctrl+C)."""
    out(str(exc), err=True)
    return getattr(exc, "exit_code", EXIT_CANCELLED)


# --- `gpttui data stats` -------------------------------------------------------------------------------

def data_stats(args, settings, out) -> int:
    """`gpttui data stats`: the numbers, the per-source table, the checks (or all of it as one JSON object);
    exit 1 when the checks fail, 130 when the tokenizing was cancelled."""
    import json

    from gpttui.core.corpus_types import Cancelled
    from gpttui.core.tokenizer import get_tokenizer

    tokenizer = get_tokenizer(settings.tokenizer)
    try:
        prepared = prepare_with_progress(settings, tokenizer, out, strict=False)
    except Cancelled as exc:
        return cancelled_exit(exc, out)
    s, sources = prepared.stats, prepared.sources
    if args.json:
        out(json.dumps({"source": prepared.corpus.source, "settings": settings.__dict__, **s.to_dict(),
                        "sources": [x.to_dict() for x in sources]}))
        return 0 if s.ok else 1
    out(f"Source       {prepared.corpus.label}  ({prepared.corpus.source})")
    out(f"Tokenizer    {tokenizer.name}  ({getattr(tokenizer, 'source', '')})")
    out(f"Characters   {s.characters:,}   (train {s.train_characters:,} / val {s.val_characters:,})")
    out(f"Tokens       {s.tokens:,}   (train {s.train_tokens:,} / val {s.val_tokens:,})")
    out(f"Windows      train {s.train_windows:,} / val {s.val_windows:,}   "
        f"(context {settings.context_length}, stride {settings.effective_stride})")
    out(f"Batches      train {s.train_batches:,} / val {s.val_batches:,} per epoch   (batch {settings.batch_size})")
    out(f"Tokens/epoch {s.tokens_per_epoch:,}")
    for line in source_table_lines(sources) if wants_source_table(sources) else ():
        out(line)
    for w in s.warnings:
        out(f"warning: {w}")
    for p in s.problems:
        out(f"error: {p}")
    return 0 if s.ok else 1


# -- its per-source table

def sources_ordered(sources: list) -> list:
    """Skipped inputs first (they must not hide below a long list), then the others in reading order."""
    return [s for s in sources if s.skipped] + [s for s in sources if not s.skipped]


def wants_source_table(sources: list) -> bool:
    """A table only says more than the totals when there are several inputs, or one has something to say."""
    return len(sources) > 1 or any(s.notes() for s in sources)


def source_notes(source) -> list[str]:
    """What went wrong with an input, and "no text" for one that gave no document (an empty file: left out,
    not an error, but worth seeing beside the others)."""
    notes = source.notes()
    return notes + ["no text"] if not notes and not source.skipped and not source.documents else notes


def _clip_left(name: str, width: int) -> str:
    """A long path keeps its end, the file's name: ``…/deep/folder/file.txt``."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def source_table_lines(sources: list, limit: int = MAX_SOURCE_ROWS) -> list[str]:
    """The per-source table of ``data stats``: name, kind, documents, characters, tokens, notes; at most
    ``limit`` rows, then how many more (and how many of those were skipped)."""
    rows = sources_ordered(sources)
    shown, hidden = rows[:limit], rows[limit:]
    width = min(40, max([len("INPUT")] + [len(s.name) for s in shown]))
    lines = [f"Inputs: {len(sources):,}" + (f" ({sum(1 for s in sources if s.skipped):,} skipped)"
                                            if any(s.skipped for s in sources) else ""),
             f"  {'INPUT':{width}} {'KIND':8} {'DOCUMENTS':>10} {'CHARACTERS':>14} {'TOKENS':>13}  NOTES"]
    for s in shown:
        counts = ("-", "-", "-") if s.skipped else (f"{s.documents:,}", f"{s.characters:,}", f"{s.tokens:,}")
        lines.append(f"  {_clip_left(s.name, width):{width}} {s.kind:8} {counts[0]:>10} {counts[1]:>14} "
                     f"{counts[2]:>13}  {'; '.join(source_notes(s))}".rstrip())
    if hidden:
        skipped = sum(1 for s in hidden if s.skipped)
        lines.append(f"  … and {len(hidden):,} more inputs" + (f" ({skipped:,} skipped)" if skipped else "")
                     + " (--json lists them all)")
    return lines


__all__ = ["EXIT_CANCELLED", "TokenizeReporter", "bar_fields", "cancelled_exit", "data_stats", "plain_line",
           "prepare_with_progress", "rate_text", "size_pair", "source_label", "source_notes", "source_table_lines", "sources_ordered",
           "summary_line", "wants_source_table"]
