"""The app shell: one screen per job, a shared state, and the training session the screens watch."""

from __future__ import annotations

from functools import partial
from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.command import CommandPalette
from textual.screen import Screen

from gpttui.core import paths
from gpttui.core.data import DataSettings
from gpttui.core.train import CheckpointEvent, FailedEvent, FinishedEvent
from gpttui.tui.dialogs import QuitScreen
from gpttui.tui.exit_guard import ExitGuard, stop_for_exit
from gpttui.tui.messages import TrainingEvent
from gpttui.tui.screens.checkpoints import CheckpointsScreen
from gpttui.tui.screens.dataset import DatasetScreen
from gpttui.tui.screens.generate import GenerateScreen
from gpttui.tui.screens.help import PALETTE, HelpScreen, app_help_entries, node_entries, screen_commands
from gpttui.tui.screens.runs import RunsScreen
from gpttui.tui.screens.train import TrainScreen
from gpttui.tui.state import AppState


class GPTTUIApp(App, inherit_bindings=False):  # Textual's two bindings follow F1 Help (footer order)
    CSS_PATH = "gpttui.tcss"
    TITLE = "gpttui"
    MODES = {"dataset": DatasetScreen, "train": TrainScreen, "generate": GenerateScreen,
             "checkpoints": CheckpointsScreen, "runs": RunsScreen}
    DEFAULT_MODE = "dataset"
    BINDINGS = [
        Binding("f1", "help", "Help", priority=True, tooltip="keys and what this screen is for"),
        Binding("question_mark", "help", "Help", show=False),  # not priority: typed "?" in an Input stays text
        # Short words: at 80 columns the footer keeps every screen's key (the help says them in full).
        Binding("f2", "switch_mode('dataset')", "Data", priority=True, tooltip="the Dataset screen"),
        Binding("f3", "switch_mode('train')", "Train", priority=True, tooltip="the Train screen"),
        Binding("f4", "switch_mode('generate')", "Gen", priority=True, tooltip="the Generate screen"),
        Binding("f5", "switch_mode('checkpoints')", "Ckpts", priority=True, tooltip="the Checkpoints screen"),
        Binding("f10", "switch_mode('runs')", "Runs", priority=True, tooltip="the Runs screen"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("ctrl+c", "help_quit", show=False, system=True),  # Textual's: "press ctrl+q to quit"
    ]

    def __init__(self, state: AppState | None = None) -> None:
        super().__init__()
        self.state = state or AppState()
        self.exit_guard: ExitGuard | None = None  # run_app's: SIGHUP/SIGTERM handling
        self.exit_note = ""  # printed by run_app once the terminal is back (where the run saved)
        self.stopped_run = False  # the in-app run was stopped because the app is leaving

    def on_mount(self) -> None:
        self.run_worker(_warm_up_optimizer, thread=True, group="warm-up", exit_on_error=False)
        # SIGHUP (a closed SSH link, a killed tmux) and SIGTERM: run_app's ExitGuard catches them
        # with plain signal handlers and calls _hang_up here (gpttui/tui/exit_guard.py says why
        # not the loop's own handlers); it takes them back should the driver have given them away.
        if self.exit_guard is not None:
            self.exit_guard.reclaim()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        # The key of the screen shown is left out of the footer (and does nothing): room for the others.
        if action == "switch_mode" and parameters and parameters[0] == self.current_mode:
            return False
        return True

    def _hang_up(self, sig: int) -> None:
        """On the app's loop, for SIGHUP/SIGTERM: the run stops at the end of its step and saves
        (its final event says "interrupted"); the app leaves with status 128 + the signal, and
        run_app says where the run saved."""
        self.stopped_run = self.stopped_run or self.state.session.running
        stop_for_exit(self.state.session)
        self.exit(return_code=128 + int(sig))

    # -- header
    def refresh_header(self) -> None:
        """The screen, the corpus, and the monitored run. While a run trains, the corpus shown is the
        run's (its Started event's), not the Dataset screen's, which may have moved on."""
        parts = [{"dataset": "Dataset", "train": "Train", "generate": "Generate",
                  "checkpoints": "Checkpoints", "runs": "Runs"}.get(self.current_mode, self.current_mode.title())]
        prepared = self.state.prepared
        data_label = prepared.corpus.label if prepared is not None else None
        session = self.state.monitored
        run_label = run_corpus(session)
        if data_label and not (session.running and run_label):
            parts.append(data_label)
        if session.label:
            where = "" if session is self.state.session else f", {session.kind}"
            on = f" on {run_label}" if run_label and (run_label != data_label or session.running) else ""
            parts.append(f"model {session.label}{on} ({session.history.status}{where})")
        self.sub_title = "  ·  ".join(parts)

    # -- training events (posted from the trainer's thread)
    def on_training_event(self, message: TrainingEvent) -> None:
        event = message.event
        if isinstance(event, FailedEvent):
            self.notify(event.message, title="Training failed", severity="error", timeout=15)
        elif isinstance(event, FinishedEvent):
            self.notify(finished_text(event), title=FINISHED_TITLES.get(event.reason, "Training ended"),
                        timeout=10)
        elif isinstance(event, CheckpointEvent):
            self.notify(f"Saved checkpoint {event.name!r} (step {event.step:,}).")
        if isinstance(event, (CheckpointEvent, FinishedEvent)):
            self.state.checkpoints_version += 1
        self.refresh_header()

    # -- help
    def action_help(self) -> None:
        """F1 (everywhere) or ? (where no input takes it): the help for the screen in front; on the
        help itself, it closes."""
        if isinstance(self.screen, HelpScreen):
            self.screen.dismiss()
            return
        if isinstance(self.screen, CommandPalette):
            return  # its keys are Textual's own; the help is for the screen under it, once it closes
        self.push_screen(HelpScreen(self.screen, app_help_entries(self)))

    # -- quitting
    async def action_quit(self) -> None:
        # Only a run in this app asks (it would end with the app); a background run goes on, unasked.
        session = self.state.session
        if not session.running:
            self.exit()
            return

        def answered(choice: str | None) -> None:
            if choice in ("save", "nosave"):
                self.run_worker(self._stop_and_exit(save=choice == "save"), group="quit")

        self.push_screen(QuitScreen(), answered)

    async def _stop_and_exit(self, save: bool) -> None:
        session = self.state.session
        session.stop(save=save)
        self.notify("Stopping after the current step…" + (" then saving." if save else ""))
        if session.worker is not None:
            await session.worker.wait()
        # A notification would vanish with the screen: run_app prints this once the terminal is back.
        self.exit_note = ending_note(session)
        self.exit()

    def on_unmount(self) -> None:
        # Never leave a training thread behind: it checks for this between steps. (Textual has
        # cancelled its workers by now; stop_for_exit asks the thread itself.) A followed run (another
        # process) goes on: only the thread following it ends.
        stop_for_exit(self.state.session)
        self.state.unfollow()

    # -- command palette
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's own, the screens, every action of the screen in front that applies now (from its
        BINDINGS: see gpttui/tui/screens/help.py), and a few actions of other screens worth finding
        from anywhere (imports, the built-in corpus, compare)."""
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help: keys and what this screen is for", "F1, or ? outside a text field",
                            self.action_help)
        yield SystemCommand("Dataset screen", "Pick a corpus and data settings (F2)",
                            lambda: self.switch_mode("dataset"))
        yield SystemCommand("Train screen", "Model, optimiser and the training monitor (F3)",
                            lambda: self.switch_mode("train"))
        yield SystemCommand("Generate screen", "Talk to a checkpoint or the model being trained (F4)",
                            lambda: self.switch_mode("generate"))
        yield SystemCommand("Checkpoints screen", "Saved models: generate, continue, rename, export, import (F5)",
                            lambda: self.switch_mode("checkpoints"))
        yield SystemCommand("Runs screen", "Every run, in this app or in the background: attach, steer, "
                            "compare (F10)", lambda: self.switch_mode("runs"))
        if isinstance(screen, HelpScreen):
            return
        yield from screen_commands(self, screen)
        if not isinstance(screen, RunsScreen):
            yield SystemCommand("Compare runs…", "On the Runs screen: mark two or more runs (space), then c",
                                self._compare_runs)
        if not isinstance(screen, DatasetScreen):
            yield SystemCommand("Use the built-in corpus", "Python's reference manual, shipped with CPython",
                                partial(self._run_on, "dataset", "builtin"))
        if not isinstance(screen, CheckpointsScreen):
            for entry in node_entries(CheckpointsScreen):
                words = PALETTE.get(("CheckpointsScreen", entry.action))
                if entry.action.startswith("import(") and words:
                    yield SystemCommand(words[0], f"On the Checkpoints screen (F5, then {entry.key_text})",
                                        partial(self._run_on, "checkpoints", entry.action))

    async def _run_on(self, mode: str, action: str) -> None:
        """Another screen's action from the palette: that screen comes to the front, then acts."""
        await self.switch_mode(mode)
        await self.run_action(action, self.screen)

    def _compare_runs(self) -> None:
        self.switch_mode("runs")
        self.notify("Mark two or more runs with space, then press c to compare them.", title="Compare runs")


