"""Checkpoints screen: the manager of saved models.

A table of every checkpoint (broken ones with their error), a details pane (metadata and, for a
checkpoint trained here, its run's loss curve), and the actions: generate with it, continue training
it, rename, delete, export to the book's ``model.pth``, and import (the book's ``.pth``, a Hugging Face
GPT-2 folder, GPT-2 downloaded by size, the GPT-2 tokenizer files). Imports and exports run in a thread
worker (group ``"import"``) with a progress bar and a Cancel button; every failure is a message on the
screen, never a crash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from rich.markup import escape
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Label, ProgressBar, Static
from textual.widgets.data_table import CellDoesNotExist
from textual.worker import Worker, get_current_worker

from gpttui.core import checkpoints
from gpttui.core.errors import GPTTUIError
from gpttui.core.units import format_bytes as human_bytes
from gpttui.tui import ckpt_jobs, ckpt_table
from gpttui.tui.listing import ListsCheckpoints
from gpttui.tui.dialogs import ConfirmDialog, ExportDialog, ImportDialog, ImportRequest, RenameDialog
from gpttui.tui.messages import (CheckpointDeleted, CheckpointsListed, JobDone, JobFailed, JobProgress, JobStage,
                                 LossCurve)
from gpttui.tui.render import details_renderable, shorten
from gpttui.tui.widgets import MetricChart

JOB_GROUP = "import"  # imports and exports: one at a time, in a thread
DETAILS_GROUP = "details"  # reading a run's loss curve
DELETE_GROUP = "delete-checkpoint"


class CheckpointsScreen(ListsCheckpoints, Screen):
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        # The buttons say their keys ("Generate g"): the footer keeps the app's screen keys instead.
        Binding("g", "generate", "Generate", show=False),
        Binding("t", "train", "Continue", show=False),
        Binding("r", "rename", "Rename", show=False),
        Binding("d", "delete", "Delete", show=False),
        Binding("delete", "delete", "Delete", show=False),
        Binding("e", "export", "Export", show=False),
        Binding("i", "import('book')", "Import", show=False),
        Binding("h", "import('hf')", "Import HF folder", show=False),
        Binding("w", "import('size')", "Download GPT-2", show=False),
        Binding("k", "import('tokenizer')", "Tokenizer files", show=False),
        Binding("ctrl+r", "refresh", "Refresh", show=False),
        Binding("escape", "close_message", "Close message", show=False),
        Binding("c", "copy_message", "Copy message", show=False),
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
            with Vertical(id="ckpt-message", classes="panel hidden"):
                with Horizontal(id="ckpt-message-bar"):
                    yield Label("", id="ckpt-message-hint")
                    yield Button("Copy c", id="ckpt-message-copy", compact=True)
                    yield Button("Close Esc", id="ckpt-message-close", compact=True)
                with VerticalScroll(id="ckpt-message-scroll"):
                    yield Static("", id="ckpt-message-text")
            with Horizontal(id="ckpt-details", classes="panel"):
                with VerticalScroll(id="ckpt-meta-scroll"):
                    yield Static("", id="ckpt-meta")
                yield MetricChart("loss: green train, red val", id="ckpt-chart")
        yield Footer(compact=True)  # at 80 columns: the screen's keys, the app's F-keys and Quit

    def on_mount(self) -> None:
        self.infos: dict[str, checkpoints.CheckpointInfo] = {}
        self._rows: dict[str, list] = {}  # the table's cells by checkpoint name, as shown
        self._forms: dict[str, ckpt_table.Forms] = {}  # every cell's full and compact form, by name
        self._layout: ckpt_table.Layout | None = None  # the columns shown, fitted to the table's width
        self._broken = False  # some checkpoint is broken: the table may show a Problem column
        self._job_dialog: ImportDialog | None = None  # the import dialog waiting on the running job
        self._message = ""  # the long message shown in the message panel ("" when none)
        self._select: str | None = None  # the row to highlight when the next listing arrives
        self._job: Worker | None = None
        self._job_title = ""
        self._shown: tuple | None = None
        self._saves_seen = self.app.state.checkpoints_version
        self.query_one("#ckpt-details").border_title = "Details"
        self.refresh_table()
        self.set_interval(1.0, self._watch_training)

    def on_screen_resume(self) -> None:
        self.app.refresh_header()
        self.refresh_table()
        self.query_one("#ckpt-table", DataTable).focus()

    def on_unmount(self) -> None:
        if self._job is not None:
            self._job.cancel()

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
        """Re-read the checkpoints folder in a thread; the table follows when the listing arrives,
        keeping (or moving to ``select``) the highlighted row."""
        if select is not None:
            self._select = select  # kept until a listing arrives, even if a newer scan supersedes this one
        self.list_checkpoints()

    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        if message.error:
            self.set_status(message.error, "error")
        infos = message.infos
        self.infos = {i.name: i for i in infos}
        table = self.query_one("#ckpt-table", DataTable)
        keep, self._select = self._select or self.selected, None
        self._update_table(table, infos)
        if infos:
            names = list(self._rows)
            row = names.index(keep) if keep in names else min(max(table.cursor_row, 0), len(names) - 1)
            table.move_cursor(row=row, animate=False)
        self.show_details()

    def _update_table(self, table: DataTable, infos: list[checkpoints.CheckpointInfo]) -> None:
        """Show ``infos`` touching only what changed: rows that came are added (then the table is
        sorted newest first), rows that went are removed, changed cells are updated in place (a run
        saving again changes one row). Rebuilding, which measures every cell of a few hundred rows on
        the UI thread, happens only when the columns change (their fit to the width, or the Problem
        column coming or going)."""
        self._forms = {i.name: ckpt_table.cell_forms(i) for i in infos}
        self._broken = any(not i.ok for i in infos)
        layout = self._fit(table)
        rows = {name: ckpt_table.row(forms, layout) for name, forms in self._forms.items()}
        if layout != self._layout:
            self._fill_table(table, rows, layout)
            return
        for name in set(self._rows) - set(rows):
            table.remove_row(name)
        added = [name for name in rows if name not in self._rows]
        for name in added:
            table.add_row(*rows[name], key=name)
        for name, cells in rows.items():
            if name in self._rows:
                for key, old, new in zip(layout.keys, self._rows[name], cells):
                    if old != new:
                        table.update_cell(name, key, new)
        if added:
            order = {name: i for i, name in enumerate(rows)}  # the listing's: newest first
            table.sort("name", key=lambda name: order[str(name)])
            self._rows = rows
        else:
            self._rows = {name: rows[name] for name in self._rows if name in rows}  # the table's order

    def _fit(self, table: DataTable) -> ckpt_table.Layout:
        """The columns for the table's width now, less a vertical scrollbar's when the rows need one."""
        width = table.scrollable_content_region.width + (table.scrollbar_size_vertical if table.show_vertical_scrollbar
                                                         else 0)
        if width <= 0:  # not laid out yet: the screen's width, less the padding around the table
            width = self.app.size.width - 2
        if len(self._forms) + 1 > table.size.height > 0:
            width -= table.styles.scrollbar_size_vertical
        return ckpt_table.fit(list(self._forms.values()), width, self._broken)

    def _fill_table(self, table: DataTable, rows: dict[str, list], layout: ckpt_table.Layout) -> None:
        keep = self.selected
        table.clear(columns=True)
        for key, label, width in layout.columns:
            table.add_column(label, key=key, width=width)
        for name, cells in rows.items():
            table.add_row(*cells, key=name)
        self._layout, self._rows = layout, rows
        if keep in rows:
            table.move_cursor(row=list(rows).index(keep), animate=False)

    def on_resize(self, event: events.Resize) -> None:
        self.call_after_refresh(self._refit)

    def _refit(self) -> None:
        """After a resize: the columns fitted to the new width (the rows keep their order)."""
        table = self.query_one("#ckpt-table", DataTable)
        if self._layout is None:
            return
        layout = self._fit(table)
        if layout != self._layout:
            order = list(self._rows)
            self._fill_table(table, {n: ckpt_table.row(self._forms[n], layout) for n in order}, layout)

    def _watch_training(self) -> None:
        """Refresh when the running training saved a checkpoint (the app counts its saves)."""
        version = self.app.state.checkpoints_version
        if self.is_current and version != self._saves_seen:
            self._saves_seen = version
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

    # -- status, and the message panel for what does not fit on its line
    def set_status(self, text: str, severity: str = "information", notify: bool = True,
                   title: str | None = None) -> None:
        """One line under the buttons (and a toast). An error of more than one line (a download's, with its
        URLs and what to do offline) is shown whole in the message panel instead, until Esc or the next
        success; the status line then points at it (and the toast has its first line)."""
        colour = {"error": "$error", "warning": "$warning", "success": "$success"}.get(severity)
        mark = {"error": "✗ ", "warning": "! ", "success": "✓ "}.get(severity, "")
        long = severity == "error" and ("\n" in text.strip() or len(text) > 200)
        line = text.strip().splitlines()[0] if long else text
        if long:  # the line says what it is about (its start), the panel says the rest
            head = line if len(line) <= 60 else line[:60].rsplit(" ", 1)[0] + " …"
            body = escape(f"{mark}{title + ': ' if title else ''}{head} (all of it below; Esc closes it)")
        else:
            body = escape(mark + text)
        if severity == "success":
            self.action_close_message()
        self.query_one("#ckpt-status", Static).update(f"[{colour}]{body}[/]" if colour else body)
        if long:
            self.show_message(text.strip(), title or "Error")
        if notify:
            self.app.notify(line, title=title, timeout=10 if severity == "error" else 5,
                            severity="information" if severity == "success" else severity)

    def show_message(self, text: str, title: str) -> None:
        """``text`` whole, wrapped and scrollable (selectable with the mouse), in place of the details pane."""
        self._message = text
        panel = self.query_one("#ckpt-message")
        panel.border_title = title
        self.query_one("#ckpt-message-text", Static).update(f"[$error]{escape(text)}[/]")
        self.query_one("#ckpt-message-hint", Label).update("Select with the mouse, or copy it all:")
        panel.remove_class("hidden")
        self.query_one("#ckpt-details").add_class("hidden")
        self.refresh_bindings()

    @on(Button.Pressed, "#ckpt-message-close")
    def action_close_message(self) -> None:
        if self._message:
            self._message = ""
            self.query_one("#ckpt-status", Static).update("")  # it pointed at the message
            self.query_one("#ckpt-message").add_class("hidden")
            self.query_one("#ckpt-details").remove_class("hidden")
            self.refresh_bindings()
            self.query_one("#ckpt-table", DataTable).focus()

    @on(Button.Pressed, "#ckpt-message-copy")
    def action_copy_message(self) -> None:
        if self._message:
            self.app.copy_to_clipboard(self._message)
            self.app.notify("The message is on the clipboard.", timeout=3)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("close_message", "copy_message"):
            return bool(self._message)  # only while a message is shown (also in the palette)
        return True

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
    def action_train(self) -> None:
        """Continue training the selected checkpoint: the intent goes through the app state; the Train
        screen picks it up when it is shown."""
        info = self._need(ok_only=True)
        if info is None:
            return
        name = info.name
        self.app.state.continue_checkpoint = name
        self.app.switch_mode("train")
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
            if yes:
                self.delete(name)
            else:
                self.set_status(f"Kept {name!r}.", notify=False)

        size = human_bytes(info.size_bytes)
        self.app.push_screen(ConfirmDialog(f"Delete checkpoint {name!r} ({size})? This cannot be undone."),
                             answered)

    @work(thread=True, exclusive=True, group=DELETE_GROUP, exit_on_error=False)
    def delete(self, name: str) -> None:
        """Delete a checkpoint's folder (rmtree) off the UI thread."""
        try:
            checkpoints.delete_checkpoint(name)
        except GPTTUIError as exc:
            self.post_message(CheckpointDeleted(name, str(exc)))
        except OSError as exc:
            self.post_message(CheckpointDeleted(name, f"Could not delete {name!r}: {exc}"))
        else:
            self.post_message(CheckpointDeleted(name))

    def on_checkpoint_deleted(self, message: CheckpointDeleted) -> None:
        name = message.name
        if message.error:
            self.set_status(message.error, "error")
        else:
            if self.app.state.generate_checkpoint == name:
                self.app.state.generate_checkpoint = None
            self.set_status(f"Deleted {name!r}.", "success")
        self.refresh_table()

    @on(Button.Pressed, "#ckpt-export")
    def action_export(self) -> None:
        info = self._need(ok_only=True)
        if info is None:
            return
        name = info.name

        def answered(result: tuple[str, bool, bool] | None) -> None:
            if not result:
                return
            self.start_job(f"Export {name}", ckpt_jobs.export_job(name, *result))

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

        self.app.push_screen(ImportDialog(kind, start=self._start_from_dialog, cancel=self.action_cancel_job))

    def _start_from_dialog(self, request: ImportRequest, dialog: ImportDialog) -> str | None:
        """Start the dialog's import; the dialog waits for its end unless it is a download. Returns why
        it cannot start, or None."""
        if self.job_running:
            return f"{self._job_title} is still running; wait for it or cancel it."
        self.start_import(request)
        self._job_dialog = dialog if request.kind != "size" else None
        return None

    def action_refresh(self) -> None:
        self.refresh_table()
        self.set_status(f"{len(self.infos)} checkpoint(s).", notify=False)

    # -- imports and exports, in a thread
    def start_import(self, request: ImportRequest) -> None:
        """Run an import (book file, HF folder, size download, tokenizer files) in the job thread."""
        self.start_job(*ckpt_jobs.import_job(request))

    @property
    def job_running(self) -> bool:
        return self._job is not None

    def start_job(self, title: str, job: Callable) -> None:
        if self.job_running:
            self.set_status(f"{self._job_title} is still running; wait for it or cancel it.", "warning")
            return
        self._job_title = title
        self.query_one("#ckpt-job").remove_class("hidden")
        self.query_one("#ckpt-job-stage", Label).update(f"{title}…")
        self.query_one("#ckpt-job-progress", ProgressBar).update(total=None, progress=0)
        cancel_button = self.query_one("#ckpt-job-cancel", Button)
        cancel_button.disabled = False
        self.set_status(f"{title}…", notify=False)
        self._job = self.run_job(job)

    @work(thread=True, group=JOB_GROUP, exit_on_error=False)
    def run_job(self, job: Callable) -> None:
        """Run ``job(progress, cancel, stage)``; ``cancel`` is this worker's cancellation, which the
        engine checks (Cancel, or leaving the app, cancels the worker)."""
        cancel = get_current_worker().cancelled_event
        last = [0.0]

        def progress(done: int, total: int) -> None:
            import time

            now = time.monotonic()
            if done >= total or now - last[0] > 0.1:  # at most ten redraws a second
                last[0] = now
                self.post_message(JobProgress(int(done), int(total)))

        def stage(text: str) -> None:
            self.post_message(JobStage(text))

        self.post_message(ckpt_jobs.outcome(job, progress, cancel, stage))

    @on(Button.Pressed, "#ckpt-job-cancel")
    def action_cancel_job(self) -> None:
        self._job_dialog = None  # a dialog cancelling its import closes itself
        if self._job is not None:
            self._job.cancel()
            self.query_one("#ckpt-job-cancel", Button).disabled = True
            self.query_one("#ckpt-job-stage", Label).update("Cancelling…")

    def on_job_stage(self, message: JobStage) -> None:
        if self._job_dialog is not None:
            self._job_dialog.job_stage(message.text)
        if self.job_running:
            self.query_one("#ckpt-job-stage", Label).update(shorten(message.text, 60))
            self.query_one("#ckpt-job-progress", ProgressBar).update(total=None, progress=0)

    def on_job_progress(self, message: JobProgress) -> None:
        if self._job_dialog is not None:
            self._job_dialog.job_progress(message.done, message.total)
        if self.job_running:
            self.query_one("#ckpt-job-progress", ProgressBar).update(total=max(message.total, 1),
                                                                      progress=message.done)

    def _job_over(self) -> ImportDialog | None:
        """The job is over: hide its bar; the import dialog that waited for it (if still open)."""
        self._job = None
        self.query_one("#ckpt-job").add_class("hidden")
        dialog, self._job_dialog = self._job_dialog, None
        return dialog if dialog is not None and dialog.is_attached and dialog.busy else None

    def on_job_done(self, message: JobDone) -> None:
        dialog = self._job_over()
        if dialog is not None:
            dialog.dismiss(None)
        self.refresh_table(select=message.select)
        self.set_status(message.message, "success", title=self._job_title)

    def on_job_failed(self, message: JobFailed) -> None:
        dialog = self._job_over()
        self.refresh_table()
        if dialog is not None and not message.cancelled:  # the form is still open: the error goes beside its field
            dialog.job_failed(message.message)
            self.set_status(f"{self._job_title} failed; the import dialog says why.", "error", notify=False)
            return
        self.set_status(message.message, "warning" if message.cancelled else "error",
                        title=f"{self._job_title} cancelled" if message.cancelled else f"{self._job_title} failed")
