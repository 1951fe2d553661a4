"""Reusable widgets: labelled form fields and a chart that draws from shared, downsampled data."""

from __future__ import annotations

import math
from array import array
from typing import Iterable, Sequence

import numpy as np

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.validation import Function, Integer, Number
from textual.widgets import Input, Label
from textual_plotext import PlotextPlot

from gpttui.core.history import Column, downsample
from gpttui.core.smooth import ema_array

MAX_CHART_POINTS = 400
# Series colours, in order; chart titles name them (plotext's legend would cover the curves).
SERIES_COLOURS = ("blue+", "green+", "red+")


class Field(Horizontal):
    """A label and an input on one line. ``kind`` is int, float, optional int/float, or text."""

    DEFAULT_CLASSES = "field"

    def __init__(self, label: str, value: object, *, id: str, kind: str = "int", minimum: float | None = None,
                 maximum: float | None = None, placeholder: str = "", tooltip: str | None = None) -> None:
        super().__init__(id=f"{id}-field")
        self.label = label
        self.value = "" if value is None else str(value)
        self.input_id = id
        self.kind = kind
        self.minimum, self.maximum = minimum, maximum
        self.placeholder = placeholder
        self.help = tooltip

    def compose(self) -> ComposeResult:
        validators = []
        optional = self.kind.startswith("optional")
        base = self.kind.removeprefix("optional ")
        if base == "int":
            validators.append(Integer(minimum=self.minimum, maximum=self.maximum))
        elif base == "float":
            validators.append(Number(minimum=self.minimum, maximum=self.maximum))
        if optional:
            validators = [Function(lambda v, vs=tuple(validators): v.strip() == "" or all(x.validate(v).is_valid for x in vs),
                                   "a number, or empty for off")]
        yield Label(self.label, classes="field-label")
        field_input = Input(self.value, id=self.input_id, placeholder=self.placeholder, validators=validators,
                            classes="field-input")
        if self.help:
            field_input.tooltip = self.help
        yield field_input


def read_field(inp: Input, kind: str) -> object:
    """The typed value of a field's input; ValueError with the field's problem when invalid."""
    text = inp.value.strip()
    optional = kind.startswith("optional")
    base = kind.removeprefix("optional ")
    if optional and text == "":
        return None
    if inp.validators:
        result = inp.validate(text)
        if result is not None and not result.is_valid:
            raise ValueError("; ".join(result.failure_descriptions) or "invalid value")
    if base == "int":
        return int(text)
    if base == "float":
        return float(text)
    return inp.value


