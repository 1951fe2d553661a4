"""Smoothing a noisy curve for display: the exponential moving average every loss chart can switch on.

:func:`ema` is TensorBoard's debiased EMA: each point is the weighted mean of the points so far, weight
``w**age``, divided by the sum of those weights. So the first point is the first value itself (no pull
towards zero, no lingering start-up bias), a constant series stays constant, and a NaN or inf (a
diverged step, a loss the log wrote as ``null``) is left out of the mean instead of poisoning every
point after it; its own position stays NaN so a chart skips it like the raw value.

It works point by point (not per step of x): a sparse series (one val loss per evaluation) is smoothed
over its own last ~1/(1-w) points, so it lags more in steps than a dense one.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

DEFAULT_EMA_WEIGHT = 0.9
# A block's powers w**-j stay below e**_MAX_EXPONENT, so a block's sums cannot overflow for any value a
# loss or perplexity takes (headroom of ~1e150 over the values themselves).
_MAX_EXPONENT = 345.0


def ema(values: Sequence[float], weight: float = DEFAULT_EMA_WEIGHT) -> list[float]:
    """The debiased exponential moving average of ``values`` (``weight`` in [0, 1): 0 is no smoothing).

    Non-finite values (and ``None``) count as gaps: their position is NaN, the points after them
    average the finite values only (a gap still ages the points before it). Points before the first
    finite value are NaN too.
    """
    return ema_array(values, weight).tolist()


def ema_array(values: Sequence[float], weight: float = DEFAULT_EMA_WEIGHT) -> np.ndarray:
    """:func:`ema` as a float64 array (a chart downsamples it next: no list round trip)."""
    if not 0.0 <= weight < 1.0 or math.isnan(weight):
        raise ValueError(f"EMA weight must be in [0, 1), not {weight!r}")
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(y)
    if weight == 0.0 or y.size == 0:
        return np.where(finite, y, np.nan)
    u = np.where(finite, y, 0.0) * (1.0 - weight)  # each value's share of the running sum ...
    m = finite * (1.0 - weight)  # ... and of the running total weight (debiasing)
    num, den = _linear_recurrence(u, weight), _linear_recurrence(m, weight)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~finite] = np.nan
    return out


def _linear_recurrence(u: np.ndarray, w: float) -> np.ndarray:
    """``x[k] = w * x[k-1] + u[k]`` with ``x[-1] = 0``, vectorised by blocks (a Python loop over a
    200,000-step log costs ~50 ms on each redraw; this is a few ms).

    Inside a block, ``x[k] = w**(k+1) * carry + w**k * cumsum(u[j] * w**-j)``; blocks are short enough
    that ``w**-j`` stays finite."""
    n = u.size
    block = max(1, min(n, int(_MAX_EXPONENT / -math.log(w))))
    k = np.arange(block, dtype=np.float64)
    up = w ** k  # w**k
    down = w ** -k  # w**-k
    out = np.empty(n, dtype=np.float64)
    carry = 0.0
    for start in range(0, n, block):
        chunk = u[start:start + block]
        size = chunk.size
        x = up[:size] * (w * carry + np.cumsum(chunk * down[:size]))
        out[start:start + size] = x
        carry = x[-1]
    return out


__all__ = ["ema", "ema_array", "DEFAULT_EMA_WEIGHT"]
