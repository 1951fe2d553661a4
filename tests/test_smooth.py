"""The EMA every loss chart can switch on (gpttui.core.smooth), against a plain loop written from its
definition."""

from __future__ import annotations

import math
import random

import pytest

from gpttui.core.smooth import ema

NAN = float("nan")


def loop_ema(values, w):
    """The definition, point by point: a running weighted sum and total weight, both aged by w at every
    position; a non-finite value adds nothing and reads NaN."""
    num = den = 0.0
    out = []
    for v in values:
        ok = v is not None and math.isfinite(v)
        num = w * num + ((1 - w) * v if ok else 0.0)
        den = w * den + ((1 - w) if ok else 0.0)
        out.append(num / den if ok else NAN)
    return out


def same(a, b, tol=1e-12):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if math.isnan(y):
            assert math.isnan(x)
        else:
            assert x == pytest.approx(y, rel=tol, abs=tol)


def test_first_value_is_the_value_itself_not_pulled_to_zero():
    assert ema([7.5, 1.0], 0.9)[0] == pytest.approx(7.5, rel=1e-15)
    assert ema([7.5], 0.99) == pytest.approx([7.5], rel=1e-15)
    # the second is the weighted mean of both: (0.9 * 0.1 * 7.5 + 0.1 * 1.0) / (0.9 * 0.1 + 0.1)
    assert ema([7.5, 1.0], 0.9)[1] == pytest.approx((0.09 * 7.5 + 0.1) / 0.19)


def test_constant_series_stays_constant():
    for w in (0.0, 0.5, 0.9, 0.999):
        assert ema([3.25] * 5000, w) == pytest.approx([3.25] * 5000, rel=1e-12)


def test_nan_and_inf_are_gaps_that_do_not_poison_what_follows():
    values = [NAN, 4.0, 2.0, NAN, float("inf"), None, 2.0, float("-inf"), 1.0]
    out = ema(values, 0.5)
    assert math.isnan(out[0]) and math.isnan(out[3]) and math.isnan(out[4]) and math.isnan(out[5])
    assert math.isnan(out[7])
    assert out[1] == pytest.approx(4.0, rel=1e-15)  # the first finite value, as it is
    assert all(math.isfinite(out[i]) for i in (1, 2, 6, 8))
    same(out, loop_ema(values, 0.5))
    assert all(math.isnan(v) for v in ema([NAN, NAN], 0.9))


def test_zero_weight_is_the_series_itself_and_bad_weights_are_refused():
    assert ema([1.0, 5.0, 2.0], 0.0) == [1.0, 5.0, 2.0]
    assert ema([], 0.9) == []
    for bad in (1.0, -0.1, 1.5, NAN):
        with pytest.raises(ValueError, match="EMA weight"):
            ema([1.0], bad)


@pytest.mark.parametrize("w", [0.01, 0.3, 0.9, 0.99, 0.999])
def test_long_series_matches_the_definition_across_blocks(w):
    """The vectorised blocks (a few thousand points each for w=0.9) join up exactly."""
    rng = random.Random(w)
    values = [rng.uniform(0.5, 11.0) * (1e3 if i % 997 == 0 else 1.0) for i in range(30_000)]
    for i in (0, 17, 3273, 3274, 12_000):
        values[i] = NAN
    same(ema(values, w), loop_ema(values, w), tol=1e-9)
