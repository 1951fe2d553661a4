"""Chart axes as pure functions: ranges, "nice" ticks, their labels, and where plotext draws them.

plotext's own axes read badly in a small terminal: one point gives an x axis of −1 … 1, step ticks
come out fractional (3.2, 6.5), and a y tick label need not sit on the row where a curve of that value
is drawn (a constant lr of 4.00e-04 appeared on the "0.000467" row). These functions decide the axes
instead; :class:`~gpttui.tui.widgets.MetricChart` hands the result to plotext.

Rows: plotext puts a tick on canvas row ``floor(0.5 + (rows-1)·f)`` but a braille point on sub-row
``floor(0.5 + (4·rows-1)·f)`` (4 sub-rows a row), ``f`` being the value's fraction of the y range; the
two disagree near row boundaries. :func:`snap_ticks` therefore places each tick's label on the row where
plotext draws a point of the tick's value, so a label always names a value drawn on its own row.
"""

from __future__ import annotations

import math
from typing import Sequence

BRAILLE_ROWS = 4  # a braille cell is 2 dots wide, 4 high
STEPS = (1.0, 2.0, 5.0)


def nice_step(raw: float, integer: bool = False) -> float:
    """The smallest 1, 2 or 5 × 10^k at least ``raw`` (at least 1 on an integer axis)."""
    if not math.isfinite(raw) or raw <= 0:
        return 1.0
    exp = math.floor(math.log10(raw))
    for base in (*STEPS, 10.0):
        step = base * 10.0 ** exp
        if step >= raw * (1 - 1e-9):
            break
    return max(step, 1.0) if integer else step


def nice_floor(raw: float) -> float:
    """The largest 1, 2 or 5 × 10^k at most ``raw``."""
    if not math.isfinite(raw) or raw <= 0:
        return 1.0
    exp = math.floor(math.log10(raw))
    best = 10.0 ** exp
    for base in STEPS:
        if base * 10.0 ** exp <= raw * (1 + 1e-9):
            best = base * 10.0 ** exp
    return best


def x_range(lo: float, hi: float) -> tuple[float, float]:
    """The x axis for data from ``lo`` to ``hi``: the data's own span, or for one point (or one x) a
    range around it: 0 … 2x for x > 0 (step 1 → 0 … 2, 512 tokens → 0 … 1,024), x … x+1 otherwise."""
    if hi > lo:
        return lo, hi
    return (0.0, 2.0 * lo) if lo > 0 else (lo, lo + 1.0)


def ticks_between(lo: float, hi: float, step: float) -> list[float]:
    """The multiples of ``step`` within [lo, hi] (rounded to the step's precision, so 0.1·3 is 0.3)."""
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    digits = max(0, -math.floor(math.log10(step)) + 1)
    return [round(k * step, digits) for k in range(first, last + 1)]


def x_ticks(lo: float, hi: float, max_ticks: int, integer: bool = True) -> list[float]:
    """Evenly spaced nice ticks within [lo, hi], at most ``max_ticks`` and at least two where the
    range holds two (integers on a step axis)."""
    max_ticks = max(2, max_ticks)
    step = nice_step((hi - lo) / (max_ticks - 1), integer)
    ticks = ticks_between(lo, hi, step)
    while len(ticks) > max_ticks:
        step = nice_step(step * 1.01, integer)
        ticks = ticks_between(lo, hi, step)
    while len(ticks) < 2 and step > max(hi - lo, 1e-300) * 1e-6:  # a range between two round numbers
        smaller = nice_floor(step * 0.99)
        if integer and smaller < 1:
            break
        step = smaller
        ticks = ticks_between(lo, hi, step)
    return ticks


def y_range(lo: float, hi: float, log: bool = False) -> tuple[float, float]:
    """The y axis for data from ``lo`` to ``hi`` (log10 values on a log axis), with a margin so no
    curve runs along the frame; one value ``c`` gets c ± c/2 (a constant lr of 4e-4: 2e-4 … 6e-4),
    in which its row is the middle one."""
    if hi > lo:
        pad = (hi - lo) * 0.08
        return lo - pad, hi + pad
    half = 0.5 if log else (abs(lo) * 0.5 or 1.0)
    return lo - half, lo + half


