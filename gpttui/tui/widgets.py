"""Reusable widgets: labelled form fields and a chart that draws from shared, downsampled data."""

from __future__ import annotations

import math
from typing import Iterable, Sequence

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.validation import Function, Integer, Number
from textual.widgets import Input, Label
from textual_plotext import PlotextPlot

from gpttui.core.history import downsample

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
    downsampled to at most ``MAX_CHART_POINTS`` points per series."""

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None, log_y: bool = False) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.log_y = log_y
        self._series: list[tuple[str, list[float], list[float], str]] = []
        self._xlabel = "step"
        self._signature: tuple | None = None

    @property
    def point_count(self) -> int:
        return sum(len(s[1]) for s in self._series)

    def set_series(self, series: Iterable[tuple[str, Sequence[float], Sequence[float]]], xlabel: str = "step") -> None:
        series = list(series)
        signature = (xlabel, tuple((len(xs), xs[-1] if len(xs) else None) for _, xs, _ in series))
        if signature == self._signature:
            return  # nothing new for this chart: skip downsampling and repainting
        self._signature = signature
        data = []
        for i, (label, xs, ys) in enumerate(series):
            pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)] if len(xs) < 2000 else None
            if pairs is not None:
                xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
            xs, ys = downsample(xs, ys, MAX_CHART_POINTS)
            if xs:
                data.append((label, xs, ys, SERIES_COLOURS[i % len(SERIES_COLOURS)]))
        self._series = data
        self._xlabel = xlabel
        self.refresh()

    def render(self):
        plt = self.plt
        plt.clear_data()
        plt.title(self.title)
        plt.xlabel(self._xlabel)
        log = self.log_y and any(s[2] and min(s[2]) > 0 for s in self._series)
        plt.yscale("log" if log else "linear")
        for label, xs, ys, colour in self._series:
            plt.plot(xs, ys, marker="braille", color=colour)
        try:
            return super().render()
        except Exception as exc:  # plotext can trip on odd data; a chart must never take the app down
            return f"{self.title}: cannot draw ({type(exc).__name__})"
