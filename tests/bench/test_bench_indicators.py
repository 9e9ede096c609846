"""Incremental indicators: microseconds per update on the hot path, median of 5 runs.

Each pass drives a fresh indicator over a pre-built random walk (Python floats, so no numpy
boxing is timed) through a bound method, the way the candle-close hook calls it. Baselines,
interleaved in the same run:

* EMA, RSI, ATR: the same arithmetic written inline as a plain function with its state in
  locals/arguments (``ema_step``...) — the ratio is the cost of the object (attribute loads,
  the warm-up branch) over the bare formula.
* MACD, ADX, Bollinger: an empty method with the same signature on a ``__slots__`` object —
  the floor any per-update method call pays.
* IndicatorSet of 10: the same ten indicators called one by one in a hand-written loop —
  the ratio is the set's dispatch overhead.

Run: ``.venv/bin/python -m pytest -q tests/bench/test_bench_indicators.py -o addopts="" -s``
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from operators.indicators import Indicator, IndicatorSet, PriceIndicator, SessionVwap, make_indicator
from tests.bench.harness import measure

N = 100_000  # updates per pass for single indicators
N_SET = 20_000  # bars per pass for the set
SET_SPECS = (
    "ema:9",
    "ema:21",
    "sma:20",
    "rsi:14",
    "macd:12,26,9",
    "bbands:20,2",
    "atr:14",
    "adx:14",
    "supertrend:10,3",
    "vwap",
)  # fmt: skip  (operators.analytics.DEFAULT_INDICATORS: what a timeframe runs in production)


def _bars(n: int) -> tuple[list[float], list[float], list[float], list[float], list[float]]:
    rng = np.random.default_rng(42)
    c = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    o = np.r_[c[0], c[:-1]]
    h = np.maximum(o, c) * (1.0 + np.abs(rng.normal(0.0, 0.003, n)))
    lo = np.minimum(o, c) * (1.0 - np.abs(rng.normal(0.0, 0.003, n)))
    v = rng.integers(100, 10_000, n).astype(float)
    return o.tolist(), h.tolist(), lo.tolist(), c.tolist(), v.tolist()


OPEN, HIGH, LOW, CLOSE, VOL = _bars(N)


def _us_per_update(run: Callable[[], int]) -> float:
    t0 = time.perf_counter()
    n = run()
    return (time.perf_counter() - t0) / n * 1e6


def _drive(spec: str) -> Callable[[], float]:
    def one() -> float:
        ind = make_indicator(spec)
        if isinstance(ind, PriceIndicator):
            update = ind.update

            def run() -> int:
                for x in CLOSE:
                    update(x)
                return N

        else:
            bar = ind.update_bar

            def run() -> int:
                for o, h, lo, c, v in zip(OPEN, HIGH, LOW, CLOSE, VOL, strict=True):
                    bar(o, h, lo, c, v)
                return N

        us = _us_per_update(run)
        assert ind.ready
        return us

    return one


# ---- baselines: the bare arithmetic, or the bare call ----------------------------------------


def ema_step(prev: float, x: float, k: float) -> float:
    return (x - prev) * k + prev


def _ema_baseline() -> float:
    k = 2.0 / 10.0

    def run() -> int:
        prev = CLOSE[0]
        for x in CLOSE:
            prev = ema_step(prev, x, k)
        return N

    return _us_per_update(run)


def rsi_step(state: tuple[float, float, float], x: float, n1: float, inv: float) -> tuple[float, float, float]:
    prev, gain, loss = state
    d = x - prev
    up = d if d > 0.0 else 0.0
    gain = (gain * n1 + up) * inv
    loss = (loss * n1 + (up - d)) * inv
    return x, gain, loss


def _rsi_baseline() -> float:
    n1, inv = 13.0, 1.0 / 14.0

    def run() -> int:
        state = (CLOSE[0], 0.0, 0.0)
        value = 0.0
        for x in CLOSE:
            state = rsi_step(state, x, n1, inv)
            s = state[1] + state[2]
            value = 100.0 * (state[1] / s) if s > 0.0 else 0.0
        assert value == value
        return N

    return _us_per_update(run)


def atr_step(atr: float, prev_close: float, high: float, low: float, n1: float, n: int) -> float:
    tr = high - low
    t = prev_close - high
    if t < 0.0:
        t = -t
    if t > tr:
        tr = t
    t = low - prev_close
    if t < 0.0:
        t = -t
    if t > tr:
        tr = t
    return (atr * n1 + tr) / n


def _atr_baseline() -> float:
    def run() -> int:
        atr, pc = 1.0, CLOSE[0]
        for _o, h, lo, c, _v in zip(OPEN, HIGH, LOW, CLOSE, VOL, strict=True):  # same unpacking as the subject
            atr = atr_step(atr, pc, h, lo, 13.0, 14)
            pc = c
        return N

    return _us_per_update(run)


class _Empty:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def update(self, x: float) -> None:
        pass

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        pass


def _empty_update_baseline() -> float:
    update = _Empty().update

    def run() -> int:
        for x in CLOSE:
            update(x)
        return N

    return _us_per_update(run)


def _empty_bar_baseline() -> float:
    bar = _Empty().update_bar

    def run() -> int:
        for o, h, lo, c, v in zip(OPEN, HIGH, LOW, CLOSE, VOL, strict=True):
            bar(o, h, lo, c, v)
        return N

    return _us_per_update(run)


CASES: dict[str, tuple[str, Callable[[], float], str, float | None]] = {
    # name: (spec, baseline, baseline name, target µs/update)
    "ema": ("ema:9", _ema_baseline, "plain function ema_step(prev, x, k)", 1.0),
    "rsi": ("rsi:14", _rsi_baseline, "plain function rsi_step(state, x) + value", None),
    "macd": ("macd:12,26,9", _empty_update_baseline, "empty update(x) method call", None),
    "atr": ("atr:14", _atr_baseline, "plain function atr_step(...)", None),
    "adx": ("adx:14", _empty_bar_baseline, "empty update_bar(o,h,l,c,v) method call", None),
    "bbands": ("bbands:20,2", _empty_update_baseline, "empty update(x) method call", None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_indicator_update_cost(name: str) -> None:
    spec, baseline, baseline_name, target = CASES[name]
    result = measure(
        f"indicator_{name}_update",
        unit="us/update",
        fn=_drive(spec),
        runs=5,
        baseline=baseline,
        baseline_name=baseline_name,
        target=target,
        higher_is_better=False,
        params={"spec": spec, "updates_per_run": N, "input": "random walk, Python floats, bound method"},
    )
    result.write()
    if result.target is not None:
        assert result.target["met"], f"{name}: {result.figure:.3f} us/update, target {target}"


def _set_pass() -> float:
    s = IndicatorSet(SET_SPECS)
    on_bar = s.on_bar

    def run() -> int:
        for i in range(N_SET):
            on_bar(OPEN[i], HIGH[i], LOW[i], CLOSE[i], VOL[i], i // 375)
        return N_SET

    us = _us_per_update(run)
    assert s.ready and len(s.snapshot()) == len(s.keys)
    return us


def _set_by_hand() -> float:
    inds: list[Indicator] = [make_indicator(spec) for spec in SET_SPECS]
    closes = [i.update for i in inds if isinstance(i, PriceIndicator)]
    bars = [i.update_bar for i in inds if not isinstance(i, PriceIndicator | SessionVwap)]
    vwaps = [i for i in inds if isinstance(i, SessionVwap)]

    def run() -> int:
        for i in range(N_SET):
            o, h, lo, c, v = OPEN[i], HIGH[i], LOW[i], CLOSE[i], VOL[i]
            for f in closes:
                f(c)
            for g in bars:
                g(o, h, lo, c, v)
            for w in vwaps:
                w.update_bar(o, h, lo, c, v, i // 375)
        return N_SET

    return _us_per_update(run)


def test_indicator_set_on_bar_cost() -> None:
    result = measure(
        "indicator_set10_on_bar",
        unit="us/bar",
        fn=_set_pass,
        runs=5,
        baseline=_set_by_hand,
        baseline_name="the same 10 indicators called directly in a hand-written loop",
        higher_is_better=False,
        params={"specs": list(SET_SPECS), "bars_per_run": N_SET},
    )
    snap = IndicatorSet(SET_SPECS)
    for i in range(200):
        snap.on_bar(OPEN[i], HIGH[i], LOW[i], CLOSE[i], VOL[i], 0)
    t0 = time.perf_counter()
    for _ in range(10_000):
        snap.snapshot()
    result.extra["snapshot_us"] = (time.perf_counter() - t0) / 10_000 * 1e6
    result.extra["snapshot_keys"] = len(snap.keys)
    result.write()
