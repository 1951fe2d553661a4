"""Runs screen: every run of this gpttui home (in this app, in the background, or from `gpttui train` in
any terminal), live first, re-listed every few seconds off the UI thread. Attach to one (the Train
screen then monitors it), steer a live one, or compare the marked ones."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static
from textual.worker import get_current_worker

from gpttui.core.runs import RunStatus, list_runs, send_command
from gpttui.core.units import format_duration

RELIST_SECONDS = 2.0
COLUMNS = (("mark", " "), ("name", "name"), ("state", "state"), ("step", "step/total"), ("best", "best val"),
           ("device", "device"), ("age", "age"), ("checkpoint", "last checkpoint"), ("run", "run id"))
STATE_STYLE = {"running": "green", "paused": "yellow", "starting": "yellow", "stopping": "yellow",
               "failed": "red", "crashed": "bold red", "finished": "cyan", "stopped": "cyan"}
EMPTY = ("No runs yet. Start one on the Train screen (F3), in this app or in the background, or from a "
         "terminal with `gpttui train --detach`; it shows here, live.")


@dataclass
class RunsListed(Message):
    """The runs directory, listed by a worker (newest answer wins)."""

    runs: list[RunStatus]
    error: str | None = None


def _age(status: RunStatus, now: float) -> str:
    """How long ago the run started: ``m:ss``, ``h:mm:ss``, or days (``4d``) past two days."""
    try:
        started = datetime.fromisoformat(str(status.started)).timestamp()
    except (TypeError, ValueError):
        return "-"
    seconds = max(0.0, now - started)
    if seconds >= 86400 * 2:
        return f"{seconds / 86400:.0f}d"
    return format_duration(seconds)


def row_cells(status: RunStatus, marked: bool, now: float) -> tuple:
    """One row of the table (rich markup where it helps)."""
    total = f"/{status.total_steps:,}" if status.total_steps else ""
    best = f"{status.best_val_loss:.3f}" if isinstance(status.best_val_loss, (int, float)) else "-"
    style = STATE_STYLE.get(status.state, "white")
    return ("●" if marked else " ", status.save_name or "-", f"[{style}]{status.state}[/]", f"{status.step:,}{total}",
            best, status.device or "-", _age(status, now), status.last_checkpoint or "-", status.run_id)


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "attach", "Attach", priority=True),
        # p/r/s/x and space are named in the line above the table; the footer keeps the app's screen keys.
        Binding("p", "command('pause')", "Pause", show=False),
        Binding("r", "command('resume')", "Resume", show=False),
        Binding("s", "command('save')", "Save now", show=False),
        Binding("x", "command('stop')", "Stop", show=False),
        Binding("space", "mark", "Mark", show=False),
        Binding("c", "compare", "Compare", tooltip="the marked runs overlaid"),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Listing the runs…", id="runs-info")
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)  # at 80 columns: the screen's keys, the app's F-keys and Quit

    def on_mount(self) -> None:
        self.runs: dict[str, RunStatus] = {}
        self.marked: set[str] = set()
        self.listed = False  # an answer arrived
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.refresh_runs()
        self.set_interval(RELIST_SECONDS, self._tick)

    def on_screen_resume(self) -> None:
        self.app.refresh_header()
        self.refresh_runs()

    def _tick(self) -> None:
        if self.is_current:  # nobody looks at it otherwise
            self.refresh_runs()

    @work(thread=True, exclusive=True, group="list-runs", exit_on_error=False)
    def refresh_runs(self) -> None:
        """List every run (status.json of each, a pid probe) in a thread; the answer is a RunsListed."""
        try:
            message = RunsListed(list_runs())
        except OSError as exc:
            message = RunsListed([], f"Cannot list the runs: {exc}")
        if not get_current_worker().is_cancelled:
            self.post_message(message)

    def on_runs_listed(self, message: RunsListed) -> None:
        self.listed = True
        self.runs = {r.run_id: r for r in message.runs}
        self.marked &= set(self.runs)
        self._fill(message.runs)
        info = self.query_one("#runs-info", Static)
        if message.error:
            info.update(f"[red]✗ {message.error}[/red]")
        elif not message.runs:
            info.update(EMPTY)
        else:
            live = sum(r.live for r in message.runs)
            count = f"{len(message.runs)} run{'s' if len(message.runs) != 1 else ''}"
            info.update(f"{count}, {live} live. Enter: attach (the Train screen monitors it) · "
                        "p/r/s/x: pause/resume/save now/stop a live run · space: mark · c: compare the marked")

    def _fill(self, runs: list[RunStatus]) -> None:
        """Update the rows in place when the order holds; else rebuild them, the cursor kept on its run."""
        table = self.query_one(DataTable)
        now = time.time()
        keys = [r.run_id for r in runs]
        current = [key.value for key in table.rows]
        if keys == current:
            for status in runs:
                for (column, _), value in zip(COLUMNS, row_cells(status, status.run_id in self.marked, now)):
                    table.update_cell(status.run_id, column, value)
            return
        highlighted = self.highlighted_run()
        table.clear()
        for status in runs:
            table.add_row(*row_cells(status, status.run_id in self.marked, now), key=status.run_id)
        if highlighted in keys:
            table.move_cursor(row=keys.index(highlighted))

    def highlighted_run(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - no row under the cursor
            return None

    def _highlighted_status(self) -> RunStatus | None:
        run_id = self.highlighted_run()
        return self.runs.get(run_id) if run_id else None

    # -- actions
    def action_attach(self) -> None:
        status = self._highlighted_status()
        if status is None:
            self.app.notify(EMPTY if not self.runs else "Highlight a run first.", severity="warning")
            return
        own = self.app.state.session
        if own.running and own.run_dir is not None and own.run_dir.name != status.run_id:
            self.app.notify("The run in this app keeps training; the Train screen now shows "
                            f"{status.run_id}. Attach to the in-app run here to see it again.")
        self.app.state.follow(self.app, Path(status.run_dir), status.save_name or "")
        self.app.switch_mode("train")

    def action_command(self, command: str) -> None:
        status = self._highlighted_status()
        if status is None:
            return
        if not status.live:
            self.app.notify(f"Run {status.run_id} is {status.state}: nothing to {command}.", severity="warning")
            return
        try:
            send_command(status.run_dir, command)
        except OSError as exc:
            self.app.notify(f"Cannot reach run {status.run_id}: {exc}", severity="error")
            return
        done = {"pause": "pauses", "resume": "resumes", "save": "saves", "stop": "stops and saves"}[command]
        self.app.notify(f"Run {status.run_id} {done} after its current step.")
        self.refresh_runs()

    def action_mark(self) -> None:
        run_id = self.highlighted_run()
        if run_id is None:
            return
        self.marked ^= {run_id}
        self.query_one(DataTable).update_cell(run_id, "mark", "●" if run_id in self.marked else " ")

    def action_compare(self) -> None:
        marked = [run_id for run_id in self.runs if run_id in self.marked]
        if len(marked) < 2:
            self.app.notify("Mark two or more runs (space), then compare them (c).", severity="warning")
            return
        from gpttui.tui.screens.compare import CompareScreen

        self.app.push_screen(CompareScreen([Path(self.runs[r].run_dir) for r in marked]))
