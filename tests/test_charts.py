"""Chart axes: the pure functions that decide ranges, ticks and labels, and MetricChart's drawn text
(one point, a constant lr, integer step ticks, the title row's key) in a small app at real sizes."""

from __future__ import annotations

import math
import re

import pytest
from textual.app import App, ComposeResult

from gpttui.tui import axes
from gpttui.tui.widgets import MetricChart

BRAILLE = re.compile("[\u2801-\u28ff]")


# --- pure functions --------------------------------------------------------------------------------

def test_nice_steps_are_1_2_5_and_integer_axes_never_go_below_1():
    assert axes.nice_step(0.3) == pytest.approx(0.5)
    assert axes.nice_step(3.2) == 5 and axes.nice_step(11) == 20 and axes.nice_step(2) == 2
    assert axes.nice_step(0.4, integer=True) == 1
    assert axes.nice_floor(3.7e-4) == pytest.approx(2e-4) and axes.nice_floor(1) == 1


def test_one_point_gets_a_sensible_x_range_with_integer_ticks():
    assert axes.x_range(1, 1) == (0, 2)  # not -1 ... 1
    assert axes.x_range(512, 512) == (0, 1024)
    assert axes.x_range(0, 0) == (0, 1)
    assert axes.x_range(3, 61) == (3, 61)
    assert axes.x_ticks(0, 2, 6) == [0, 1, 2]


@pytest.mark.parametrize("lo, hi, n", [(1, 13, 4), (1, 61, 5), (3, 17, 6), (1, 2, 6), (1, 200_000, 5)])
def test_step_ticks_are_integers_within_the_range(lo, hi, n):
    ticks = axes.x_ticks(lo, hi, n)
    assert 1 <= len(ticks) <= n
    assert all(float(t).is_integer() and lo <= t <= hi for t in ticks), ticks
    assert len({round(b - a, 9) for a, b in zip(ticks, ticks[1:])}) <= 1  # evenly spaced


def test_a_range_between_two_round_numbers_still_gets_two_ticks():
    assert len(axes.x_ticks(128, 1664, 4)) >= 2  # tokens seen: 500, 1000, 1500, not 1000 alone
    assert axes.x_ticks(1, 2, 4) == [1, 2]


def test_token_tick_labels_read_as_counts():
    assert [axes.compact_count(v) for v in (0, 950, 1500, 12_000, 2_500_000, 3e9)] == [
        "0", "950", "1.5k", "12k", "2.5M", "3G"]


def test_a_constant_series_gets_a_margin_and_its_own_tick():
    lo, hi = axes.y_range(4e-4, 4e-4)
    assert lo < 4e-4 < hi and lo > 0
    ticks = axes.y_ticks(lo, hi, 3, constant=4e-4)
    assert 4e-4 in ticks
    assert axes.tick_labels(ticks) == ["2e-04", "4e-04", "6e-04"]


def test_a_narrow_range_still_gets_two_ticks():
    lo, hi = axes.y_range(5.47, 5.56)
    ticks = axes.y_ticks(lo, hi, 3)
    assert len(ticks) >= 2 and all(lo <= t <= hi for t in ticks)


def test_labels_are_short_exact_and_distinct():
    assert axes.tick_labels([0.5, 1.0, 1.5]) == ["0.5", "1.0", "1.5"]
    assert axes.tick_labels([150.0, 200.0, 250.0]) == ["150", "200", "250"]
    assert axes.tick_labels([5.5, 5.55]) == ["5.50", "5.55"]
    labels = axes.tick_labels([1e-4, 2e-4, 3e-4])
    assert [float(x) for x in labels] == pytest.approx([1e-4, 2e-4, 3e-4]) and len(set(labels)) == 3


def test_log_ticks_are_round_values():
    assert axes.log_ticks(0, 3, 5) == [1, 10, 100, 1000]
    narrow = axes.log_ticks(math.log10(140), math.log10(260), 4)
    assert len(narrow) >= 2 and all(140 <= t <= 260 for t in narrow)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 12, 20])
