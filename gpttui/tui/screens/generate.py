"""Generate screen: a chat-style panel that streams a model's continuation, with sampling controls
and a view of each token's probability and alternatives."""

from __future__ import annotations

import time
from concurrent.futures import CancelledError, TimeoutError as FutureTimeout
from dataclasses import dataclass, field

import torch
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, Select, Static
from textual.worker import Worker, get_current_worker

from gpttui.core import checkpoints
from gpttui.core.errors import GPTTUIError
from gpttui.core.generate import GenerationResult, SamplingConfig, TokenEvent, parse_stop_strings, stream
from gpttui.core.model import GPTModel
from gpttui.core.tokenizer import get_tokenizer, tokenizer_for
from gpttui.core.resources import pick_device
from gpttui.tui.listing import ListsCheckpoints
from gpttui.tui.messages import CheckpointsListed, GenerationChunk, GenerationDone
from gpttui.tui.render import INSPECTOR_HINT, prob_legend, token_details, turn_text
from gpttui.tui.widgets import Field, read_field

TRAINING = "__training__"
TRAINING_CHECK_SECONDS = 1.0  # how often the training entry's label is checked (running, paused, ended)
FLUSH_SECONDS = 0.05  # stream to the screen at most 20 times a second, whatever the model's speed

PRESETS = {
    "book greedy": dict(temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0, num_beams=1),
    "book top-k 25, T 1.4": dict(temperature=1.4, top_k=25, top_p=None, repetition_penalty=1.0, num_beams=1),
    "creative": dict(temperature=0.9, top_k=None, top_p=0.95, repetition_penalty=1.15, num_beams=1),
    "beam search (4)": dict(temperature=0.0, top_k=None, top_p=None, repetition_penalty=1.0, num_beams=4),
}
SAMPLING_FIELDS = [
    ("temperature", "Temperature", "float", 0.0),
    ("top_k", "Top-k", "optional int", 1),
    ("top_p", "Top-p", "optional float", 0.0),
    ("repetition_penalty", "Rep. penalty", "float", 0.0),
    ("max_new_tokens", "Max tokens", "int", 1),
    ("seed", "Seed", "optional int", 0),
    ("num_beams", "Beams", "int", 1),
    ("length_penalty", "Length pen.", "float", None),
]


@dataclass
class Turn:
    prompt: str
    model: str
    tokens: list[TokenEvent] = field(default_factory=list)
    result: GenerationResult | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        return "".join(t.text for t in self.tokens)


@dataclass
class SnapshotTaken(Message):
    """The training run's weights a turn talks to were taken after this step."""

    turn: int
    step: int


def training_entry(session) -> str | None:
    """The model list's entry for the run trained in this app, saying which weights it stands for:
    a running run's are taken when you send (the turn then names the step), a paused or ended run's
    are those of its last step. None while the run has no model."""
    trainer = session.trainer
    if trainer is None or trainer.model is None:
        return None
    if session.running and not session.paused:
        return f"Run {session.label}, live (step taken at send)"
    step = trainer.pos.step
    return f"Run {session.label}, step {step:,} ({'paused' if session.running else 'run ended'})"


class PromptInput(Input):
    """An input that keeps a history of prompts (up / down)."""

    BINDINGS = [Binding("up", "older", show=False), Binding("down", "newer", show=False)]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history: list[str] = []
        self._pos = 0

    def remember(self, text: str) -> None:
        if text and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._pos = len(self.history)

    def action_older(self) -> None:
        if self.history and self._pos > 0:
            self._pos -= 1
            self.value = self.history[self._pos]
            self.cursor_position = len(self.value)

    def action_newer(self) -> None:
        if self._pos < len(self.history) - 1:
            self._pos += 1
            self.value = self.history[self._pos]
        else:
            self._pos = len(self.history)
            self.value = ""
        self.cursor_position = len(self.value)


class TurnView(Static):
    """One prompt and its continuation; with probability colouring, each token is coloured by its
    probability and the selected one is underlined."""

    def __init__(self, turn: Turn, index: int) -> None:
        super().__init__(classes="turn")
        self.turn = turn
        self.index = index
        self.colour = False
        self.selected: int | None = None

    def show(self) -> None:
        self.update(turn_text(self.turn, self.colour, self.selected))


