"""The Train screen's "Hardware" section (issue 15): the device, the precision, torch.compile,
deterministic kernels, the number of training processes, and where the run runs.

The devices are :func:`gpttui.core.devices.list_devices`' (only what this machine has). More than one
process is a torchrun DDP run, a ``gpttui train --nproc N`` process tree of its own: it cannot be a
thread of this app, so while N > 1 the "run where" choice is held at "in the background" (disabled,
with a hint saying why) and the user's own choice comes back when N is 1 again.
"""

from __future__ import annotations

from rich.markup import escape
from textual.app import ComposeResult
from textual.widgets import Checkbox, Input, Label, Select, Static

from gpttui.core.devices import check_processes, device_kind, list_devices
from gpttui.core.errors import GPTTUIError
from gpttui.tui.state import BACKGROUND, IN_APP
from gpttui.tui.widgets import Field, read_field

DTYPE_CHOICES = [("dtype: fp32", "fp32"), ("bf16 autocast", "bf16"), ("fp16 autocast + loss scaling", "fp16")]
COMPILE_HINT = "first step compiles, about a minute on a GPU"
DETERMINISTIC_HINT = "CPU runs are always exact; CUDA ones only with this"
PROCESSES_TOOLTIP = ("training processes on this machine: more than 1 is a torchrun DDP run (one per GPU "
                     "with NCCL; on CPU with gloo), always in the background")
RUN_WHERE_TOOLTIP = ("in this app: a thread of the app; in the background: a `gpttui train` process of its "
                     "own, followed here")


def hardware_widgets() -> ComposeResult:
    """The section, for the settings pane: device, dtype, compile, deterministic, processes, run where."""
    yield Label("Hardware", classes="section")
    yield Select([(choice.label, choice.value) for choice in list_devices()], value="auto", id="device",
                 allow_blank=False, tooltip="the device to train on; auto picks a GPU where there is one")
    yield Select(DTYPE_CHOICES, value="fp32", id="dtype", allow_blank=False,
                 tooltip="fp32; bf16 autocast; fp16 autocast with loss scaling (GPUs without bf16: T4, V100)")
    yield Checkbox("torch.compile", False, id="compile", tooltip=f"torch.compile the model: {COMPILE_HINT}")
    yield Static(COMPILE_HINT, classes="hw-hint")
    yield Checkbox("deterministic", False, id="deterministic",
                   tooltip="deterministic kernels, so a resumed CUDA run repeats bit for bit (slower)")
    yield Static(DETERMINISTIC_HINT, classes="hw-hint")
    yield Field("Processes", 1, id="nproc", minimum=1, tooltip=PROCESSES_TOOLTIP)
    yield Static("", id="nproc-hint", classes="hw-hint hidden")
    yield Select([(f"run {IN_APP}", IN_APP), (f"run {BACKGROUND} (survives closing the app)", BACKGROUND)],
                 value=IN_APP, id="run-where", allow_blank=False, tooltip=RUN_WHERE_TOOLTIP)


def processes_note(n: int, device: str) -> str:
    """What N processes on ``device`` will do (markup), or why they cannot; "" for one process."""
    try:
        check_processes(n, device)
    except GPTTUIError as exc:
        return f"[red]✗ {escape(str(exc))}[/red]"
    if n == 1:
        return ""
    backend = "NCCL, one per GPU" if device_kind(device) == "cuda" else "gloo"
    return f"{n} processes: torchrun DDP ({backend}), so the run goes to the background"


class HardwareSection:
    """Mixin for the Train screen: reads the section and keeps "run where" at "in the background" while
    more than one process is asked for (the screen's Changed handlers call :meth:`sync_processes`)."""

    _where_before_ddp: str | None = None  # the user's "run where" while N > 1 holds it at background

    def processes(self) -> int:
        """The processes asked for, checked against the device; ValueError saying what is wrong."""
        try:
            n = int(read_field(self.query_one("#nproc", Input), "int"))
            check_processes(n, str(self.query_one("#device", Select).value))
        except (ValueError, GPTTUIError) as exc:
            raise ValueError(f"Processes: {exc}") from None
        return n

    def _typed_processes(self) -> int:
        """The number in the field, or 1 while it is not a whole number (then Start says what is wrong)."""
        text = self.query_one("#nproc", Input).value.strip()
        return int(text) if text.isdigit() else 1

    def sync_processes(self) -> None:
        """N > 1: "run where" shows background and is disabled, the hint says why; N = 1: the user's
        choice comes back, editable. Idempotent: a repeated call never forgets the user's choice."""
        n = self._typed_processes()
        where = self.query_one("#run-where", Select)
        ddp = n > 1
        if ddp and self._where_before_ddp is None:
            self._where_before_ddp = str(where.value)
            where.value = BACKGROUND
        elif not ddp and self._where_before_ddp is not None:
            where.value, self._where_before_ddp = self._where_before_ddp, None
        where.disabled = ddp
        note = processes_note(n, str(self.query_one("#device", Select).value))
        hint = self.query_one("#nproc-hint", Static)
        hint.update(note)
        hint.set_class(not note, "hidden")

    def hardware_values(self) -> dict:
        """The TrainConfig fields this section sets."""
        return {"device": str(self.query_one("#device", Select).value),
                "dtype": str(self.query_one("#dtype", Select).value),
                "compile": self.query_one("#compile", Checkbox).value,
                "deterministic": self.query_one("#deterministic", Checkbox).value}
