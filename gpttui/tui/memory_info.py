"""The Train screen's memory line (``#memory-info``): the :class:`~gpttui.core.memory.MemoryPlan` of the shape
on the form, worked out in a thread (the first look at a GPU's free memory starts CUDA, which takes a moment),
red with the batch size that fits when it does not fit; the tooltip holds the plan's parts."""

from __future__ import annotations

from rich.text import Text
from textual import work
from textual.widgets import Static
from textual.worker import get_current_worker

from gpttui.core.config import GPTConfig
from gpttui.core.errors import GPTTUIError
from gpttui.core.memory import plan_memory

GROUP = "memory-info"


def memory_line(cfg: GPTConfig, batch: int, context: int, dtype: str, device: str, book: bool) -> tuple[str, bool, str]:
    """(the short line, whether it is a warning, the full description). A device this machine lacks
    (cuda on a laptop) gets the estimate and why nothing is compared."""
    try:
        plan = plan_memory(cfg, batch, context, dtype=dtype, device=device, book_math=book)
        return plan.summary(), plan.fits is False, plan.describe()
    except GPTTUIError as exc:
        plan = plan_memory(cfg, batch, context, dtype=dtype, device=device, book_math=book,
                           device_type=device.partition(":")[0])
        return f"{plan.summary()}; ✗ {exc}", True, plan.describe()


class ShowsMemoryPlan:
    """Mixin for the Train screen (a Screen with a ``#memory-info`` Static)."""

    def show_memory_plan(self, cfg: GPTConfig | None, batch: int, data_context: int | None, dtype: str, device: str,
                         book: bool) -> None:
        """Plan ``cfg`` (None: clear the line) with batches of ``batch`` x ``data_context`` (the model's when
        None or longer: the longer one is refused by #model-info's note)."""
        if cfg is None:
            self._show_memory("", False, "")
            return
        context = cfg.context_length if data_context is None else min(data_context, cfg.context_length)
        self._plan_memory(cfg, batch, context, dtype, device, book)

    @work(thread=True, exclusive=True, group=GROUP, exit_on_error=False)
    def _plan_memory(self, cfg: GPTConfig, batch: int, context: int, dtype: str, device: str, book: bool) -> None:
        shown = memory_line(cfg, batch, context, dtype, device, book)
        if not get_current_worker().is_cancelled:  # superseded: a newer plan answers
            try:
                self.app.call_from_thread(self._show_memory, *shown)
            except RuntimeError:  # the app has ended
                pass

    def _show_memory(self, shown: str, warn: bool, detail: str) -> None:
        widget = self.query_one("#memory-info", Static)
        widget.update(Text(shown))
        widget.set_class(warn, "-warning")
        widget.tooltip = detail or None