class GenerateScreen(ListsCheckpoints, Screen):
    # Inputs own ctrl+a/e/d/k/u/w/x/c/v, the arrows and ctrl+arrows (word moves): the screen's keys
    # that must work while typing are F-keys and ctrl+l/y; ctrl+arrows and / only act outside inputs.
    BINDINGS = [
        # The footer at 80 columns: F6 and the app's screen keys and Quit; the rest are in F1's help.
        Binding("escape", "escape", "Stop", show=False,  # (the Stop button is beside the prompt)
                tooltip="stop the reply; with none going, back to the prompt"),
        Binding("ctrl+l", "clear", "Clear the chat", priority=True, show=False),
        Binding("ctrl+y", "copy", "Copy the last turn", priority=True, show=False),
        Binding("f6", "toggle_colour", "Probs", priority=True, tooltip="colour the tokens by probability"),
        # F7/F8 are named under the chat whenever the colours are on (the footer has no room left)
        Binding("f7", "select_token(-1)", "Previous token", show=False, priority=True),
        Binding("f8", "select_token(1)", "Next token", show=False, priority=True),
        Binding("ctrl+left", "select_token(-1)", "Previous token (outside inputs)", show=False),
        Binding("ctrl+right", "select_token(1)", "Next token (outside inputs)", show=False),
        Binding("slash", "focus_prompt", "Back to the prompt (outside inputs)", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="generate-main"):
            with Vertical(id="chat-column"):
                yield VerticalScroll(id="chat")
                with Vertical(id="token-panel"):  # where the eye is: right under the reply
                    yield Static(prob_legend(), id="prob-legend")
                    yield Static(INSPECTOR_HINT, id="token-details", classes="hint")
                with Horizontal(id="prompt-row"):
                    yield PromptInput(id="prompt", placeholder="Your prompt, then Enter (↑/↓: history)")
                    yield Button("Send", id="send", variant="primary")
                    yield Button("Stop", id="stop", variant="error", disabled=True)
            with VerticalScroll(id="generate-side", classes="panel"):
                yield Label("Model", classes="section")
                yield Select([("(no model yet)", "")], value="", id="model", allow_blank=False)
                yield Label("Sampling", classes="section")
                yield Select([(k, k) for k in PRESETS], value="book greedy", id="sampling-preset", allow_blank=False)
                defaults = SamplingConfig()
                for fid, label, kind, minimum in SAMPLING_FIELDS:
                    yield Field(label, getattr(defaults, fid), id=fid, kind=kind, minimum=minimum)
                yield Field("Stop at", "", id="stop_strings", kind="text", placeholder='e.g. \\n\\n | "."')
                yield Checkbox("Colour by probability (F6)", False, id="colour")
                yield Static("", id="sampling-problems")
        yield Footer(compact=True)  # at 80 columns: the screen's keys, the app's F-keys and Quit

    def on_mount(self) -> None:
        self.turns: list[Turn] = []
        self.views: list[TurnView] = []
        self.generating = False
        self._generation: Worker | None = None
        # Loaded checkpoints, keyed by their weights file; used only by the generation worker (one at a
        # time: its group is exclusive), never by the UI thread.
        self._models: dict[tuple[str, int, int], tuple[torch.nn.Module, str]] = {}
        self.model_options: list[tuple[str, str]] = []  # the #model choices: (label, value)
        self._infos: list = []  # the checkpoints last listed
        self.query_one("#token-panel").display = False
        self.refresh_models()
        self.set_interval(TRAINING_CHECK_SECONDS, self._check_training_entry)

    def on_screen_resume(self) -> None:
        self.app.refresh_header()
        self.refresh_models()
        self.query_one("#prompt", PromptInput).focus()

    # -- models
    def refresh_models(self) -> None:
        """List the checkpoints (in a thread); the Checkpoints screen's Generate intent
        (``state.generate_checkpoint``) is applied when the list arrives."""
        self.list_checkpoints()

    def on_checkpoints_listed(self, message: CheckpointsListed) -> None:
        self._infos = message.infos
        wanted, self.app.state.generate_checkpoint = self.app.state.generate_checkpoint, None
        self._set_model_options(wanted)

    def _set_model_options(self, wanted: str | None = None) -> None:
        """The model list: the run trained here (when it has a model), then the usable checkpoints;
        the choice is kept when it is still offered."""
        select = self.query_one("#model", Select)
        current = wanted or select.value
        options = []
        entry = training_entry(self.app.state.session)
        if entry is not None:
            options.append((entry, TRAINING))
        options += [(f"{info.name} ({info.source})", info.name) for info in self._infos if info.ok]
        if not options:
            options = [("(no model yet: train one or import GPT-2)", "")]
        if options != self.model_options:
            self.model_options = options
            select.set_options(options)
        values = [v for _, v in options]
        select.value = current if current in values else values[0]

    def _check_training_entry(self) -> None:
        """Relabel the training entry when the run pauses, resumes or ends (or appears), so it never
        speaks of a run that is over; not while the list is open under the user's eyes."""
        entry = training_entry(self.app.state.session)
        shown = next((label for label, value in self.model_options if value == TRAINING), None)
        if entry != shown and not self.query_one("#model", Select).expanded:
            self._set_model_options()

    def _load_model(self, name: str, index: int) -> tuple[torch.nn.Module, str]:
        """(model, tokenizer name) for a checkpoint or the running training (a fresh snapshot, whose
        step turn ``index`` is told with a :class:`SnapshotTaken`)."""
        if name == TRAINING:
            return self._training_snapshot(index)
        # Keyed by the weights file's identity: a checkpoint saved again (training continued under
        # the same name) is loaded again, not served stale from the cache.
        try:
            stat = (checkpoints.checkpoint_path(name) / "model.safetensors").stat()
            key = (name, stat.st_mtime_ns, stat.st_size)
        except OSError:
            key = (name, 0, 0)
        if key not in self._models:
            loaded = checkpoints.load_checkpoint(name, device=pick_device("auto"))
            self._models = {k: v for k, v in self._models.items() if k[0] != name}
            self._models[key] = (loaded.model, tokenizer_for(loaded.typed))
        return self._models[key]

    def _training_snapshot(self, index: int) -> tuple[torch.nn.Module, str]:
        """A copy of the training run's weights, taken by the trainer between two steps while it runs
        (its step read by the trainer's thread as it hands them over), else copied here."""
        session = self.app.state.session
        trainer = session.trainer
        if trainer is None or trainer.model is None:
            raise GPTTUIError("No training run has a model yet.")
        weights, steps = None, []
        if session.running and session.control is not None and not session.control.paused:
            future = session.control.request_snapshot()
            future.add_done_callback(lambda f: steps.append(trainer.pos.step))
            try:
                _, weights = future.result(timeout=300)
            except (FutureTimeout, CancelledError):
                weights = None
        if weights is None:  # paused or finished: the weights are not moving
            steps = [trainer.pos.step]
            weights = {k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()}
        self.post_message(SnapshotTaken(index, steps[0]))
        model = GPTModel(trainer.model_config)
        model.load_state_dict(weights)
        return model.to(pick_device("auto")).eval(), trainer.tokenizer.name

    def on_snapshot_taken(self, message: SnapshotTaken) -> None:
        if message.turn < len(self.turns):
            self.turns[message.turn].model = f"run {self.app.state.session.label} @ step {message.step:,}"
            self.views[message.turn].show()

    # -- sampling settings
    @on(Select.Changed, "#sampling-preset")
    def _preset(self, event: Select.Changed) -> None:
        for key, value in PRESETS.get(str(event.value), {}).items():
            self.query_one(f"#{key}", Input).value = "" if value is None else str(value)

    def sampling_config(self) -> SamplingConfig:
        values = {}
        for fid, label, kind, _ in SAMPLING_FIELDS:
            try:
                values[fid] = read_field(self.query_one(f"#{fid}", Input), kind)
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from None
        stops = self.query_one("#stop_strings", Input).value
        values["stop"] = parse_stop_strings(stops)
        return SamplingConfig(**values).validate()

    @on(Input.Changed, ".field-input")
    def _check_settings(self) -> None:
        problems = self.query_one("#sampling-problems", Static)
        try:
            self.sampling_config()
            problems.update("")
        except (ValueError, GPTTUIError) as exc:
            problems.update(Text(f"✗ {exc}", style="red"))

    # -- sending and streaming
    @on(Input.Submitted, "#prompt")
    @on(Button.Pressed, "#send")
    def action_send(self) -> None:
        if self.generating:
            self.app.notify("Still generating: Escape stops it.", severity="warning")
            return
        prompt_input = self.query_one("#prompt", PromptInput)
        prompt = prompt_input.value
        name = str(self.query_one("#model", Select).value)
        if not name:
            self.app.notify("No model to talk to: train one (F3) or import GPT-2 (F5).", severity="error")
            return
        try:
            cfg = self.sampling_config()
        except (ValueError, GPTTUIError) as exc:
            self.app.notify(str(exc), title="Sampling settings", severity="error")
            return
        prompt_input.remember(prompt)
        prompt_input.value = ""
        model_label = next((lbl for lbl, v in self.model_options if v == name), name)
        label = f"run {self.app.state.session.label}" if name == TRAINING else str(model_label).split(" (")[0]
        turn = Turn(prompt, label)
        self.turns.append(turn)
        view = TurnView(turn, len(self.turns) - 1)
        view.colour = self.query_one("#colour", Checkbox).value
        self.views.append(view)
        chat = self.query_one("#chat", VerticalScroll)
        chat.mount(view)
        view.show()
        self._follow(chat)
        self._show_details(None)
        self.generating = True
        self._sync_buttons()
        self._generation = self.run_generation(len(self.turns) - 1, name, prompt, cfg)

    @work(thread=True, exclusive=True, group="generate")
    def run_generation(self, index: int, name: str, prompt: str, cfg: SamplingConfig) -> None:
        """Stream a continuation; Stop (or Clear) cancels this worker, whose cancellation the engine
        checks before every token."""
        cancel = get_current_worker().cancelled_event
        try:
            model, tokenizer_name = self._load_model(name, index)
            tokenizer = get_tokenizer(tokenizer_name)
            s = stream(model, tokenizer, prompt, cfg, cancel=cancel, details=True)
            batch: list[TokenEvent] = []
            last = time.monotonic()
            for event in s:
                batch.append(event)
                now = time.monotonic()
                if now - last >= FLUSH_SECONDS:
                    self.post_message(GenerationChunk(index, batch))
                    batch, last = [], now
                if cancel.is_set():
                    s.close()
                    break
            if batch:
                self.post_message(GenerationChunk(index, batch))
            self.post_message(GenerationDone(index, s.result))
        except GPTTUIError as exc:
            self.post_message(GenerationDone(index, None, str(exc)))
        except Exception as exc:  # the chat must survive anything the model does
            self.post_message(GenerationDone(index, None, f"{type(exc).__name__}: {exc}"))

    def on_generation_chunk(self, message: GenerationChunk) -> None:
        turn = self.turns[message.turn]
        turn.tokens.extend(message.events)
        self.views[message.turn].show()
        self._follow(self.query_one("#chat", VerticalScroll))

    def on_generation_done(self, message: GenerationDone) -> None:
        turn = self.turns[message.turn]
        turn.result, turn.error = message.result, message.error
        self.views[message.turn].show()
        self.generating = False
        self._sync_buttons()
        self._follow(self.query_one("#chat", VerticalScroll))
        if message.error:
            self.app.notify(message.error, title="Generation failed", severity="error")

    def _follow(self, chat: VerticalScroll) -> None:
        """Stick to the bottom unless the user scrolled up."""
        if chat.max_scroll_y - chat.scroll_y <= 3:
            chat.scroll_end(animate=False)

    def _sync_buttons(self) -> None:
        self.query_one("#send", Button).disabled = self.generating
        self.query_one("#stop", Button).disabled = not self.generating

    # -- actions
    @on(Button.Pressed, "#stop")
    def action_stop(self) -> None:
        if self.generating and self._generation is not None:
            self._generation.cancel()

    def action_escape(self) -> None:
        """Escape stops a generation; with none going, it takes you back to the prompt."""
        if self.generating:
            self.action_stop()
        else:
            self.action_focus_prompt()

    def action_focus_prompt(self) -> None:
        self.query_one("#prompt", PromptInput).focus()

    def action_clear(self) -> None:
        if self.generating and self._generation is not None:
            self._generation.cancel()
        self.turns, self.views = [], []
        self.query_one("#chat", VerticalScroll).remove_children()
        self._show_details(None)

    def action_copy(self) -> None:
        if not self.turns:
            return
        turn = self.turns[-1]
        self.app.copy_to_clipboard(turn.prompt + turn.text)
        self.app.notify("Copied the last turn to the clipboard.")

    @on(Checkbox.Changed, "#colour")
    def _colour_changed(self, event: Checkbox.Changed) -> None:
        for view in self.views:
            view.colour = event.value
            view.show()
        self.query_one("#token-panel").display = event.value

    def action_toggle_colour(self) -> None:
        box = self.query_one("#colour", Checkbox)
        box.value = not box.value

    def action_select_token(self, delta: int) -> None:
        if not self.views:
            return
        view = self.views[-1]
        tokens = [i for i, t in enumerate(view.turn.tokens) if t.token_id is not None]
        if not tokens:
            return
        if not view.colour:
            self.query_one("#colour", Checkbox).value = True
        pos = tokens.index(view.selected) if view.selected in tokens else (len(tokens) if delta < 0 else -1)
        pos = max(0, min(len(tokens) - 1, pos + delta))
        view.selected = tokens[pos]
        view.show()
        self._show_details(token_details(view.turn.tokens[view.selected], f"token {pos + 1} of {len(tokens)}"))

    def _show_details(self, details: Text | None) -> None:
        """The selected token's numbers under the chat (None: no token selected, the keys that pick one)."""
        widget = self.query_one("#token-details", Static)
        widget.update(details if details is not None else INSPECTOR_HINT)
        widget.set_class(details is None, "hint")
