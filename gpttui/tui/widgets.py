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
from rich.text import Text
from textual_plotext import PlotextPlot

from gpttui.core.history import Column, downsample
from gpttui.core.smooth import ema_array
from gpttui.tui import axes

MAX_CHART_POINTS = 400
# Series colours, in order; the title row's key names them (plotext's legend would cover the curves).
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

    The title row takes the canvas' background (plotext paints its own lines with the theme's surface).

    Each series is ``(label, xs, ys)`` or ``(label, xs, ys, colour)``; with ``legend`` the labels go to
    plotext's legend (top left); with ``key`` they follow the title, each in its colour (one row, present
    before the first point); otherwise the title names the colours. The title row is drawn here, so a
    chart keeps its title at any size.
    """

    DEFAULT_CSS = """
    MetricChart {
        background: $surface;
    }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None, log_y: bool = False,
                 smoothing: float = 0.0, legend: bool = False, key: bool = False) -> None:
        super().__init__(id=id, classes=classes)
        self.key = key
        self.axes: dict | None = None  # the last render's limits and ticks (tests read them)
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

    def _suffix(self, hidden: int, log: bool, sep: str = " · ") -> str:
        """What the toggles do to the curves, for the title row."""
        parts = []
        if self.smoothing:
            parts.append(f"EMA {self.smoothing:g}")
        if log:
            parts.append("log" + (f" ({hidden} ≤0 hidden)" if hidden else ""))
        elif self.log_y and self._series:
            parts.append("log off: no value > 0")
        return "".join(sep + p for p in parts)

    def header(self, hidden: int, log: bool, width: int) -> Text:
        """The title row, drawn here rather than by plotext (which drops a title wider than its
        canvas): the title, the toggles' state, and with ``key`` each series' label in its colour. At
        any width the title keeps its first letters and the key its colours; the title gives way first."""
        keys = [(label, _rich_colour(colour)) for label, colour in self._labels()] if self.key else []
        for gap, sep in (("  ", " · "), (" ", " · "), ("", " · "), ("", " ")):  # narrower: gaps go first,
            suffix = self._suffix(hidden, log, sep)  # then the title's letters
            key_len = sum(len(gap) + 1 + len(label) for label, _ in keys) + (not gap and bool(keys))
            if len(self.title) + len(suffix) + key_len <= width:
                break
        room = width - len(suffix) - key_len
        title = self.title
        if len(title) > room:
            title = title[:max(3, room - 1)] + "…"
        text = Text(title, style="bold")
        text.append(suffix)
        for i, (label, colour) in enumerate(keys):
            text.append(f"{gap or (' ' if i == 0 else '')}━", style=colour)
            text.append(label)
        if text.cell_len > width:
            text.truncate(width, overflow="ellipsis")
        text.pad_left(max(0, (width - text.cell_len) // 2))
        return text

    def _labels(self) -> list[tuple[str, object]]:
        """(label, colour) of every named series, drawn or not yet (a legend present from the start)."""
        out = []
        for i, item in enumerate(self._raw):
            colour = item[3] if len(item) > 3 else SERIES_COLOURS[i % len(SERIES_COLOURS)]
            if item[0]:
                out.append((item[0], colour))
        return out

    def render(self):
        drawn, hidden = self._series, 0
        if self.log_y:
            drawn, hidden = _positive(self._series)
        log = self.log_y and bool(drawn)
        if not log:
            drawn, hidden = self._series, 0
        self.hidden_points = hidden
        width, height = self.size.width, self.size.height
        head = self.header(hidden, log, width)
        try:
            plot = self._build(drawn, log, width, max(1, height - 1))
        except Exception as exc:  # plotext can trip on odd data; a chart must never take the app down
            return Text(f"{self.title}: cannot draw ({type(exc).__name__})")
        return Text("\n").join([head, plot])

    def _build(self, drawn: list[tuple], log: bool, width: int, height: int) -> Text:
        """The chart under the title row, drawn from scratch (plotext keeps its canvas between builds:
        never build twice without clearing), on axes decided by :mod:`gpttui.tui.axes`."""
        plt = self.plt
        plt.clear_data()
        plt.xlabel(self._xlabel)
        plt.title("")
        plt.yscale("log" if log else "linear")
        self._axes(drawn, log, width, height)
        for label, xs, ys, colour in drawn:
            if self.legend:
                plt.plot(xs, ys, marker="braille", color=colour, label=label or " ")
            else:
                plt.plot(xs, ys, marker="braille", color=colour)
        plt.plotsize(width, height)
        plt._set_size(width, height)  # textual-plotext does both (its issue #5)
        plt.theme(self._get_plotext_theme_name(self.app.theme))
        plot = Text.from_ansi(plt.build())
        plot.rstrip()
        return plot

    def _axes(self, drawn: list[tuple], log: bool, width: int, height: int) -> None:
        """Limits and ticks for the series about to be drawn (none: plotext's empty frame)."""
        plt = self.plt
        ys = [y for _, _, series_ys, _ in drawn for y in series_ys]
        xs = [x for _, series_xs, _, _ in drawn for x in series_xs]
        self.axes = None
        if not ys:  # an empty frame (plotext's log scale cannot draw one)
            plt.yscale("linear")
            plt.xlim(0, 1)
            plt.ylim(0, 1)
            plt.xticks([], [])
            plt.yticks([], [])
            return
        rows = height - 4  # less the frame, the x ticks and the x label
        lo, hi = min(ys), max(ys)
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        constant = lo if hi == lo else None
        ylo, yhi = axes.y_range(lo, hi, log)
        need = len(drawn) + 1
        if self.legend and rows >= 2 * need:  # room above the curves for plotext's legend (top left)
            yhi = ylo + (yhi - ylo) * rows / (rows - need)
        max_y = max(2, rows // 2 + 1)
        if log:
            values = axes.log_ticks(ylo, yhi, max_y) if constant is None else [10.0 ** constant]
        else:
            values = axes.y_ticks(ylo, yhi, max_y, constant)
        yticks = axes.snap_ticks(values, ylo, yhi, rows, log)
        ylabels = axes.tick_labels([v for _, v in yticks])
        xlo, xhi = axes.x_range(min(xs), max(xs))
        label_width = max(len(axes.compact_count(xlo)), len(axes.compact_count(xhi))) + 2
        canvas = width - 2 - max((len(label) for label in ylabels), default=0)
        xvalues = axes.x_ticks(xlo, xhi, min(6, max(2, canvas // label_width)))
        plt.xlim(xlo, xhi)
        plt.ylim(ylo, yhi)  # on a log axis plotext takes the limits as log10
        plt.xticks(xvalues, [axes.compact_count(v) for v in xvalues])
        plt.yticks([p for p, _ in yticks], ylabels)
        self.axes = {"x": (xlo, xhi, xvalues), "y": (ylo, yhi, yticks, ylabels), "rows": rows}


def _rich_colour(colour: object) -> str:
    """A plotext colour (a name such as "blue+", an (r, g, b) tuple, a 256-colour index) for Rich."""
    if isinstance(colour, (tuple, list)) and len(colour) == 3:
        return "rgb({},{},{})".format(*colour)
    if isinstance(colour, int):
        return f"color({colour})"
    name = str(colour)
    return f"bright_{name[:-1]}" if name.endswith("+") else name


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
