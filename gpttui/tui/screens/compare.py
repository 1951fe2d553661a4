"""Compare screen: two or more runs' loss and perplexity curves overlaid, one colour per run.

A thread worker follows each run's ``events.jsonl`` (:class:`gpttui.core.runs.EventFollower`: only the
new bytes, a few times a second) into a :class:`gpttui.core.history.RunHistory` and posts what changed;
the screen only draws. It stops following when every run has ended, or when the screen closes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.columns import Columns
from rich.console import Group
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, Static
from textual.worker import get_current_worker

from gpttui.core.history import RunHistory, Series
from gpttui.core.runs import LIVE_STATES, EventFollower, RunStatus, run_status
from gpttui.core.smooth import DEFAULT_EMA_WEIGHT
from gpttui.tui.widgets import MetricChart

MAX_RUNS = 8  # one colour each; runs beyond are listed as not drawn
# Tableau's categorical palette: tells eight curves apart on light and dark backgrounds alike.
RUN_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
               (227, 119, 194), (23, 190, 207))
FOLLOW_SECONDS = 0.3  # how often a live run's log is looked at
STATUS_SECONDS = 2.0  # how often its status.json is (the trainer rewrites it every 2 s)
LEGEND_CHARS = 18  # a label in a chart's legend; the list above the charts has it whole
PICK_HINT = "Pick two or more runs on the Runs screen (mark them, then Compare) to see them side by side."
# chart id -> (title, which series: steps or evals, which value)
CHARTS = {
    "cmp-train-loss": ("train loss (steps)", "steps", "loss"),
    "cmp-val-loss": ("val loss (evals)", "evals", "val_loss"),
    "cmp-train-ppl": ("train ppl (steps)", "steps", "ppl"),
    "cmp-val-ppl": ("val ppl (evals)", "evals", "val_ppl"),
}


@dataclass
class RunCurves:
    """One run as the screen draws it: its label and colour, what it is doing, and its curves."""

    index: int
    run_dir: str
    label: str
    colour: tuple[int, int, int]
    state: str = "unknown"
    note: str = ""  # why it has nothing (or little) to draw
    step: int = 0
    best_val: float | None = None
    steps: Series = field(default_factory=Series)
    evals: Series = field(default_factory=Series)


@dataclass
class CompareUpdate(Message):
    """Runs whose curves or state changed (all of them the first time)."""

    runs: list[RunCurves]
    first: bool = False


def run_labels(names: list[str], run_ids: list[str]) -> list[str]:
    """A label per run: its save name, with its run id's tail where two runs share a name (the whole id
    where even that is shared)."""
    labels = list(names)
    for round_ in (lambda i: f"{names[i]} ({run_ids[i].rsplit('-', 1)[-1]})", lambda i: f"{names[i]} ({run_ids[i]})"):
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        labels = [round_(i) if counts[label] > 1 else label for i, label in enumerate(labels)]
    return labels


def shorten(label: str, n: int = LEGEND_CHARS) -> str:
    return label if len(label) <= n else label[:n - 1] + "…"


class RunSource:
    """One run being followed (in the worker thread): its log read by byte offset into a history."""

    def __init__(self, index: int, run_dir: Path) -> None:
        self.index = index
        self.run_dir = run_dir
        self.follower = EventFollower(run_dir)
        self.history = RunHistory()
        self.status = RunStatus(run_id=run_dir.name, run_dir=str(run_dir), state="unknown")
        self.label = run_dir.name
        self.colour = RUN_COLOURS[index % len(RUN_COLOURS)]
        self._drawn_version = -1

    def read(self) -> bool:
        """Reads what the log gained; whether the run's curves changed."""
        self.follower.feed(self.history)
        return self.history.version != self._drawn_version

    def refresh_status(self) -> bool:
        """Re-reads the run's status; whether its state changed."""
        before = self.status.state
        try:
            self.status = run_status(self.run_dir)
        except Exception as exc:  # noqa: BLE001 - a status.json with wrong types must not end the following
            self.status = RunStatus(run_id=self.run_dir.name, run_dir=str(self.run_dir), state="unknown",
                                    message=str(exc))
        return self.status.state != before

    @property
    def name(self) -> str:
        started = self.history.started
        return self.status.save_name or (started.save_name if started else None) or self.run_dir.name

    @property
    def live(self) -> bool:
        return self.status.state in LIVE_STATES

    def note(self, snap) -> str:
        if not self.run_dir.is_dir():
            return "folder missing"
        if not self.follower.path.exists():
            return "no events.jsonl: not a run folder, or not started"
        if self.follower.offset and not self.history.version:
            return "log unreadable: no events gpttui knows"
        if not len(snap.steps):
            return "no steps yet"
        if not len(snap.evals):
            return "no evals yet"
        return ""

    def curves(self) -> RunCurves:
        snap = self.history.snapshot()
        self._drawn_version = self.history.version
        steps = snap.steps
        loss = np.asarray(steps.values.get("loss", []), dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            steps.values["ppl"] = np.exp(loss).tolist()  # overflow -> inf, never drawn
        state = self.status.state if self.status.state != "unknown" else snap.status
        best = snap.best_val_loss if snap.best_val_loss is not None else self.status.best_val_loss
        step = snap.last_step.step if snap.last_step else self.status.step
        return RunCurves(self.index, str(self.run_dir), self.label, self.colour, state, self.note(snap), step,
                         best, steps, snap.evals)


def run_entry(run: RunCurves) -> Text:
    """One run in the list above the charts: a swatch of its colour, its label, its state (unless it
    simply finished), step and best val loss, and what is missing (no evals yet)."""
    text = Text()
    text.append("■ ", style=f"rgb({run.colour[0]},{run.colour[1]},{run.colour[2]})")
    text.append(run.label, style="bold")
    details = [] if run.state == "finished" else [run.state]
    details.append(f"step {run.step}")
    if run.best_val is not None and math.isfinite(run.best_val):
        details.append(f"val {run.best_val:.3f}")
    if run.note:
        details.append(run.note)
    text.append(" " + " · ".join(details), style="dim")
    return text


def without_curves(runs: list[RunCurves]) -> Text | None:
    """One line for the runs with nothing to draw (an empty or damaged folder), first in the list so a
    short terminal still shows it."""
    empty = [run for run in runs if not len(run.steps) and not len(run.evals)]
    if not empty:
        return None
    text = Text("Nothing to draw for ", style="red")
    for i, run in enumerate(empty):
        text.append(", " if i else "")
        text.append(run.label, style="bold red")
        text.append(f" ({run.note or run.state})", style="red")
    return text


class CompareScreen(Screen):
    """Loss and perplexity of the given runs, overlaid; EMA, log y and the x axis are one key each."""

    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("x,ctrl+t", "toggle_x", "x: step/tokens"),
        Binding("e", "toggle_ema", "EMA"),
        Binding("l", "toggle_log", "log y"),
        Binding("p", "toggle_ppl", "loss/perplexity"),
        Binding("escape,q", "close", "Close"),
    ]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = list(dict.fromkeys(Path(d) for d in run_dirs))  # a run marked twice is drawn once
        self.x_axis = "step"
        self.smoothing = 0.0
        self.log_y = False
        self.runs: dict[int, RunCurves] = {}
        self.loaded = False
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("Reading the runs' logs…", style="dim"), id="cmp-runs")
        with Grid(id="cmp-charts"):
            for chart_id, (title, _, _) in CHARTS.items():
                kind = "cmp-ppl" if chart_id.endswith("ppl") else "cmp-loss"
                yield MetricChart(title, id=chart_id, classes=kind, legend=True)
        yield Footer(compact=True)  # at 80 columns: the screen's keys, the app's F-keys and Quit

    def on_mount(self) -> None:
        self.sub_title = f"Compare {len(self.run_dirs)} run{'s' if len(self.run_dirs) != 1 else ''}"
        self.follower = self.follow(self.run_dirs[:MAX_RUNS])  # ends when every run has, or at close

    def on_unmount(self) -> None:
        self._stop.set()

    # -- following the runs (worker thread)
    @work(thread=True, exclusive=True, group="compare", exit_on_error=False)
    def follow(self, run_dirs: list[Path]) -> None:
        worker = get_current_worker()
        sources = [RunSource(i, d) for i, d in enumerate(run_dirs)]
        for source in sources:  # a 200,000-step log takes a moment: closing meanwhile ends it here
            if self._stop.is_set() or worker.is_cancelled:
                return
            source.refresh_status()
            source.read()
        for source, label in zip(sources, run_labels([s.name for s in sources], [d.name for d in run_dirs])):
            source.label = label
        self.post_message(CompareUpdate([s.curves() for s in sources], first=True))
        next_status = time.monotonic() + STATUS_SECONDS
        while any(s.live for s in sources):
            if self._stop.wait(FOLLOW_SECONDS) or worker.is_cancelled:
                return
            check_status = time.monotonic() >= next_status
            if check_status:
                next_status = time.monotonic() + STATUS_SECONDS
            changed = [s for s in sources if s.read() | (check_status and s.refresh_status())]
            if changed:
                self.post_message(CompareUpdate([s.curves() for s in changed]))
        changed = [s for s in sources if s.read()]  # what came between the last read and the final state
        if changed:
            self.post_message(CompareUpdate([s.curves() for s in changed]))

    def on_compare_update(self, message: CompareUpdate) -> None:
        for run in message.runs:
            self.runs[run.index] = run
        self.loaded = True
        self.redraw()
        empty = [f"{run.label}: {run.note or run.state}" for run in message.runs
                 if message.first and not len(run.steps) and not len(run.evals)]
        if empty:
            self.notify("\n".join(empty), title="Nothing to draw for", severity="warning", timeout=8)

    # -- drawing
    def redraw(self) -> None:
        runs = [self.runs[i] for i in sorted(self.runs)]
        self.query_one("#cmp-runs", Static).update(self.runs_text(runs))
        tokens = self.x_axis == "tokens"
        xlabel = "tokens seen" if tokens else "step"
        for chart_id, (_, which, key) in CHARTS.items():
            series = []
            for run in runs:
                data: Series = getattr(run, which)
                xs = data.tokens if tokens else data.step
                series.append((shorten(run.label), xs, data.values.get(key, []), run.colour))
            chart = self.query_one(f"#{chart_id}", MetricChart)
            chart.set_series(series, xlabel)
            chart.set_view(smoothing=self.smoothing, log_y=self.log_y)

    def runs_text(self, runs: list[RunCurves]) -> Group:
        """The list above the charts: each run in its colour, with its state, step and best val loss,
        and what is wrong when it has nothing to draw."""
        problems = without_curves(runs)
        lines: list = [problems] if problems else []
        entries = [run_entry(run) for run in runs if len(run.steps) or len(run.evals)]
        if entries:
            lines.append(Columns(entries, padding=(0, 3)))
        extra = len(self.run_dirs) - MAX_RUNS
        if extra > 0:
            names = ", ".join(d.name for d in self.run_dirs[MAX_RUNS:])
            lines.append(Text(f"Not drawn (at most {MAX_RUNS} runs, one colour each): {names}", style="yellow"))
        if len(self.run_dirs) < 2:
            lines.append(Text(PICK_HINT, style="italic"))
        return Group(*lines)

    # -- keys
    def action_toggle_x(self) -> None:
        self.x_axis = "tokens" if self.x_axis == "step" else "step"
        self.redraw()

    def action_toggle_ema(self) -> None:
        self.smoothing = 0.0 if self.smoothing else DEFAULT_EMA_WEIGHT
        self.redraw()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self.redraw()

    def on_resize(self) -> None:
        self.refresh_bindings()  # "p" means something only when one row of charts shows

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        if action == "toggle_ppl" and not self.has_class("-short"):
            return None
        return True

    def action_toggle_ppl(self) -> None:
        """On a short terminal one row of charts shows: loss or perplexity."""
        self.toggle_class("-show-ppl")

    def action_close(self) -> None:
        self._stop.set()
        self.dismiss()


__all__ = ["CompareScreen", "CompareUpdate", "RunCurves", "run_labels", "MAX_RUNS", "RUN_COLOURS"]
