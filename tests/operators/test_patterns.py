"""PatternDetector agrees with TA-Lib's CDL* functions index by index, and survives pickling mid-stream."""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import talib
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.patterns import LOOKBACK, TALIB_FUNCTION, Pattern, PatternDetector, PatternHit

Bars = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # open, high, low, close


def _signals(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> dict[Pattern, np.ndarray]:
    det = PatternDetector()
    out = {p: np.zeros(len(o), dtype=np.int32) for p in Pattern}
    for i, bar in enumerate(zip(o.tolist(), h.tolist(), lo.tolist(), c.tolist(), strict=True)):
        for hit in det.update(*bar):
            assert out[hit.pattern][i] == 0, f"{hit.pattern} reported twice at bar {i}"
            out[hit.pattern][i] = hit.signal
    return out


def _talib(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> dict[Pattern, np.ndarray]:
    return {p: getattr(talib, TALIB_FUNCTION[p])(o, h, lo, c) for p in Pattern}


def _assert_agree(bars: Bars) -> dict[Pattern, Counter[int]]:
    """Compare every pattern at every index (ours is silent before the lookback, like TA-Lib); return hit counts."""
    ours, ref = _signals(*bars), _talib(*bars)
    counts: dict[Pattern, Counter[int]] = {}
    for p in Pattern:
        diff = np.nonzero(ours[p] != ref[p])[0]
        assert diff.size == 0, (
            f"{TALIB_FUNCTION[p]} disagrees at indices {diff[:10].tolist()}: "
            f"expected {ref[p][diff[:10]].tolist()}, got {ours[p][diff[:10]].tolist()}"
        )
        assert not ref[p][: LOOKBACK[p]].any()
        counts[p] = Counter(int(v) for v in ref[p] if v)
    return counts


def _random_walk(seed: int, n: int, tick: float) -> Bars:
    """Plain noise with a mix of tiny, normal and huge bodies and shadows, on a tick grid (so ties happen)."""
    rng = np.random.default_rng(seed)
    c = 100 + np.cumsum(rng.normal(0, 1, n))
    o = c + rng.normal(0, 0.5, n) * rng.choice([0.05, 1, 3], n)
    up = np.abs(rng.normal(0, 1, n)) * rng.choice([0, 0.1, 1, 3], n)
    dn = np.abs(rng.normal(0, 1, n)) * rng.choice([0, 0.1, 1, 3], n)
    o, c = np.round(o / tick) * tick, np.round(c / tick) * tick
    h = np.round((np.maximum(o, c) + up) / tick) * tick
    lo = np.round((np.minimum(o, c) - dn) / tick) * tick
    return o, h, lo, c


def _motifs(seed: int, n: int, tick: float) -> Bars:
    """Noise bars interleaved with jittered textbook shapes of every pattern, so each one fires many times.

    The jitter is deliberately wide: a motif sometimes misses its pattern by a hair, which exercises
    the boundaries of TA-Lib's thresholds rather than only clear-cut cases.
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, float, float, float]] = []
    price = 100.0

    def j(x: float) -> float:
        return x * rng.uniform(0.7, 1.3)

    def add(o: float, c: float, up: float = 0.0, dn: float = 0.0) -> None:
        nonlocal price
        rows.append((o, max(o, c) + up, min(o, c) - dn, c))
        price = c

    def noise() -> None:
        o = price + rng.normal(0, 0.3)
        add(o, o + rng.normal(0, 1), abs(rng.normal(0, 0.4)), abs(rng.normal(0, 0.4)))

    def doji() -> None:
        add(price, price + rng.normal(0, 0.03), j(0.6), j(0.6))

    def hammer(bull: bool) -> None:  # hammer after a black bar, hanging man after a white one
        add(price + (1 if not bull else -1) * j(1.0), price, j(0.1), j(0.1))
        o = rows[-1][2] + j(0.05) if bull else rows[-1][1] - j(0.05)
        add(o, o + rng.choice([-1, 1]) * j(0.2), rng.choice([0.0, 0.01, 0.1]), j(0.9))

    def inverted(bull: bool) -> None:  # inverted hammer gaps below, shooting star above the prior body
        add(price, price + (-1 if bull else 1) * j(1.0), j(0.1), j(0.1))
        o = rows[-1][2] - j(0.2) if bull else rows[-1][1] + j(0.2)
        add(o, o + rng.choice([-1, 1]) * j(0.2), j(0.9), rng.choice([0.0, 0.01, 0.1]))

    def engulfing(bull: bool) -> None:
        s = 1 if bull else -1
        add(price, price - s * j(0.5), j(0.2), j(0.2))
        o1, c1 = rows[-1][0], rows[-1][3]
        add(c1 - s * rng.choice([0.0, 0.05, 0.3]), o1 + s * rng.choice([0.0, 0.05, 0.3]), j(0.2), j(0.2))

    def harami(bull: bool) -> None:
        s = 1 if bull else -1
        add(price, price - s * j(2.5), j(0.2), j(0.2))
        o1, c1 = rows[-1][0], rows[-1][3]
        lo1, hi1 = min(o1, c1), max(o1, c1)
        a = lo1 + rng.choice([0.0, j(0.5)])  # 0.0: the bodies share their lower end (TA-Lib's ±80)
        b = min(a + j(0.4), hi1)
        if rng.random() < 0.5:
            a, b = b, a
        add(a, b, j(0.3), j(0.3))

    def piercing(bull: bool) -> None:  # piercing line / dark cloud cover
        s = 1 if bull else -1
        add(price, price - s * j(2.5), j(0.2), j(0.2))
        o1, h1, l1, c1 = rows[-1]
        body = abs(c1 - o1)
        o = l1 - j(0.2) if bull else h1 + j(0.2)
        add(o, c1 + s * body * rng.uniform(0.35, 1.05), j(0.2), j(0.2))

    def star(bull: bool) -> None:  # morning / evening star
        s = 1 if bull else -1
        add(price, price - s * j(2.5), j(0.2), j(0.2))
        o1, c1 = rows[-1][0], rows[-1][3]
        o = c1 - s * j(0.3)
        add(o, o + rng.normal(0, 0.15), j(0.2), j(0.2))
        add(price + s * j(0.3), c1 + s * abs(c1 - o1) * rng.uniform(0.15, 0.9), j(0.2), j(0.2))

    def soldiers(bull: bool) -> None:  # three white soldiers / three black crows (after a white bar)
        s = 1 if bull else -1
        if not bull:
            add(price - 1.0, price + j(0.5), j(0.4), j(0.2))
        for _ in range(3):
            o = price - s * j(0.3) if rows else price
            tiny = float(rng.choice([0.0, 0.01, 0.05]))  # soldiers: upper shadow, crows: lower shadow
            add(o, o + s * j(1.2), tiny if bull else j(0.2), j(0.2) if bull else tiny)

    motifs: list[Callable[[], None]] = [noise, noise, doji]
    for bull in (True, False):
        motifs += [partial(m, bull) for m in (hammer, inverted, engulfing, harami, piercing, star, soldiers)]
    while len(rows) < n:
        motifs[rng.integers(len(motifs))]()
        for _ in range(rng.integers(0, 3)):
            noise()
    a = np.round(np.array(rows[:n]) / tick) * tick
    return a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(), a[:, 3].copy()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("tick", [0.01, 0.05, 1.0])
def test_random_walk_agrees_with_talib(seed: int, tick: float) -> None:
    _assert_agree(_random_walk(seed, 5000, tick))


def test_every_pattern_fires_on_motif_series_and_agrees_with_talib() -> None:
    total: dict[Pattern, Counter[int]] = {p: Counter() for p in Pattern}
    for seed in range(4):
        for tick in (0.01, 0.05):
            for p, c in _assert_agree(_motifs(seed, 5000, tick)).items():
                total[p] += c
    hits = {p.value: sum(c.values()) for p, c in total.items()}
    assert all(n >= 200 for n in hits.values()), hits
    # Both directions of the two-sided patterns, including TA-Lib's ±80 "bodies match on one end" case.
    assert {100, 80, -80, -100} <= set(total[Pattern.ENGULFING]), total[Pattern.ENGULFING]
    assert {100, 80, -80, -100} <= set(total[Pattern.HARAMI]), total[Pattern.HARAMI]


_small_bar = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 3), st.integers(0, 3))  # open close up dn


@settings(max_examples=300, deadline=None)
@given(st.lists(_small_bar, min_size=2, max_size=60))
def test_small_integer_prices_agree_with_talib(raw: list[tuple[int, int, int, int]]) -> None:
    """Coarse prices make equal opens, closes and thresholds common: the strict/non-strict edges must match."""
    o = np.array([float(a) for a, _, _, _ in raw])
    c = np.array([float(b) for _, b, _, _ in raw])
    h = np.maximum(o, c) + np.array([float(u) for _, _, u, _ in raw])
    lo = np.minimum(o, c) - np.array([float(d) for _, _, _, d in raw])
    _assert_agree((o, h, lo, c))


def test_pickle_mid_stream_continues_identically() -> None:
    o, h, lo, c = _motifs(7, 600, 0.05)
    bars = list(zip(o.tolist(), h.tolist(), lo.tolist(), c.tolist(), strict=True))
    for k in (0, 5, 12, 13, 250):
        live = PatternDetector()
        for bar in bars[:k]:
            live.update(*bar)
        restored = pickle.loads(pickle.dumps(live))
        assert [live.update(*b) for b in bars[k:]] == [restored.update(*b) for b in bars[k:]]


def test_warm_up_and_value() -> None:
    det = PatternDetector()
    doji = (PatternHit(Pattern.DOJI, 100),)
    seen = [det.update(10.0, 10.5, 9.5, 10.0) for _ in range(13)]  # a doji every bar, reported from TA-Lib's lookback
    assert seen == [()] * LOOKBACK[Pattern.DOJI] + [doji] * (13 - LOOKBACK[Pattern.DOJI])
    assert det.value == doji and det.bars == 13 and det.ready
