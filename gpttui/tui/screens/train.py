"""Train screen: the model and optimiser form, and the live training monitor."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from rich.markup import escape
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, ProgressBar, Select, Static

from gpttui.core.config import CPU_SHAPES, GPT2_SHAPES, PRESETS, GPTConfig, preset
from gpttui.core.errors import GPTTUIError
from gpttui.core.model import parameter_count
from gpttui.core.tokenizer import get_tokenizer
from gpttui.core.data import PreparedData, prepare_data
from gpttui.core.units import format_count
from gpttui.core.store import default_store
from gpttui.core.smooth import DEFAULT_EMA_WEIGHT
from gpttui.core.runplan import checkpoint_data_settings, dataset_matches, plan_save, prepare_checkpoint_data
from gpttui.core.train import TrainConfig, Trainer
from gpttui.tui.book_switch import BookSwitch, book_widgets, with_book_tag
from gpttui.tui.dialogs import ConfirmDialog, ContinueDialog
from gpttui.tui.hardware import HardwareSection, hardware_widgets
from gpttui.tui.listing import ListsCheckpoints
from gpttui.tui.memory_info import ShowsMemoryPlan
from gpttui.tui.messages import CheckpointsListed
from gpttui.core.printable import split_controls
from gpttui.tui.render import append_printable, context_note, status_text
from gpttui.tui.state import BACKGROUND
from gpttui.tui.widgets import Field, MetricChart, read_field

NEW_MODEL = "__new__"
IDLE_STATUS = "Not started. Pick a dataset (F2), set the model, press F6."
FORM_WIDTH = 36  # the settings pane's columns (gpttui.tcss, #train-form)
OPTIM_FIELDS = [
    # id, label, kind, minimum, tooltip
    ("lr", "Learning rate", "float", 0.0, "peak learning rate (AdamW)"),
    ("min_lr", "Min lr", "optional float", 0.0, "cosine-decay to this after warmup; empty: constant lr"),
    ("warmup_steps", "Warmup steps", "int", 0, "linear warmup"),
    ("weight_decay", "Weight decay", "float", 0.0, None),
    ("grad_clip", "Grad clip", "optional float", 0.0, "max gradient norm; empty: off"),
    ("grad_accum", "Grad accum", "int", 1, "batches per optimizer step"),
    ("epochs", "Epochs", "int", 1, None),
    ("max_steps", "Max steps", "optional int", 1, "stop after this many steps; empty: epochs decide"),
    ("eval_freq", "Eval every", "int", 1, "evaluate every N steps"),
    ("eval_iter", "Eval batches", "int", 1, "batches per evaluation"),
    ("seed", "Seed", "int", 0, None),
]


def no_dataset_message(tokenizer: str) -> str:
    """Why F6 finds no dataset, and the fix: the GPT-2 tokenizer's files, when they are what is missing
    (the Dataset screen cannot tokenize without them), else a pick on the Dataset screen."""
    if tokenizer == "gpt2" and gpt2_files_missing():
        return ("The GPT-2 tokenizer files (encoder.json, vocab.bpe) are missing, so the dataset cannot be "
                "tokenized. F5, then k imports the tokenizer files (from a folder holding them); or pick the "
                "bytes tokenizer on the Dataset screen (F2), which needs no files.")
    return "No dataset is ready: pick one on the Dataset screen (F2), and wait for its statistics."


def gpt2_files_missing() -> bool:
    """True when no source :func:`~gpttui.core.tokenizer.load_gpt2` looks in offline has both files
    (a cheap look at the paths: nothing is read or downloaded on the UI thread)."""
    from gpttui.core import tokenizer as tok

    if tok._cache.get("gpt2") is not None or tok._tiktoken_cached_files() is not None:
        return False
    dirs = [tok.gpt2_data_dir()]
    if os.environ.get(tok.BPE_DIR_ENV):
        dirs.append(Path(os.environ[tok.BPE_DIR_ENV]).expanduser())
    return not any(all((d / name).is_file() for name in tok.GPT2_FILES) for d in dirs)


class TrainScreen(BookSwitch, HardwareSection, ListsCheckpoints, ShowsMemoryPlan, Screen):
    BINDINGS = [
        # F6-F9 are written on the buttons ("Start F6"), so the footer leaves them out and keeps the app's
        # screen keys at 80 columns. check_action allows Start while no run goes on here, and Pause/Stop/Save
        # while one does (the palette follows it).
        Binding("f6", "start", "Start", priority=True, show=False,
                tooltip="Start training with the settings on screen"),
        Binding("f7", "pause", "Pause", priority=True, show=False, tooltip="Pause or resume the run"),
        Binding("f8", "stop", "Stop", priority=True, show=False, tooltip="Stop after this step, then save"),
        Binding("f9", "save", "Save", priority=True, show=False, tooltip="Save a checkpoint after this step"),
        # ctrl+b: the settings pane, as VS Code's sidebar (Input owns ctrl+a/e/d/k/u/w/x/c/v)
        Binding("ctrl+b", "toggle_form", "Show/hide the settings pane", priority=True, show=False),
        Binding("ctrl+t", "toggle_x", "x axis: step / tokens seen", priority=True, show=False),
        Binding("ctrl+f", "toggle_ema", "EMA smoothing of loss and perplexity", priority=True, show=False),
        Binding("ctrl+g", "toggle_log", "log y axis for the loss", priority=True, show=False),
    ]
    WIDE = 100  # at least this many columns: the settings pane comes back after a run (narrower, the
    # final curves and status stay in view; "ctrl+b settings" beside the buttons says how to get it)
    _status_width: int | None = None  # the monitor's columns (_fit_controls): the status lines fit them
    SHORT_HEIGHT = 32  # below this many rows: compact buttons, two charts (loss, perplexity), short samples

    def compose(self) -> ComposeResult:
        d = TrainConfig()
        yield Header()
        with Horizontal(id="train-main"):
            with VerticalScroll(id="train-form", classes="panel"):
                yield Label("Model", classes="section")
                yield Select([("New model", NEW_MODEL)], value=NEW_MODEL, id="resume", allow_blank=False)
                yield Select([(f"{k} — {v}", k) for k, v in PRESETS.items()], value="tiny", id="preset",
                             allow_blank=False)
                yield Field("Layers", 2, id="n_layers", minimum=1)
                yield Field("Heads", 4, id="n_heads", minimum=1)
                yield Field("Width", 128, id="emb_dim", minimum=1)
                yield Field("Context", 128, id="model_context", minimum=1,
                            tooltip="the model's context length; the data's windows follow it unless you set "
                                    "the Dataset screen's")
                yield Field("Dropout", 0.1, id="drop_rate", kind="float", minimum=0.0, maximum=0.99)
                yield Checkbox("qkv bias", False, id="qkv_bias")
                yield Checkbox("tie embeddings", True, id="tie_weights")
                yield Static("", id="model-info")
                yield Static("", id="memory-info")
                yield Label("Optimiser", classes="section")
                yield from book_widgets()
                for fid, label, kind, minimum, tip in OPTIM_FIELDS:
                    value = getattr(d, fid)
                    yield Field(label, "" if value is None else value, id=fid, kind=kind, minimum=minimum, tooltip=tip)
                yield Field("Sample prompt", d.start_context, id="start_context", kind="text")
                yield Checkbox("sample at each eval", True, id="sample_at_eval")
                yield Field("Save as", "", id="save_name", kind="text",
                            placeholder="text + shape, e.g. pydoc-2L128d")
                yield from hardware_widgets()  # device, dtype, compile, deterministic, processes, run where
            with Vertical(id="monitor"):
                with Horizontal(id="controls"):
                    yield Button("Start F6", id="start", variant="success")
                    yield Button("Pause F7", id="pause", disabled=True)
                    yield Button("Stop F8", id="stop", variant="error", disabled=True)
                    yield Button("Save F9", id="save", disabled=True)
                    yield ProgressBar(id="progress", show_eta=False)
                    yield Label("ctrl+b settings", id="form-hint")  # shown while the pane is hidden
                with Grid(id="charts"):
                    yield MetricChart("loss", id="chart-loss", key=True)
                    yield MetricChart("perplexity", id="chart-ppl", log_y=True, key=True)
                    yield MetricChart("learning rate", id="chart-lr")
                    yield MetricChart("tokens/s", id="chart-tps")
                yield Static(IDLE_STATUS, id="status")
                yield VerticalScroll(id="samples")
        yield Footer(compact=True)  # at 80 columns the screen's keys, the app's F2-F5 and Quit fit

    def on_mount(self) -> None:
        self.x_axis = "step"
        self.smoothing, self.log_y = 0.0, False  # the loss charts' EMA (ctrl+f) and log y (ctrl+g)
        self._drawn_version = -1
        self._samples_shown = 0
        self._monitor_shown: object = None  # the session drawn (the in-app one, or a followed run)
        self.resume_values: list[str] = [NEW_MODEL]  # the #resume choices, as listed
        self._was_running = False  # the monitored run's state at the last redraw: starts and ends show
        self._form_auto_hidden = False  # the settings pane gave way to a run (and comes back after it)
        self._prepared_seen = self.app.state.prepared  # the dataset the status last spoke about
        self._data_message = False  # the status says no dataset is ready (replaced once one is)
        self.query_one("#samples").border_title = "Samples (newest first)"
        self.refresh_checkpoints()
        self._apply_preset("tiny")
        self.set_interval(0.25, self.redraw)

    def on_resize(self) -> None:
        """A short terminal gets compact buttons and one row of charts (loss, perplexity)."""
        self.set_class(self.size.height < self.SHORT_HEIGHT, "-short")
        self._fit_controls()

    def _fit_controls(self) -> None:
        """Compact buttons where the full ones would not all fit (Save F9 clipped): a short terminal,
        or a narrow monitor beside the settings pane."""
        monitor = self.size.width - (0 if self.has_class("-form-hidden") else FORM_WIDTH) - 2
        self._status_width, self._drawn_version = monitor, -1  # the status is redrawn to the new width
        compact = self.has_class("-short") or monitor < 4 * 11
        for button in self.query("#controls Button").results(Button):
            button.compact = compact

    def on_screen_resume(self) -> None:
        self.app.refresh_header()
        self.refresh_checkpoints()
        self._update_model_info()

    # -- the form
    def refresh_checkpoints(self) -> None:
        """List the checkpoints (in a thread) for the Continue choice; the Checkpoints screen's Continue
        intent (``state.continue_checkpoint``) is applied when the list arrives."""
        self.list_checkpoints()

    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        select = self.query_one("#resume", Select)
        wanted, self.app.state.continue_checkpoint = self.app.state.continue_checkpoint, None
        current = wanted or select.value
        options = [("New model", NEW_MODEL)]
        options += [(f"Continue {info.name} ({info.source}, step {info.step or 0})", info.name)
                    for info in message.infos if info.ok]
        values = [v for _, v in options]
        if values != self.resume_values:
            self.resume_values = values
            select.set_options(options)
        if wanted is not None and wanted not in values:
            self.app.notify(f"Cannot continue {wanted!r}: it is no longer there.", severity="error")
        select.value = current if current in values else NEW_MODEL

    def _apply_preset(self, name: str) -> None:
        shape = dict(GPT2_SHAPES.get(name) or CPU_SHAPES.get(name) or {})
        cfg = preset(name)
        self.query_one("#n_layers", Input).value = str(shape.get("n_layers", cfg.n_layers))
        self.query_one("#n_heads", Input).value = str(shape.get("n_heads", cfg.n_heads))
        self.query_one("#emb_dim", Input).value = str(shape.get("emb_dim", cfg.emb_dim))
        self.query_one("#model_context", Input).value = str(cfg.context_length)  # the preset's own
        self.query_one("#drop_rate", Input).value = str(cfg.drop_rate)
        self.query_one("#qkv_bias", Checkbox).value = cfg.qkv_bias
        self.query_one("#tie_weights", Checkbox).value = cfg.tie_weights

    @on(Select.Changed, "#preset")
    def _preset_changed(self, event: Select.Changed) -> None:
        self._apply_preset(str(event.value))
        self._update_model_info()

    @on(Select.Changed, "#resume")
    def _resume_changed(self) -> None:
        new = self.query_one("#resume", Select).value == NEW_MODEL
        for wid in ("#preset", "#n_layers", "#n_heads", "#emb_dim", "#model_context", "#drop_rate", "#qkv_bias", "#tie_weights"):
            self.query_one(wid).disabled = not new
        self._update_model_info()

    @on(Checkbox.Changed, "#book")
    def _book_changed(self, event: Checkbox.Changed) -> None:
        self.set_book_mode(event.value)
        self._update_memory_info()

    @on(Select.Changed, "#device, #dtype")
    def _device_changed(self) -> None:
        self._update_memory_info()

    @on(Input.Changed, "#nproc")
    @on(Select.Changed, "#device")
    def _processes_changed(self) -> None:
        self.sync_processes()

    @on(Input.Changed, "#n_layers, #n_heads, #emb_dim, #model_context, #drop_rate")
    @on(Checkbox.Changed, "#qkv_bias, #tie_weights")
    def _shape_changed(self) -> None:
        self._update_model_info()

    def model_config(self) -> GPTConfig:
        """The shape in the form; its context is the preset's own unless the user edited it (the model
        owns the context: the data's windows follow it unless set on the Dataset screen)."""
        from gpttui.core.runplan import plan_model
        from gpttui.core.tokenizer import TOKENIZER_VOCAB

        return plan_model(
            str(self.query_one("#preset", Select).value),
            vocab_size=TOKENIZER_VOCAB.get(self.app.state.settings.tokenizer, TOKENIZER_VOCAB["gpt2"]),
            context_length=read_field(self.query_one("#model_context", Input), "int"),
            n_layers=read_field(self.query_one("#n_layers", Input), "int"),
            n_heads=read_field(self.query_one("#n_heads", Input), "int"),
            emb_dim=read_field(self.query_one("#emb_dim", Input), "int"),
            drop_rate=read_field(self.query_one("#drop_rate", Input), "float"),
            qkv_bias=self.query_one("#qkv_bias", Checkbox).value,
            tie_weights=self.query_one("#tie_weights", Checkbox).value,
        ).model_config

    def train_config(self) -> TrainConfig:
        self.set_book_mode(self.book_mode)  # the switch's Changed message may still be on its way
        self.sync_processes()  # and so may the processes field's (book mode sets it to 1)
        values: dict = {}
        for fid, label, kind, _, _ in OPTIM_FIELDS:
            try:
                values[fid] = read_field(self.query_one(f"#{fid}", Input), kind)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        values["start_context"] = self.query_one("#start_context", Input).value
        values["sample_at_eval"] = self.query_one("#sample_at_eval", Checkbox).value
        values["save_name"] = self.query_one("#save_name", Input).value.strip() or None
        values.update(self.hardware_values())  # device, dtype, compile, deterministic
        values["book"] = self.book_mode
        config = TrainConfig(**values)
        config.validate()
        return config

    def _update_model_info(self) -> None:
        info = self.query_one("#model-info", Static)
        self._update_memory_info()
        if self.query_one("#resume", Select).value != NEW_MODEL:
            info.update("Shape from the checkpoint; training continues with its optimizer state.")
            return
        try:
            cfg = self.model_config()
        except (ValueError, GPTTUIError) as exc:
            info.update(Text(f"✗ {exc}", style="red"))
            return
        n = parameter_count(cfg)
        state = self.app.state
        note = context_note(cfg.context_length, state.settings.context_length, state.data_context_set)
        info.update(f"{format_count(n)} parameters\n{note}")

    def _update_memory_info(self) -> None:
        """The memory line for the form's shape (none for a checkpoint's: planned when the run starts), with the
        Dataset screen's batch and its context when set there, in the chosen dtype on the chosen device."""
        try:
            cfg = self.model_config() if self.query_one("#resume", Select).value == NEW_MODEL else None
        except (ValueError, GPTTUIError):  # #model-info says what is wrong with the shape
            cfg = None
        state = self.app.state
        self.show_memory_plan(cfg, state.settings.batch_size, state.settings.context_length if state.data_context_set
                              else None, str(self.query_one("#dtype", Select).value),
                              str(self.query_one("#device", Select).value), self.book_mode)

    # -- actions
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        app = self.app
        if app.state.session.running:  # one run in this app at a time; background runs are not counted
            app.notify("A run is already in progress.", severity="warning")
            return
        try:
            config = self.train_config()
            self.processes()  # checked now; read again at launch, as "run where" is
            resume = self.query_one("#resume", Select).value
            resume = None if resume == NEW_MODEL else str(resume)
            model_config = None if resume else self.model_config()
            store = default_store()
            meta = store.read_meta(resume) if resume else None
        except (ValueError, GPTTUIError) as exc:
            self._cannot_start(str(exc))
            return
        prepared = app.state.prepared
        problem = no_dataset_message(app.state.settings.tokenizer) if prepared is None else "\n".join(
            prepared.stats.problems)
        same = meta is not None and prepared is not None and dataset_matches(meta.dataset, prepared)
        if meta is not None and not same and config.save_name in (None, resume):
            self._ask_how_to_continue(resume, meta, config, None if problem else prepared)
            return
        if problem:
            self._cannot_start(problem)
            self._data_message = prepared is None  # replaced once the Dataset screen has data
            return
        plan = plan_save(store, resume=resume, requested=config.save_name, same_data=same,
                         data_source=prepared.corpus.source, run_id="x")
        if plan.replaces:
            def confirmed(yes: bool | None) -> None:
                if yes:
                    self._launch(prepared, config, model_config, resume, overwrite=True)

            app.push_screen(ConfirmDialog(f"Checkpoint {plan.name!r} already exists. Replace it with this run's "
                                          "model? Its weights and optimizer state will be gone.",
                                          confirm="Replace"), confirmed)
            return
        self._launch(prepared, config, model_config, resume)

    def _ask_how_to_continue(self, resume: str, meta, config: TrainConfig, prepared) -> None:
        """The Dataset screen holds other text than ``resume`` was trained on (or nothing usable)."""
        own = (meta.dataset or {}).get("label") if (meta.dataset or {}).get("source") else None
        if own is None and prepared is None:
            self._cannot_start(f"{resume!r} records no training text and the Dataset screen has none ready: "
                               "pick a dataset first (F2).")
            return
        new_name = plan_save(default_store(), resume=resume, requested=None, same_data=False,
                             data_source=prepared.corpus.source, run_id="x").name if prepared else ""

        def chosen(choice: str | None) -> None:
            if choice == "own":
                self._set_status(f"Preparing {escape(own or '')}, the text {escape(resume)} was trained on…")
                self._prepare_own_data(resume, config)
            elif choice == "new":
                self._launch(prepared, config, None, resume, overwrite=False, save_name=None)
            elif choice == "replace":
                self._launch(prepared, config, None, resume, overwrite=True, save_name=resume)

        self.app.push_screen(ContinueDialog(resume, own, prepared.corpus.label if prepared else None, new_name),
                             chosen)

    def _cannot_start(self, message: str) -> None:
        self.app.notify(message, title="Cannot start", severity="error", timeout=10)
        self._set_status(f"[red]✗ {escape(message)}[/red]")

    @work(thread=True, exclusive=True, group="continue-data")
    def _prepare_own_data(self, name: str, config: TrainConfig) -> None:
        try:
            meta = default_store().read_meta(name)
            prepared = prepare_checkpoint_data(meta, get_tokenizer(checkpoint_data_settings(meta).tokenizer))
        except GPTTUIError as exc:
            self.app.call_from_thread(self._cannot_start, f"Cannot continue {name!r} on its own data: {exc}")
            return
        self.app.call_from_thread(self._launch, prepared, config, None, name)

    @work(thread=True, exclusive=True, group="continue-data")
    def _prepare_for_model(self, settings, corpus, launch: tuple) -> None:
        try:
            prepared = prepare_data(settings, get_tokenizer(settings.tokenizer), corpus=corpus, strict=False)
        except GPTTUIError as exc:
            self.app.call_from_thread(self._cannot_start, str(exc))
            return
        self.app.call_from_thread(self._data_follows_model, prepared, launch)

    def _data_follows_model(self, prepared: PreparedData, launch: tuple) -> None:
        """On the UI thread: the data windowed at the model's context becomes the app's dataset."""
        state = self.app.state
        state.settings, state.prepared = prepared.settings, prepared
        if prepared.stats.problems:
            self._cannot_start("\n".join(prepared.stats.problems))
            return
        config, model_config, resume, overwrite, save_name = launch
        self._launch(prepared, config, model_config, resume, overwrite=overwrite, save_name=save_name)

    def _launch(self, prepared, config: TrainConfig, model_config, resume: str | None, *, overwrite: bool = False,
                save_name: str | None | object = ...) -> None:
        app = self.app
        state = app.state
        if state.session.running:
            app.notify("A run is already in progress.", severity="warning")
            return
        if (model_config is not None and not state.data_context_set
                and prepared.settings.context_length != model_config.context_length):
            # The model owns the context: the data's windows follow it (the user did not set them).
            settings = replace(prepared.settings, context_length=model_config.context_length)
            self._set_status(f"Windowing the data at the model's context ({settings.context_length})…")
            self._prepare_for_model(settings, prepared.corpus, (config, model_config, resume, overwrite, save_name))
            return
        if save_name is not ...:
            config = TrainConfig(**{**config.to_dict(), "save_name": save_name})
        try:
            nproc = self.processes()
        except ValueError as exc:
            self._cannot_start(str(exc))
            return
        if nproc > 1 or self.query_one("#run-where", Select).value == BACKGROUND:  # DDP: a process tree
            self._launch_background(prepared, config, model_config, resume, overwrite, nproc)
            return
        session = state.session
        try:
            tokenizer = get_tokenizer(prepared.settings.tokenizer)
            trainer = Trainer(prepared, tokenizer, config, model_config, resume=resume, overwrite=overwrite)
        except (ValueError, GPTTUIError) as exc:
            self._cannot_start(str(exc))
            return
        label = resume or f"{self.query_one('#preset', Select).value}"
        self._leave_followed()
        for child in list(self.query_one("#samples").children):
            child.remove()
        self._samples_shown = 0
        session.start(app, trainer, label)
        self._set_status("Starting…")
        self._sync_buttons()

    def _launch_background(self, prepared, config: TrainConfig, model_config, resume: str | None,
                           overwrite: bool, nproc: int = 1) -> None:
        """The planned run as a `gpttui train` process of its own (it survives the app and its terminal;
        ``nproc`` > 1: torchrun DDP), then followed here like a run in this app."""
        from gpttui.core.launch import launch_detached, train_argv

        try:
            argv = train_argv(prepared.settings, model_config, config, resume=resume, overwrite=overwrite,
                              nproc=nproc)
            run_id, run_dir, pid = launch_detached(argv)
        except (ValueError, OSError, GPTTUIError) as exc:
            self._cannot_start(f"Cannot start the run in the background: {exc}")
            return
        self._leave_followed()
        self.app.state.follow(self.app, run_dir, config.save_name or resume or "")
        self.app.notify(f"Run {run_id} started in the background (pid {pid}); it goes on when you quit. "
                        f"Output: {run_dir / 'train.log'}", title="Background run")
        self._set_status("Starting in the background…")
        self._sync_buttons()

    def _leave_followed(self) -> None:
        """The monitor turns to the run being started; a background run it showed goes on (F10 lists it)."""
        followed = self.app.state.followed
        if followed is not None and followed.running:
            self.app.notify(f"Run {followed.run_id} ({followed.label}) keeps training in the background; the "
                            "Runs screen (F10) lists it.")
        self.app.state.unfollow()

    @on(Button.Pressed, "#pause")
    def action_pause(self) -> None:
        session = self.app.state.monitored
        if session.running and self._control(session.resume if session.paused else session.pause):
            self._sync_buttons()

    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        session = self.app.state.monitored
        if session.running and self._control(session.stop):
            self._set_status("Stopping after this step, then saving…")

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        session = self.app.state.monitored
        if session.running and self._control(session.request_save):
            self.app.notify("Saving after this step…")

    def _control(self, action) -> bool:
        """Apply a control; a background run's goes through its run directory, which may be gone."""
        try:
            action()
        except OSError as exc:
            self.app.notify(f"Cannot reach the run: {exc}", severity="error")
            return False
        return True

    def action_toggle_form(self) -> None:
        """Show or hide the settings pane (the user's choice stands until the next run starts)."""
        self._form_auto_hidden = False
        self.set_class(not self.has_class("-form-hidden"), "-form-hidden")
        self._fit_controls()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Start while no run trains in this app; pause, stop and save while the monitored run goes
        on (hidden otherwise, in the footer and the command palette)."""
        if action == "start":
            return not self.app.state.session.running
        if action in ("pause", "stop", "save"):
            return self.app.state.monitored.running
        return True

    def action_toggle_x(self) -> None:
        self.x_axis = "tokens" if self.x_axis == "step" else "step"
        self._drawn_version = -1
        self.redraw()

    def action_toggle_ema(self) -> None:
        self.smoothing = 0.0 if self.smoothing else DEFAULT_EMA_WEIGHT
        self._drawn_version = -1
        self.redraw()

    def action_toggle_log(self) -> None:
        self.log_y = not self.log_y
        self._drawn_version = -1
        self.redraw()

    # -- the monitor, redrawn from the shared history a few times a second
    def _sync_buttons(self) -> None:
        session = self.app.state.monitored
        running = session.running
        paused = session.paused
        self.query_one("#start", Button).disabled = self.app.state.session.running
        pause = self.query_one("#pause", Button)
        pause.disabled = not running
        pause.label = "Resume F7" if paused else "Pause F7"
        self.query_one("#stop", Button).disabled = not running
        self.query_one("#save", Button).disabled = not running

    def _set_status(self, markup: str) -> None:
        self.query_one("#status", Static).update(markup)

    def _run_state_changed(self, running: bool) -> None:
        """A run began (started here, or attached from the Runs screen) or ended: the settings pane
        gives way to the charts while it trains and comes back after, unless the user chose (ctrl+b)."""
        self._was_running = running
        self.refresh_bindings()
        if running and not self.has_class("-form-hidden"):
            self._form_auto_hidden = True
            self.add_class("-form-hidden")
        elif not running and self._form_auto_hidden and self.size.width >= self.WIDE:
            self._form_auto_hidden = False
            self.remove_class("-form-hidden")
        self._fit_controls()

    def _dataset_changed(self) -> None:
        """The Dataset screen's data changed: a "no dataset" message gives way, the model's notes follow."""
        prepared = self._prepared_seen = self.app.state.prepared
        self._update_model_info()
        if self._data_message and prepared is not None:
            self._data_message = False
            ready = not prepared.stats.problems
            self._set_status(f"Dataset {escape(prepared.corpus.label)} " + (
                "is ready: press F6 to start." if ready else "has problems: see the Dataset screen (F2)."))

    def redraw(self) -> None:
        session = self.app.state.monitored
        history = session.history
        self._sync_buttons()
        if session.running != self._was_running:
            self._run_state_changed(session.running)
        if self.app.state.prepared is not self._prepared_seen:
            self._dataset_changed()
        if session is not self._monitor_shown:  # another run to show: its own samples
            self._monitor_shown, self._drawn_version = session, -1
            for child in list(self.query_one("#samples").children):
                child.remove()
            self._samples_shown = 0
        if history.version == self._drawn_version:
            return
        self._drawn_version = history.version
        snap = history.snapshot()
        xkey = "tokens" if self.x_axis == "tokens" else "step"
        sx = snap.steps.tokens if xkey == "tokens" else snap.steps.step
        ex = snap.evals.tokens if xkey == "tokens" else snap.evals.step
        xlabel = "tokens seen" if xkey == "tokens" else "step"
        sv, ev = snap.steps.values, snap.evals.values
        self.query_one("#chart-loss", MetricChart).set_series(
            [("step", sx, sv.get("loss", [])), ("train", ex, ev.get("train_loss", [])),
             ("val", ex, ev.get("val_loss", []))], xlabel)
        self.query_one("#chart-ppl", MetricChart).set_series(
            [("", [], []), ("train", ex, ev.get("train_ppl", [])), ("val", ex, ev.get("val_ppl", []))], xlabel)
        self.query_one("#chart-loss", MetricChart).set_view(smoothing=self.smoothing, log_y=self.log_y)
        self.query_one("#chart-ppl", MetricChart).set_view(smoothing=self.smoothing)
        self.query_one("#chart-lr", MetricChart).set_series([("lr", sx, sv.get("lr", []))], xlabel)
        self.query_one("#chart-tps", MetricChart).set_series([("tok/s", sx, sv.get("tokens_per_sec", []))], xlabel)
        self.query_one("#progress", ProgressBar).update(total=1.0, progress=snap.progress)
        status = status_text(with_book_tag(snap), self._status_width) if snap.status != "idle" else IDLE_STATUS
        if session is not self.app.state.session:
            status += (f"\n[dim]{escape(session.kind)} · from a terminal: "
                       f"`gpttui runs attach {escape(session.run_dir.name)}`[/dim]")
        self._set_status(status)
        self._show_samples(snap.samples)

    def _show_samples(self, samples) -> None:
        box = self.query_one("#samples", VerticalScroll)
        for sample in samples[self._samples_shown:]:
            text = Text(f"step {sample.step} · epoch {sample.epoch}\n", style="dim")
            append_printable(text, split_controls(sample.text))  # an ESC shown as ␛, never obeyed
            widget = Static(text, classes="sample")
            if box.children:
                box.mount(widget, before=0)
            else:
                box.mount(widget)
        self._samples_shown = len(samples)