FINISHED_TITLES = {"completed": "Training finished", "stopped": "Training stopped",
                   "interrupted": "Training interrupted"}


def finished_text(event: FinishedEvent) -> str:
    """The finished notification's body: where the run ended and where its weights went."""
    what = {"completed": "Done after step", "stopped": "Stopped at step",
            "interrupted": "Interrupted at step"}.get(event.reason, f"Ended ({event.reason}) at step")
    where = (f"saved as checkpoint {event.checkpoint!r} (F5 Checkpoints)" if event.checkpoint
             else "not saved")
    return f"{what} {event.step:,}; {where}."


def run_corpus(session) -> str | None:
    """The label of the text the session's run trains on, from its Started event (None before it)."""
    started = session.history.started
    dataset = getattr(started, "dataset", None) or {}
    label = dataset.get("label") if isinstance(dataset, dict) else None
    return str(label) if label else None


def ending_note(session) -> str:
    """A line for the terminal after the app is gone: how the in-app run ended and where it saved."""
    history = session.history
    finished, failed = history.finished, history.failed
    if finished is not None:
        how = {"completed": "finished", "interrupted": "interrupted"}.get(finished.reason, "stopped")
        if finished.checkpoint:
            folder = paths.checkpoints_dir() / finished.checkpoint
            return (f"gpttui: training {how} at step {finished.step:,}; saved as checkpoint "
                    f"{finished.checkpoint!r} ({folder}).")
        return f"gpttui: training {how} at step {finished.step:,}, not saved."
    if failed is not None:
        return f"gpttui: training failed: {failed.message}"
    return ""