def y_ticks(lo: float, hi: float, max_ticks: int, constant: float | None = None) -> list[float]:
    """Nice ticks within [lo, hi]; for a constant series the value itself and one step either side
    (its label then reads exactly the value: 4e-4, not 0.000467)."""
    max_ticks = max(2, max_ticks)
    if constant is not None:
        step = nice_floor((hi - lo) / 2) if hi > lo else 1.0
        return [t for t in (constant - step, constant, constant + step) if lo <= t <= hi] or [constant]
    return x_ticks(lo, hi, max_ticks, integer=False)


def log_ticks(lo: float, hi: float, max_ticks: int) -> list[float]:
    """Ticks (real values) for a log axis spanning log10 values ``lo`` … ``hi``: powers of ten, or
    their 1-2-5 multiples, or for a narrow span nice values between, whichever gives ≥ 2 ticks."""
    real_lo, real_hi = 10.0 ** lo, 10.0 ** hi
    for bases in ((1.0,), (1.0, 2.0, 5.0)):
        ticks = [b * 10.0 ** e for e in range(math.floor(lo), math.ceil(hi) + 1) for b in bases]
        ticks = [t for t in ticks if real_lo <= t <= real_hi]
        if 2 <= len(ticks) <= max(2, max_ticks):
            return ticks
    return y_ticks(real_lo, real_hi, max_ticks)


def tick_labels(values: Sequence[float]) -> list[str]:
    """Labels as short as they can be while every one reads back as its value and no two are the
    same: 0.5, 1, 1.5 · 2e-04, 4e-04 · 150, 200."""
    if not values:
        return []
    big = max(abs(v) for v in values)
    scientific = big != 0 and (big < 1e-3 or big >= 1e6)
    for digits in range(0, 10):
        labels = [_format(v, digits, scientific) for v in values]
        exact = all(math.isclose(float(label), v, rel_tol=1e-6, abs_tol=1e-12) for label, v in zip(labels, values))
        if exact and len(set(labels)) == len(labels):
            return labels
    return [_format(v, 6, scientific) for v in values]


def _format(value: float, digits: int, scientific: bool) -> str:
    if scientific:
        return f"{value:.{digits}e}"
    text = f"{value:.{digits}f}"
    return "0" if text in ("-0", "-0.0") else text


def compact_count(value: float) -> str:
    """An x tick label: 950, 1.5k, 12k, 2.5M (exact to the tick; ticks are nice multiples)."""
    v = abs(value)
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= size:
            text = f"{value / size:.2f}".rstrip("0").rstrip(".")
            return text + unit
    if float(value).is_integer():
        return str(int(value))
    return f"{value:g}"


def snap_ticks(values: Sequence[float], lo: float, hi: float, rows: int,
               log: bool = False) -> list[tuple[float, float]]:
    """``(position, value)`` per tick that falls on the canvas: the position (in data units, what
    plotext takes) is the centre of the row where plotext draws a braille point of ``value``; ticks
    landing on a row already taken are dropped. ``lo``/``hi`` are the axis limits (log10 on a log axis)."""
    if rows < 1 or hi <= lo:
        return []
    out: list[tuple[float, float]] = []
    taken: set[int] = set()
    for value in values:
        v = math.log10(value) if log else value
        row = drawn_row(v, lo, hi, rows)
        if row is None or row in taken:
            continue
        taken.add(row)
        position = lo + row * (hi - lo) / (rows - 1) if rows > 1 else (lo + hi) / 2
        out.append((10.0 ** position if log else position, value))
    return out


def drawn_row(value: float, lo: float, hi: float, rows: int) -> int | None:
    """The canvas row (0 = bottom) where plotext draws a braille point of ``value``, None if off it."""
    sub_rows = rows * BRAILLE_ROWS
    sub = math.floor(round(0.5 + (sub_rows - 1) * (value - lo) / (hi - lo), 8))
    if not 0 <= sub < sub_rows:
        return None
    return sub // BRAILLE_ROWS