def test_snapped_ticks_sit_on_the_row_where_their_value_is_drawn(rows):
    """plotext's tick row (floor(0.5 + (rows-1)·f)) for the snapped position equals the braille
    row of the value itself, for every tick, at every height."""
    lo, hi = 0.00013, 0.00061
    values = [2e-4, 3e-4, 4e-4, 5e-4, 6e-4]
    for position, value in axes.snap_ticks(values, lo, hi, rows):
        tick_row = math.floor(round(0.5 + (rows - 1) * (position - lo) / (hi - lo), 8)) if rows > 1 else 0
        assert tick_row == axes.drawn_row(value, lo, hi, rows), (rows, value)


def test_snapping_on_a_log_axis_takes_and_gives_real_values():
    lo, hi = math.log10(100), math.log10(1000)
    snapped = axes.snap_ticks([100, 200, 500, 1000], lo, hi, 6, log=True)
    assert [v for _, v in snapped] == [100, 200, 500, 1000]
    assert all(100 <= p <= 1000 for p, _ in snapped)


# --- the drawn chart -------------------------------------------------------------------------------

class ChartApp(App):
    def __init__(self, chart: MetricChart) -> None:
        super().__init__()
        self.chart = chart

    def compose(self) -> ComposeResult:
        yield self.chart


def plot_rows(text: str) -> list[tuple[str, str]]:
    """(y label, canvas) of each row inside the chart's frame."""
    rows = []
    for line in text.splitlines():
        m = re.match(r"^(\S*)\s*[┤│](.*)[│├┤]\s*$", line)
        if m and "┌" not in line and "└" not in line:
            rows.append((m.group(1), m.group(2)))
    return rows


async def drawn(chart: MetricChart, size: tuple[int, int], series, xlabel: str = "step") -> str:
    app = ChartApp(chart)
    async with app.run_test(size=size) as pilot:
        chart.set_series(series, xlabel)
        await pilot.pause()
        return chart.render().plain


@pytest.mark.parametrize("size", [(40, 10), (40, 11), (60, 14), (38, 12), (84, 17)])
async def test_a_constant_lr_is_drawn_on_the_row_labelled_with_its_value(size):
    text = await drawn(MetricChart("learning rate"), size, [("lr", list(range(1, 40)), [4e-4] * 39)])
    with_points = [label for label, canvas in plot_rows(text) if BRAILLE.search(canvas)]
    assert len(with_points) == 1, text
    assert with_points[0] and float(with_points[0]) == pytest.approx(4e-4), text


async def test_one_point_gets_x_ticks_0_1_2_and_the_key_is_there():
    chart = MetricChart("loss", key=True)
    text = await drawn(chart, (40, 12), [("step", [1], [5.5]), ("train", [], []), ("val", [], [])])
    first, *rest = text.splitlines()
    assert "loss" in first and "step" in first and "train" in first and "val" in first
    assert chart.axes["x"][:2] == (0, 2) and chart.axes["x"][2] == [0, 1, 2]
    assert "-1" not in text and "0.5" not in "".join(rest[-3:])


async def test_step_ticks_are_integers_on_screen():
    chart = MetricChart("loss", key=True)
    text = await drawn(chart, (50, 12), [("step", list(range(1, 18)), [5 - i / 20 for i in range(17)])])
    tick_line = next(line for line in text.splitlines() if re.search(r"\d", line) and "┤" not in line
                     and "│" not in line and "loss" not in line)
    assert all(t.isdigit() for t in tick_line.split()), tick_line


async def test_tokens_ticks_are_compact():
    chart = MetricChart("loss")
    text = await drawn(chart, (60, 12), [("step", [i * 4096 for i in range(1, 400)], [1.0] * 399)], "tokens seen")
    assert "k" in text.splitlines()[-2] or "M" in text.splitlines()[-2], text


@pytest.mark.parametrize("width", [20, 26, 38, 60])
async def test_title_and_key_stay_at_narrow_widths(width):
    chart = MetricChart("perplexity", key=True, log_y=True)
    text = await drawn(chart, (width, 12), [("", [], []), ("train", [3, 6], [250.0, 240.0]),
                                            ("val", [3, 6], [255.0, 245.0])])
    head = text.splitlines()[0]
    assert head.strip().startswith("per") and "train" in head and "val" in head, head


async def test_the_key_is_there_before_any_point():
    text = await drawn(MetricChart("perplexity", key=True, log_y=True), (40, 12),
                       [("", [], []), ("train", [], []), ("val", [], [])])
    assert "train" in text.splitlines()[0] and "val" in text.splitlines()[0]
