"""The app shell: one screen per job, a shared state, and the training session the screens watch."""

from __future__ import annotations

from typing import Iterable

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from gpttui.core.data import DataSettings
from gpttui.core.train import CheckpointEvent, FailedEvent, FinishedEvent
from gpttui.tui.dialogs import QuitScreen
from gpttui.tui.exit_guard import ExitGuard, stop_for_exit
from gpttui.tui.messages import TrainingEvent
from gpttui.tui.screens.checkpoints import CheckpointsScreen
from gpttui.tui.screens.dataset import DatasetScreen
from gpttui.tui.screens.generate import GenerateScreen
from gpttui.tui.screens.runs import RunsScreen
from gpttui.tui.screens.train import TrainScreen
from gpttui.tui.state import AppState


class GPTTUIApp(App):
    CSS_PATH = "gpttui.tcss"
    TITLE = "gpttui"
    MODES = {"dataset": DatasetScreen, "train": TrainScreen, "generate": GenerateScreen,
             "checkpoints": CheckpointsScreen, "runs": RunsScreen}
    DEFAULT_MODE = "dataset"
    BINDINGS = [
        Binding("f2", "switch_mode('dataset')", "Dataset", priority=True),
        Binding("f3", "switch_mode('train')", "Train", priority=True),
        Binding("f4", "switch_mode('generate')", "Generate", priority=True),
        Binding("f5", "switch_mode('checkpoints')", "Checkpoints", priority=True),
        Binding("f10", "switch_mode('runs')", "Runs", priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, state: AppState | None = None) -> None:
        super().__init__()
        self.state = state or AppState()
        self.exit_guard: ExitGuard | None = None  # run_app's: SIGHUP/SIGTERM handling

    def on_mount(self) -> None:
        self.run_worker(_warm_up_optimizer, thread=True, group="warm-up", exit_on_error=False)
        # SIGHUP (a closed SSH link, a killed tmux) and SIGTERM: run_app's ExitGuard catches them
        # with plain signal handlers and calls _hang_up here (gpttui/tui/exit_guard.py says why
        # not the loop's own handlers); it takes them back should the driver have given them away.
        if self.exit_guard is not None:
            self.exit_guard.reclaim()

    def _hang_up(self, sig: int) -> None:
        """On the app's loop, for SIGHUP/SIGTERM: the run stops at the end of its step and saves
        (its final event says "interrupted"); the app leaves with status 128 + the signal."""
        stop_for_exit(self.state.session)
        self.exit(return_code=128 + int(sig))

    # -- header
    def refresh_header(self) -> None:
        parts = [{"dataset": "Dataset", "train": "Train", "generate": "Generate",
                  "checkpoints": "Checkpoints", "runs": "Runs"}.get(self.current_mode, self.current_mode.title())]
        prepared = self.state.prepared
        if prepared is not None:
            parts.append(prepared.corpus.label)
        session = self.state.monitored
        if session.label:
            where = "" if session is self.state.session else f", {session.kind}"
            parts.append(f"model {session.label} ({session.history.status}{where})")
        self.sub_title = "  ·  ".join(parts)

    # -- training events (posted from the trainer's thread)
    def on_training_event(self, message: TrainingEvent) -> None:
        event = message.event
        if isinstance(event, FailedEvent):
            self.notify(event.message, title="Training failed", severity="error", timeout=15)
        elif isinstance(event, FinishedEvent):
            where = f", saved as {event.checkpoint!r}" if event.checkpoint else ""
            self.notify(f"Training {event.reason}{where}.", title="Training finished")
        elif isinstance(event, CheckpointEvent):
            self.notify(f"Saved checkpoint {event.name!r} (step {event.step}).")
        if isinstance(event, (CheckpointEvent, FinishedEvent)):
            self.state.checkpoints_version += 1
        self.refresh_header()

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
        self.exit()

    def on_unmount(self) -> None:
        # Never leave a training thread behind: it checks for this between steps. (Textual has
        # cancelled its workers by now; stop_for_exit asks the thread itself.) A followed run (another
        # process) goes on: only the thread following it ends.
        stop_for_exit(self.state.session)
        self.state.unfollow()

    # -- command palette
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
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
        if isinstance(screen, RunsScreen):
            yield SystemCommand("Compare the marked runs", "Loss and perplexity overlaid, one colour per run (c)",
                                screen.action_compare)
            yield SystemCommand("Attach to the highlighted run", "Monitor and steer it on the Train screen (Enter)",
                                screen.action_attach)
        else:
            yield SystemCommand("Compare runs…", "On the Runs screen: mark two or more runs (space), then c",
                                self._compare_runs)
        yield SystemCommand("Use the built-in corpus", "Python's reference manual, shipped with CPython",
                            self._use_builtin)
        if isinstance(screen, TrainScreen):
            yield SystemCommand("Start training", "Start a run with the settings on screen (F6)", screen.action_start)
            if self.state.monitored.running:
                yield SystemCommand("Pause or resume training", "(F7)", screen.action_pause)
                yield SystemCommand("Stop training and save", "(F8)", screen.action_stop)
                yield SystemCommand("Save a checkpoint now", "(F9)", screen.action_save)

    def _compare_runs(self) -> None:
        self.switch_mode("runs")
        self.notify("Mark two or more runs with space, then press c to compare them.", title="Compare runs")

    def _use_builtin(self) -> None:
        self.switch_mode("dataset")
        screen = self.screen
        if isinstance(screen, DatasetScreen):
            screen.action_builtin()


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
        stop_for_exit(session)
        if not session.done.is_set():
            try:
                print("Stopping the training run after this step and saving…", flush=True)
            except (OSError, ValueError):
                pass  # the terminal is gone (closed SSH link)
            session.wait_done()
        guard.restore()
    if guard.signum is not None:
        return 128 + guard.signum
    return app.return_code or 0
