"""Help screen (F1, ``?``) and the command palette's per-screen commands, both built from live BINDINGS.

Nothing here lists keys by hand: the help screen and the palette read the current screen's bindings
(and the app's), so a key rebound in a screen's ``BINDINGS`` shows up in both at once. What a screen may
add, all optional class attributes (a screen without them still gets a full help and palette):

* ``HELP`` — what the screen is for, then longer explanations (plain text; paragraphs separated by a blank
  line; the first paragraph is the purpose). ``{key:ACTION}`` is replaced by the keys bound to ``ACTION``
  (e.g. ``{key:select_token}``), so the text never names a stale key. Without it, :data:`SCREEN_HELP`'s.
* ``PALETTE`` — ``{action string: (title, help)}``: the palette's words for a binding, where its short
  footer description is not what users type ("import", "probabilities"). Without it, :data:`PALETTE`'s.
* ``check_action`` (Textual's protocol) — an action it returns False or None for is not offered in the
  palette. :data:`APPLIES` adds the app's own knowledge (no Start while a run trains) for screens that
  do not say.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.actions import parse as parse_action
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.dom import DOMNode
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

if TYPE_CHECKING:
    from textual.app import App

# -- key names, as the help screen and the palette print them
KEY_NAMES = {"escape": "Esc", "enter": "Enter", "space": "Space", "delete": "Del", "backspace": "Backspace",
             "tab": "Tab", "left": "←", "right": "→", "up": "↑", "down": "↓", "home": "Home", "end": "End",
             "pageup": "PgUp", "pagedown": "PgDn", "question_mark": "?", "insert": "Ins"}


def key_label(key: str) -> str:
    """``ctrl+left`` → ``Ctrl+←``, ``f6`` → ``F6``, ``d`` → ``d``: the way a person writes a key."""
    *mods, last = key.split("+")
    if last in KEY_NAMES:
        last = KEY_NAMES[last]
    elif re.fullmatch(r"f\d+", last):
        last = last.upper()
    elif len(last) == 1 and mods:
        last = last.upper()
    return "+".join([m.capitalize() for m in mods] + [last])


@dataclass
class KeyEntry:
    """One action and every key bound to it in one namespace (``d`` and ``Del`` both delete)."""

    action: str
    description: str
    tooltip: str = ""
    keys: list[str] = field(default_factory=list)

    @property
    def key_text(self) -> str:
        return ", ".join(self.keys)


def binding_entries(bindings: Iterable[tuple[str, Binding]]) -> list[KeyEntry]:
    """The described bindings, one entry per action, in declaration order. A binding without a
    description is an implementation detail (Textual's ctrl+c); a hidden one (``show=False``) is listed."""
    entries: dict[str, KeyEntry] = {}
    for key, binding in bindings:
        if not binding.description or binding.system:
            continue
        entry = entries.setdefault(binding.action, KeyEntry(binding.action, binding.description, binding.tooltip))
        label = binding.key_display or key_label(key)
        if label not in entry.keys:
            entry.keys.append(label)
    return list(entries.values())


def node_entries(node: DOMNode | type[DOMNode]) -> list[KeyEntry]:
    """A screen's or the app's live bindings (inherited ones and the palette key included); given a
    class (a screen not shown yet), the class's merged BINDINGS."""
    bindings_map = node._merged_bindings if isinstance(node, type) else node._bindings
    return binding_entries((key, b) for key, bindings in bindings_map.key_to_bindings.items() for b in bindings)


def widget_entries(screen: Screen) -> list[KeyEntry]:
    """Keys this project's own widgets on the screen bind with a description (a prompt's history, say);
    Textual's widgets' keys (an Input's editing keys) are the usual ones and are not repeated."""
    seen: set[type] = set()
    entries: list[KeyEntry] = []
    for widget in screen.query("*"):
        cls = type(widget)
        if cls in seen or not cls.__module__.startswith("gpttui.") or "BINDINGS" not in cls.__dict__:
            continue
        seen.add(cls)
        pairs = []
        for item in cls.__dict__["BINDINGS"]:
            binding = item if isinstance(item, Binding) else Binding(*item)
            pairs.extend((key.strip(), binding) for key in binding.key.split(","))
        entries.extend(binding_entries(pairs))
    return entries


def action_name(action: str) -> str:
    """``import('book')`` → ``import``; ``app.switch_mode('train')`` → ``switch_mode``."""
    return parse_action(action)[1]


def keys_for(entries: list[KeyEntry], name: str) -> str:
    return " / ".join(e.key_text for e in entries if action_name(e.action) == name) or "its key"


# -- what each screen is for (a screen's own HELP attribute wins)
SCREEN_HELP = {
    "DatasetScreen": (
        "Dataset: pick the text the model learns from and the book's data settings.\n\n"
        "Type a path in Source and press Enter or Load, or take the built-in corpus (Python's reference "
        "manual). A path is a text file, a .jsonl file (one JSON record per line, its text in a field), a "
        ".parquet file (a text column), a folder of any of them (searched recursively), or a Hugging Face "
        "dataset's folder. The text is read from the field or column named \"text\" (on the command line, "
        "--text-field NAME reads another, and --split NAME picks a dataset's split). The numbers (characters, "
        "tokens, training and validation batches) and the checks update as you change the tokenizer, "
        "context length, stride, batch size and train ratio. The GPT-2 tokenizer needs its two files: F5, then k imports them.\n\n"
        "A large corpus is tokenized once, in shards kept on disk: a bar shows how far it got, its speed and "
        "the time left. Cancel ({key:cancel_tokenize}) stops it and keeps the shards done; Load goes on "
        "from there. A folder's inputs are listed with their documents and tokens, and what went wrong with "
        "any of them (skipped files first)."),
    "TrainScreen": (
        "Train: the model's shape, the optimiser and schedule, and the live monitor of a run.\n\n"
        "Pick a preset or set layers, heads and width; the parameter count and a memory estimate follow. "
        "{key:start} starts a run on the Dataset screen's text. Loss, perplexity, learning rate and "
        "tokens/s are charted against steps or tokens seen ({key:toggle_x}), with an EMA "
        "({key:toggle_ema}) and a log y axis ({key:toggle_log}). The run goes on while you look at other "
        "screens; quitting while it trains asks whether to stop and save first. A run attached from the "
        "Runs screen (F10) is monitored and steered here the same way.\n\n"
        "Book mode (under Optimiser) runs the book's chapter-5 loop exactly: its data order, dropout, AdamW "
        "and printout, so the book's text (the-verdict.txt) with its GPT-2 124M settings prints the book's "
        "table. Warmup, lr decay, grad clip and accumulation, autocast, torch.compile, several processes and "
        "samples at each eval are off while it is on; what you typed there comes back when you turn it off.\n\n"
        "Hardware: the device (auto, cpu, each CUDA GPU with its memory, mps: only what this machine has); "
        "the dtype: fp32, bf16 autocast, or fp16 autocast with loss scaling (GPUs without bf16, such as the "
        "T4 and V100); torch.compile, whose first step compiles the model (about a minute on a GPU, shown "
        "apart and kept out of tokens/s); deterministic kernels: a CPU run resumed from a checkpoint repeats "
        "bit for bit anyway, a CUDA one only with this (and slower). Processes above 1 train with torchrun's "
        "DDP (one process per GPU, or gloo on CPU), always in the background, as `gpttui train --nproc N`. "
        "While a run trains, the status shows its MFU (on a GPU of known peak), its peak memory and the "
        "compile time."),
    "GenerateScreen": (
        "Generate: talk to a checkpoint, an imported GPT-2, or the model being trained.\n\n"
        "Type a prompt and press Enter; the text streams in token by token and {key:stop} stops it. The "
        "sampling settings (temperature, top-k, top-p, repetition penalty, beams, stop strings) and their "
        "presets sit beside the conversation. {key:toggle_colour} colours every token by the probability "
        "the model gave it. The token inspector: {key:select_token} moves from token to token of the "
        "last reply and shows, for the selected one, its probability and the alternatives the model "
        "weighed. ↑/↓ in the prompt recall earlier prompts."),
    "CheckpointsScreen": (
        "Checkpoints: every saved model, with its shape, step, loss, dataset, date and size.\n\n"
        "Highlight one to see its details (and its run's loss curve), then generate with it, continue "
        "training it, rename, delete or export it as the book's model.pth. Imports bring in GPT-2 "
        "weights: the book's .pth, a Hugging Face GPT-2 folder, or GPT-2 downloaded by size, and the "
        "GPT-2 tokenizer files the Dataset screen's GPT-2 tokenizer needs."),
    "RunsScreen": (
        "Runs: every training run of this gpttui home, in this app, in the background, or started with "
        "`gpttui train` in any terminal; live ones first.\n\n"
        "Attach to one and the Train screen (F3) monitors and steers it; pause, resume, save or stop a "
        "live run from here. Mark two or more runs and compare their curves."),
    "CompareScreen": (
        "Compare: the marked runs' loss and perplexity curves overlaid, one colour per run, live while "
        "they train.\n\n"
        "Switch the x axis between steps and tokens seen, smooth with an EMA, or use a log y axis."),
}


def help_text(screen: Screen, entries: list[KeyEntry]) -> tuple[str, str]:
    """The screen's purpose (first paragraph) and the rest, its ``{key:ACTION}`` filled in."""
    text = getattr(screen, "HELP", None) or SCREEN_HELP.get(type(screen).__name__)
    if not text:
        doc = (type(screen).__doc__ or "").strip()
        text = doc.split("\n\n")[0].replace("\n", " ") if doc else f"The {screen_title(screen)} screen."
    text = re.sub(r"\{key:(\w+)\}", lambda m: keys_for(entries, m.group(1)), text)
    purpose, _, rest = text.partition("\n\n")
    return purpose, rest


def screen_title(screen: Screen) -> str:
    name = type(screen).__name__
    return name[:-len("Screen")] if name.endswith("Screen") and name != "Screen" else name


class HelpScreen(ModalScreen):
    """What the screen under it is for and its keys, then the keys that work everywhere; scrolls."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "close", "Close help", priority=True)]

    def __init__(self, target: Screen, app_entries: list[KeyEntry]) -> None:
        super().__init__()
        self.target = target
        common = {e.action for e in node_entries(Screen)} | {e.action for e in node_entries(ModalScreen)}
        own = node_entries(target)
        self.screen_entries = [described(target, e) for e in own if e.action not in common] + widget_entries(target)
        self.mode_entries = [e for e in app_entries if action_name(e.action) == "switch_mode"]
        self.app_entries = ([e for e in app_entries if e not in self.mode_entries]
                            + [e for e in own if e.action in common])
        self.purpose, self.details = help_text(target, self.screen_entries)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box"):
            yield Static(Text(f"Help · {screen_title(self.target)}", style="bold"), id="help-title")
            with VerticalScroll(id="help-body"):
                yield Static(self.render_body(), id="help-text")
            yield Static(Text("Esc, q or F1 closes · ↑/↓ PgUp/PgDn scroll", style="dim"), id="help-hint")

    def on_mount(self) -> None:
        self.query_one("#help-body").focus()

    def render_body(self) -> Group:
        parts: list = [Text(self.purpose)]
        if self.screen_entries:
            parts += [Text(""), Text(f"{screen_title(self.target)} keys", style="bold underline"),
                      keys_table(self.screen_entries)]
        if self.mode_entries:
            parts += [Text(""), Text("Screens", style="bold underline"), keys_table(self.mode_entries)]
        if self.app_entries:
            parts += [Text(""), Text("Everywhere", style="bold underline"), keys_table(self.app_entries)]
        if self.details:
            parts += [Text(""), Text("More", style="bold underline")]
            parts += [Text(p.strip()) for p in self.details.split("\n\n") if p.strip()]
        return Group(*parts)

    def plain_text(self) -> str:
        """The help as text (what tests read)."""
        from rich.console import Console

        console = Console(width=200, record=True, file=io.StringIO())
        console.print(self.render_body())
        return console.export_text()

    def action_close(self) -> None:
        self.dismiss()


def described(screen: Screen, entry: KeyEntry) -> KeyEntry:
    """The entry in the palette's words where they say more than the footer's one word ("EMA")."""
    words = words_for(screen, entry.action)
    if words:
        return KeyEntry(entry.action, words[0], entry.tooltip, entry.keys)
    return entry


def keys_table(entries: list[KeyEntry]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    for entry in entries:
        what = Text(entry.description)
        if entry.tooltip:
            what.append(f" — {entry.tooltip}", style="dim")
        table.add_row(entry.key_text, what)
    return table


def app_help_entries(app: "App") -> list[KeyEntry]:
    """The app's keys, described the way the help lists them (the palette key gets its purpose)."""
    entries = node_entries(app)
    for entry in entries:
        if entry.action == "command_palette":
            entry.description, entry.tooltip = "Command palette", "every action of this screen, searchable"
    return entries


# -- the palette
PALETTE = {
    ("DatasetScreen", "builtin"): ("Use the built-in corpus", "Python's reference manual, shipped with CPython"),
    ("DatasetScreen", "browse"): ("Browse files for a corpus", "A tree of folders and text files"),
    ("TrainScreen", "start"): ("Start training", "Start a run with the settings on screen"),
    ("TrainScreen", "pause"): ("Pause or resume training", "Hold the run between two steps, or go on"),
    ("TrainScreen", "stop"): ("Stop training and save", "Stop after the current step and save a checkpoint"),
    ("TrainScreen", "save"): ("Save a checkpoint now", "The run goes on"),
    ("TrainScreen", "toggle_x"): ("Charts: x axis steps or tokens seen", ""),
    ("TrainScreen", "toggle_ema"): ("Charts: smooth the loss (EMA)", ""),
    ("TrainScreen", "toggle_log"): ("Charts: log y axis", ""),
    ("GenerateScreen", "stop"): ("Stop generating", "End the reply being written"),
    ("GenerateScreen", "clear"): ("Clear the conversation", ""),
    ("GenerateScreen", "copy"): ("Copy the last turn", "Prompt and reply, to the clipboard"),
    ("GenerateScreen", "toggle_colour"): ("Probabilities: colour tokens by probability",
                                          "Each token coloured by the probability the model gave it"),
    ("GenerateScreen", "select_token(-1)"): ("Token inspector: previous token (probabilities, alternatives)", ""),
    ("GenerateScreen", "select_token(1)"): ("Token inspector: next token (probabilities, alternatives)", ""),
    ("CheckpointsScreen", "generate"): ("Generate with the highlighted checkpoint", ""),
    ("CheckpointsScreen", "train"): ("Continue training the highlighted checkpoint", ""),
    ("CheckpointsScreen", "rename"): ("Rename the highlighted checkpoint", ""),
    ("CheckpointsScreen", "delete"): ("Delete the highlighted checkpoint", "Asks first"),
    ("CheckpointsScreen", "export"): ("Export the highlighted checkpoint (book's model.pth)", ""),
    ("CheckpointsScreen", "import('book')"): ("Import GPT-2 weights: the book's .pth file", ""),
    ("CheckpointsScreen", "import('hf')"): ("Import GPT-2 weights: a Hugging Face folder", ""),
    ("CheckpointsScreen", "import('size')"): ("Import GPT-2 weights: download by size (124M…)", ""),
    ("CheckpointsScreen", "import('tokenizer')"): ("Import the GPT-2 tokenizer files",
                                                   "encoder.json and vocab.bpe, for the GPT-2 tokenizer"),
    ("CheckpointsScreen", "refresh"): ("Re-read the checkpoints folder", ""),
    ("RunsScreen", "attach"): ("Attach to the highlighted run", "Monitor and steer it on the Train screen"),
    ("RunsScreen", "command('pause')"): ("Pause the highlighted run", ""),
    ("RunsScreen", "command('resume')"): ("Resume the highlighted run", ""),
    ("RunsScreen", "command('save')"): ("Save the highlighted run now", "It writes a checkpoint and goes on"),
    ("RunsScreen", "command('stop')"): ("Stop the highlighted run", "It saves first"),
    ("RunsScreen", "mark"): ("Mark the highlighted run (for compare)", ""),
    ("RunsScreen", "compare"): ("Compare the marked runs", "Loss and perplexity overlaid, one colour per run"),
    ("CompareScreen", "toggle_x"): ("Compare: x axis steps or tokens seen", ""),
    ("CompareScreen", "toggle_ema"): ("Compare: smooth the curves (EMA)", ""),
    ("CompareScreen", "toggle_log"): ("Compare: log y axis", ""),
    ("CompareScreen", "close"): ("Close the comparison", ""),
}
"""The palette's words for screens that have no ``PALETTE`` attribute: the words users type."""


def _attr(getter: Callable[[Screen], object]) -> Callable[["App", Screen], bool]:
    """A rule reading a screen attribute; a screen that has no such attribute (renamed since) allows it."""
    def rule(app: "App", screen: Screen) -> bool:
        try:
            return bool(getter(screen))
        except (AttributeError, LookupError):
            return True
    return rule


_ckpt_selected = _attr(lambda s: s.selected is not None)
_run_highlighted = _attr(lambda s: s.highlighted_run() is not None)


def _run_in(*states: str) -> Callable[["App", Screen], bool]:
    """The Runs screen's highlighted run is in one of ``states`` (pause a running one, resume a paused one)."""
    return _attr(lambda s: s.runs[s.highlighted_run()].state in states)


APPLIES: dict[tuple[str, str], Callable[["App", Screen], bool]] = {
    ("TrainScreen", "start"): lambda app, s: not app.state.session.running,
    ("TrainScreen", "pause"): lambda app, s: app.state.monitored.running,
    ("TrainScreen", "stop"): lambda app, s: app.state.monitored.running,
    ("TrainScreen", "save"): lambda app, s: app.state.monitored.running,
    ("GenerateScreen", "stop"): _attr(lambda s: s.generating),
    ("GenerateScreen", "copy"): _attr(lambda s: s.turns),
    ("GenerateScreen", "select_token"): _attr(lambda s: s.views),
    **{("CheckpointsScreen", a): _ckpt_selected for a in ("generate", "train", "rename", "delete", "export")},
    **{("RunsScreen", a): _run_highlighted for a in ("attach", "mark")},
    ("RunsScreen", "command('pause')"): _run_in("running"),
    ("RunsScreen", "command('resume')"): _run_in("paused"),
    ("RunsScreen", "command('save')"): _run_in("running", "paused"),
    ("RunsScreen", "command('stop')"): _run_in("starting", "running", "paused"),
    ("RunsScreen", "compare"): _attr(lambda s: len(s.marked) >= 2),
}
"""When a screen's action applies, as far as the app knows, for screens whose ``check_action`` does not say;
keyed by the screen's class name and the action's name, or its whole string where the parameters matter."""


def applies(app: "App", screen: Screen, action: str) -> bool:
    """The screen's ``check_action`` (False or None: not now), then :data:`APPLIES`."""
    _, name, params = parse_action(action)
    if not screen.check_action(name, params):
        return False
    kind = type(screen).__name__
    rule = APPLIES.get((kind, action)) or APPLIES.get((kind, name))
    return rule is None or rule(app, screen)


def words_for(screen: Screen, action: str) -> tuple[str, str] | None:
    """The palette's (title, help) for one of the screen's actions: its ``PALETTE``, else ours."""
    own = getattr(screen, "PALETTE", None) or {}
    return own.get(action) or PALETTE.get((type(screen).__name__, action))


def palette_words(screen: Screen, entry: KeyEntry) -> tuple[str, str]:
    title, help_ = words_for(screen, entry.action) or (entry.description, "")
    help_ = help_ or entry.tooltip
    return title, f"{help_} ({entry.key_text})" if help_ else f"{screen_title(screen)} screen ({entry.key_text})"


def screen_commands(app: "App", screen: Screen) -> Iterator[SystemCommand]:
    """One command per described binding of ``screen`` whose action applies now."""
    for entry in node_entries(screen):
        if entry.action in ("command_palette",) or not applies(app, screen, entry.action):
            continue
        title, help_ = palette_words(screen, entry)
        yield SystemCommand(title, help_, partial(app.run_action, entry.action, screen))


__all__ = ["APPLIES", "HelpScreen", "KeyEntry", "PALETTE", "SCREEN_HELP", "app_help_entries", "applies",
           "binding_entries", "help_text", "key_label", "node_entries", "screen_commands"]