def _warm_up_optimizer() -> None:
    """The first AdamW pulls in a large part of torch (torch._dynamo...), holding the GIL for
    seconds in bursts; do it while the user is still on the Dataset screen, not at Start."""
    import torch

    param = torch.zeros(1, requires_grad=True)
    try:
        torch.optim.AdamW([param], fused=True)
    except (RuntimeError, TypeError):
        torch.optim.AdamW([param])


def create_app(state: AppState | None = None, settings: DataSettings | None = None) -> GPTTUIApp:
    """The app, built the same way for users and tests (tests pass their own state/settings)."""
    state = state or AppState()
    if settings is not None:
        state.settings = settings
        state.data_context_set = True  # given settings are the caller's choice, context included
    return GPTTUIApp(state)


def run_app(app: GPTTUIApp | None = None) -> int:
    """Run the app (``create_app()`` unless one is given, e.g. by a test driver) in this terminal,
    with SIGHUP/SIGTERM handled by an :class:`ExitGuard`; the process's exit status."""
    app = app or create_app()
    guard = app.exit_guard = ExitGuard(app.state.session, app._hang_up).install()
    try:
        if not guard.signalled:
            app.run()
    finally:
        # However the app ended (quit, a closed terminal, an error), a run still going finishes its
        # step and saves; a signal now only arms the watchdog, which waits for this save too.
        session = app.state.session
        stopping = app.stopped_run or not session.done.is_set()
        stop_for_exit(session)
        if not session.done.is_set():
            try:
                print("Stopping the training run after this step and saving…", flush=True)
            except (OSError, ValueError):
                pass  # the terminal is gone (closed SSH link)
            session.wait_done()
        if stopping:
            app.exit_note = app.exit_note or ending_note(session)
        guard.restore()
        if app.exit_note:
            try:
                print(app.exit_note, flush=True)
            except (OSError, ValueError):
                pass
    if guard.signum is not None:
        return 128 + guard.signum
    return app.return_code or 0