class MetricChart(PlotextPlot):
    """A plotext chart of one or more series; data is set from outside and drawn at render time,
    downsampled to at most ``MAX_CHART_POINTS`` points per series.

    Two view toggles, set with :meth:`set_view`: ``smoothing`` (an EMA weight, 0 = off; applied to the
    full series before downsampling, so a 200,000-step curve is smoothed step by step, not bucket by
    bucket) and ``log_y`` (points at or below 0 cannot be drawn on a log axis: they are left out and the
    title says how many). The smoothed curve replaces the raw one rather than being drawn over a faint
    copy: a braille cell holds one colour, so a grey raw curve would break the smoothed one wherever
    they cross, and in a compare view it would double the lines per run; the toggle is one key away.

    Each series is ``(label, xs, ys)`` or ``(label, xs, ys, colour)``; with ``legend`` the labels go to
    plotext's legend (top left), otherwise the title names the colours.
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None, log_y: bool = False,
                 smoothing: float = 0.0, legend: bool = False) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.log_y = log_y
        self.smoothing = smoothing
        self.legend = legend
        self._raw: list[tuple] = []
        self._series: list[tuple[str, list[float], list[float], object]] = []
        self._xlabel = "step"
        self._signature: tuple | None = None
        self.hidden_points = 0  # points the last render left out (≤ 0 on a log axis)

    @property
    def point_count(self) -> int:
        return sum(len(s[1]) for s in self._series)

    @property
    def series(self) -> list[tuple[str, list[float], list[float], object]]:
        """What is drawn: (label, xs, ys, colour) per series with points, smoothed and downsampled."""
        return self._series

    def set_series(self, series: Iterable[tuple], xlabel: str = "step") -> None:
        series = [tuple(s) for s in series]
        signature = (xlabel, self.smoothing,
                     tuple((s[0], s[3] if len(s) > 3 else None, len(s[1]), s[1][-1] if len(s[1]) else None,
                            len(s[2])) for s in series))
        if signature == self._signature:
            return  # nothing new for this chart: skip smoothing, downsampling and repainting
        self._signature = signature
        self._raw = series
        self._xlabel = xlabel
        self._prepare()
        self.refresh()

    def set_view(self, *, smoothing: float | None = None, log_y: bool | None = None) -> None:
        """Switch EMA smoothing (weight, 0 = off) and/or the log y axis, and redraw if either changed."""
        changed = False
        if smoothing is not None and smoothing != self.smoothing:
            self.smoothing = smoothing
            if self._signature is not None:  # the same data, now smoothed this way
                self._signature = (self._signature[0], smoothing, self._signature[2])
            self._prepare()
            changed = True
        if log_y is not None and log_y != self.log_y:
            self.log_y = log_y
            changed = True
        if changed:
            self.refresh()

    def _prepare(self) -> None:
        data = []
        for i, item in enumerate(self._raw):
            label, xs, ys = item[:3]
            colour = item[3] if len(item) > 3 else SERIES_COLOURS[i % len(SERIES_COLOURS)]
            xs, ys = _finite_points(xs, ys, self.smoothing)
            if xs:
                data.append((label, xs, ys, colour))
        self._series = data

    def _title(self, hidden: int, log: bool, room: int) -> str:
        """The title, then what the toggles do to the curves; cut to ``room`` characters, the title
        giving way before the toggles' state."""
        parts = []
        if self.smoothing:
            parts.append(f"EMA {self.smoothing:g}")
        if log:
            parts.append("log" + (f" ({hidden} ≤0 hidden)" if hidden else ""))
        elif self.log_y and self._series:
            parts.append("log off: no value > 0")
        suffix = "".join(" · " + p for p in parts)
        if len(self.title) + len(suffix) <= room or room < 6:
            return self.title + suffix
        if room - len(suffix) >= 8:
            return self.title[:room - len(suffix) - 1] + "…" + suffix
        return (self.title + suffix)[:room - 1] + "…"

    def _legend_headroom(self, drawn: list[tuple], log: bool) -> None:
        """Raise the top of the y axis so the legend (top left, a row per series) sits above the curves
        instead of on their first points, as long as the curves keep at least half the rows."""
        rows = self.size.height - 5  # less the title, the frame and the x axis' ticks and label
        need = len(drawn) + 1
        ys = [y for _, _, series_ys, _ in drawn for y in series_ys]
        if not ys or rows < 2 * need:
            self.plt.ylim(None, None)
            return
        lo, hi = min(ys), max(ys)
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        span = (hi - lo) or abs(hi) or 1.0
        top = lo + span * rows / (rows - need)
        self.plt.ylim(lo - span * 0.02, top)  # on a log axis plotext takes the limits as log10

    def render(self):
        drawn, hidden = self._series, 0
        if self.log_y:
            drawn, hidden = _positive(self._series)
        log = self.log_y and bool(drawn)
        if not log:
            drawn, hidden = self._series, 0
        self.hidden_points = hidden
        # plotext drops a title wider than its canvas (the width less the y ticks, known once built):
        # build, and if the title is not there, build again with it cut to the canvas
        room = self.size.width - 2
        for _ in range(3):
            title = self._title(hidden, log, room)
            try:
                rendered = self._build(drawn, log, title)
            except Exception as exc:  # plotext can trip on odd data; a chart must never take the app down
                return f"{self.title}: cannot draw ({type(exc).__name__})"
            plain = rendered.plain
            if title.strip() in plain or "┌" not in plain:
                break
            corner = plain.index("┌") - plain.rfind("\n", 0, plain.index("┌")) - 1  # the y ticks' width
            room = min(room - 4, self.size.width - corner - 4)
        return rendered

    def _build(self, drawn: list[tuple], log: bool, title: str):
        """The chart drawn from scratch (plotext keeps its canvas between builds: never build twice
        without clearing)."""
        plt = self.plt
        plt.clear_data()
        plt.xlabel(self._xlabel)
        plt.title(title)
        plt.yscale("log" if log else "linear")
        if self.legend:
            self._legend_headroom(drawn, log)
        for label, xs, ys, colour in drawn:
            if self.legend:
                plt.plot(xs, ys, marker="braille", color=colour, label=label or " ")
            else:
                plt.plot(xs, ys, marker="braille", color=colour)
        return super().render()


def _finite_points(xs: Sequence[float], ys: Sequence[float], smoothing: float) -> tuple[list[float], list[float]]:
    """The drawable points of a series: smoothed first (when asked), then without NaN/inf (and None),
    then downsampled to ``MAX_CHART_POINTS``."""
    n = min(len(xs), len(ys))
    if n == 0:
        return [], []
    x = _floats(xs, n)
    y = ema_array(_floats(ys, n), smoothing) if smoothing else _floats(ys, n)
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.all():
        x, y = x[keep], y[keep]
    if x.size <= MAX_CHART_POINTS:
        return x.tolist(), y.tolist()
    return downsample(x, y, MAX_CHART_POINTS)


def _floats(values: Sequence[float], n: int) -> np.ndarray:
    """The first ``n`` values as float64 (``None`` as NaN). A history's columns (``Column``, ``array``)
    hand over their buffer in one copy; for a list of Python numbers np.fromiter is twice as fast as
    np.asarray."""
    if isinstance(values, np.ndarray):
        return values[:n].astype(np.float64, copy=False)
    if isinstance(values, (Column, array)):
        return np.asarray(values, dtype=np.float64)[:n]
    try:
        return np.fromiter(values, dtype=np.float64, count=n)
    except (TypeError, ValueError):  # a None in the list
        return np.asarray(list(values[:n]), dtype=np.float64)


def _positive(series: list[tuple]) -> tuple[list[tuple], int]:
    """The series with only their points above 0 (what a log axis can show), and how many were left out."""
    kept, hidden = [], 0
    for label, xs, ys, colour in series:
        pairs = [(x, y) for x, y in zip(xs, ys) if y > 0]
        hidden += len(ys) - len(pairs)
        if pairs:
            kept.append((label, [p[0] for p in pairs], [p[1] for p in pairs], colour))
    return kept, hidden
