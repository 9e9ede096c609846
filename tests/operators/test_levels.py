"""Pivot formulas against hand-computed tables; swing detection, merging and the no-look-ahead property."""

from __future__ import annotations

import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.levels import (
    CamarillaPivots,
    ClassicPivots,
    Swing,
    SwingKind,
    SwingLevels,
    camarilla_pivots,
    classic_pivots,
)

# ---- pivots ---------------------------------------------------------------------------------------------------

# H, L, C -> values worked out by hand: P = (H+L+C)/3, R1 = 2P-L, S1 = 2P-H, R2/S2 = P±(H-L), R3 = H+2(P-L), S3 = L-2(H-P)
CLASSIC = [
    ((110.0, 100.0, 105.0), ClassicPivots(p=105.0, r1=110.0, r2=115.0, r3=120.0, s1=100.0, s2=95.0, s3=90.0)),
    # P = 139/3 = 46.333…; R1 = 92.666…-44; S1 = 92.666…-50; R2 = P+6; S2 = P-6; R3 = 50+2*2.333…; S3 = 44-2*3.666…
    ((50.0, 44.0, 45.0), ClassicPivots(46.333333, 48.666667, 52.333333, 54.666667, 42.666667, 40.333333, 36.666667)),
    # a flat session collapses every level onto the price
    ((20.0, 20.0, 20.0), ClassicPivots(20.0, 20.0, 20.0, 20.0, 20.0, 20.0, 20.0)),
]

# R_n/S_n = C ± (H-L)*1.1/d, d = 12, 6, 4, 2
CAMARILLA = [
    # (H-L)*1.1 = 11: 11/12 = 0.91666…, 11/6 = 1.8333…, 11/4 = 2.75, 11/2 = 5.5
    ((110.0, 100.0, 105.0), CamarillaPivots(105.916667, 106.833333, 107.75, 110.5, 104.083333, 103.166667, 102.25, 99.5)),
    # (H-L)*1.1 = 6.6: 0.55, 1.1, 1.65, 3.3
    ((50.0, 44.0, 45.0), CamarillaPivots(45.55, 46.1, 46.65, 48.3, 44.45, 43.9, 43.35, 41.7)),
]


def _fields(obj: ClassicPivots | CamarillaPivots) -> list[float]:
    return [getattr(obj, name) for name in obj.__slots__]


@pytest.mark.parametrize(("hlc", "expected"), CLASSIC)
def test_classic_pivots(hlc: tuple[float, float, float], expected: ClassicPivots) -> None:
    assert _fields(classic_pivots(*hlc)) == pytest.approx(_fields(expected), abs=1e-6)


@pytest.mark.parametrize(("hlc", "expected"), CAMARILLA)
def test_camarilla_pivots(hlc: tuple[float, float, float], expected: CamarillaPivots) -> None:
    assert _fields(camarilla_pivots(*hlc)) == pytest.approx(_fields(expected), abs=1e-6)


@pytest.mark.parametrize("hlc", [(10.0, 11.0, 10.5), (10.0, 9.0, 10.5), (10.0, 9.0, 8.0), (10.0, 9.0, math.nan)])
def test_pivots_refuse_an_impossible_session(hlc: tuple[float, float, float]) -> None:
    for fn in (classic_pivots, camarilla_pivots):
        with pytest.raises(ValueError, match="low <= close <= high"):
            fn(*hlc)


def test_pivot_results_are_frozen() -> None:
    piv = classic_pivots(110.0, 100.0, 105.0)
    with pytest.raises(AttributeError):
        piv.p = 1.0  # type: ignore[misc]


# ---- swing detection ------------------------------------------------------------------------------------------


def _run(left: int, right: int, highs: list[float], lows: list[float]) -> list[tuple[str, int, float, int]]:
    sw = SwingLevels(left=left, right=right)
    out = []
    for h, lo in zip(highs, lows, strict=True):
        out += [(s.kind.value, s.index, s.price, s.confirmed_at) for s in sw.update(h, lo)]
    return out


FLAT = [0.0] * 9  # equal lows never make a swing low, so only highs show up

SWINGS = [
    pytest.param(1, 1, [1, 3, 2, 1, 1, 1, 1, 1, 1], FLAT, [("high", 1, 3.0, 2)], id="single-peak"),
    pytest.param(2, 2, [1, 2, 5, 3, 2, 1, 1, 1, 1], FLAT, [("high", 2, 5.0, 4)], id="confirmed-right-bars-later"),
    pytest.param(1, 1, [1, 3, 3, 1, 1, 1, 1, 1, 1], FLAT, [], id="flat-top-tie-is-not-a-swing"),
    pytest.param(2, 1, [3, 1, 3, 1, 1, 1, 1, 1, 1], FLAT, [], id="tie-anywhere-in-left-window"),
    pytest.param(1, 2, [1, 4, 2, 4, 4, 4, 4, 4, 4], FLAT, [], id="tie-anywhere-in-right-window"),
    pytest.param(2, 2, [1, 9, 1, 1, 1, 3, 1, 1, 1], FLAT, [("high", 5, 3.0, 7)], id="first-left-bars-never-swing"),
    pytest.param(1, 2, [1, 1, 1, 1, 1, 1, 1, 2, 1], FLAT, [], id="last-right-bars-unconfirmed"),
    pytest.param(
        1, 1, [2, 5, 3, 3, 3, 3, 3, 3, 3], [1, 0, 2, 2, 2, 2, 2, 2, 2], [("high", 1, 5.0, 2), ("low", 1, 0.0, 2)],
        id="outside-bar-is-both-high-first",
    ),
    pytest.param(
        1, 1, [5, 5, 5, 5, 5, 5, 5, 5, 5], [3, 1, 3, 2, 3, 3, 3, 3, 3], [("low", 1, 1.0, 2), ("low", 3, 2.0, 4)],
        id="swing-lows",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("left", "right", "highs", "lows", "expected"), SWINGS)
def test_swing_detection(
    left: int, right: int, highs: list[float], lows: list[float], expected: list[tuple[str, int, float, int]]
) -> None:
    assert _run(left, right, highs, lows) == expected


def _peaks(prices: list[float], **kw: float) -> SwingLevels:
    """Each price becomes an isolated swing high (left = right = 1), in order: bar 2k+1 for the k-th price."""
    sw = SwingLevels(left=1, right=1, **kw)  # type: ignore[arg-type]
    highs = [1.0]
    for p in prices:
        highs += [p, 1.0]
    for h in highs:
        sw.update(h, 0.0)
    return sw


def _summary(sw: SwingLevels) -> list[tuple[float, int]]:
    return [(round(lvl.price, 9), lvl.touches) for lvl in sw.levels]


MERGES = [
    pytest.param([100.0, 100.9], 0.01, 10, [(100.45, 2)], id="within-tolerance-merges-to-mean"),
    pytest.param([100.0, 101.0], 0.01, 10, [(100.5, 2)], id="exactly-at-tolerance-merges"),
    pytest.param([100.0, 101.01], 0.01, 10, [(101.01, 1), (100.0, 1)], id="just-outside-stays-apart"),
    pytest.param([100.0, 102.0, 101.2], 0.015, 10, [(101.6, 2), (100.0, 1)], id="nearest-level-wins"),
    pytest.param([100.0, 102.0, 101.0], 0.015, 10, [(101.5, 2), (100.0, 1)], id="equal-distance-most-recent-wins"),
    pytest.param([100.0, 102.0, 100.0], 0.015, 10, [(100.0, 2), (102.0, 1)], id="merge-moves-level-to-front"),
    # 101.2 is 1.2 from 100 (apart at 1%); 100.7 joins it and the mean 100.95 lands within 1% of 100: still two levels
    pytest.param([100.0, 101.2, 100.7], 0.01, 10, [(100.95, 2), (100.0, 1)], id="no-cascade-after-mean-moves"),
    pytest.param([10.0, 20.0, 30.0, 20.1, 40.0], 0.01, 3, [(40.0, 1), (20.05, 2), (30.0, 1)], id="evicts-least-recent"),
    pytest.param([100.0, 100.0], 0.0, 10, [(100.0, 2)], id="zero-tolerance-merges-only-equal"),
]


@pytest.mark.parametrize(("prices", "tolerance", "max_levels", "expected"), MERGES)
def test_level_merging(prices: list[float], tolerance: float, max_levels: int, expected: list[tuple[float, int]]) -> None:
    assert _summary(_peaks(prices, tolerance=tolerance, max_levels=max_levels)) == expected


def test_level_remembers_sides_and_span() -> None:
    sw = SwingLevels(left=1, right=1, tolerance=0.01)
    for h, lo in [(5, 4), (10, 6), (7, 5), (11, 10.5), (11.5, 10.05), (13, 11), (12, 11.5), (12.5, 12)]:
        sw.update(h, lo)
    # high 10 @1, low 5 @2, low 10.05 @4 (within 1% of 10: same level, role reversal), high 13 @5
    assert [(lvl.touches, lvl.high_touches, lvl.low_touches, lvl.first_index, lvl.last_index) for lvl in sw.levels] == [
        (1, 1, 0, 5, 5),
        (2, 1, 1, 1, 4),
        (1, 0, 1, 2, 2),
    ]
    assert [lvl.price for lvl in sw.levels] == pytest.approx([13.0, 10.025, 5.0])
    assert sw.support_below(11.0) == sw.levels[1].price and sw.resistance_above(11.0) == 13.0
    assert sw.support_below(5.0) is None and sw.resistance_above(13.0) is None


@pytest.mark.parametrize("kw", [{"left": 0}, {"right": 0}, {"max_levels": 0}, {"tolerance": -0.1}, {"tolerance": math.nan}])
def test_bad_parameters_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="expected left >= 1"):
        SwingLevels(**kw)  # type: ignore[arg-type]


def test_pickle_mid_stream() -> None:
    bars = [(10 + (i * 7 % 5), 8 + (i * 3 % 4)) for i in range(60)]
    live = SwingLevels(left=2, right=1, max_levels=4, tolerance=0.05)
    for h, lo in bars[:23]:
        live.update(h, lo)
    restored = pickle.loads(pickle.dumps(live))
    assert [live.update(*b) for b in bars[23:]] == [restored.update(*b) for b in bars[23:]]
    assert live.levels == restored.levels


# ---- no look-ahead --------------------------------------------------------------------------------------------


def _offline_swings(highs: list[float], lows: list[float], left: int, right: int) -> set[tuple[SwingKind, int]]:
    """Brute force over a finished series: only bars whose whole window lies inside it."""
    out = set()
    for j in range(left, len(highs) - right):
        window = range(j - left, j + right + 1)
        if all(highs[j] > highs[k] for k in window if k != j):
            out.add((SwingKind.HIGH, j))
        if all(lows[j] < lows[k] for k in window if k != j):
            out.add((SwingKind.LOW, j))
    return out


@settings(max_examples=300, deadline=None)
@given(
    bars=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 3)), min_size=1, max_size=80),
    left=st.integers(1, 3),
    right=st.integers(1, 3),
    max_levels=st.integers(1, 5),
    tolerance=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_swings_never_use_bars_not_yet_seen(
    bars: list[tuple[int, int]], left: int, right: int, max_levels: int, tolerance: float
) -> None:
    """After every bar n, the confirmed swings are exactly those provable from bars 0..n, each confirmed right bars later."""
    highs = [float(h + 4) for h, _ in bars]
    lows = [float(h + 4 - r) for h, r in bars]
    sw = SwingLevels(left=left, right=right, max_levels=max_levels, tolerance=tolerance)
    seen: set[tuple[SwingKind, int]] = set()
    for n, (h, lo) in enumerate(zip(highs, lows, strict=True)):
        new: tuple[Swing, ...] = sw.update(h, lo)
        for s in new:
            assert s.confirmed_at == n and s.index == n - right
            assert s.price == (highs if s.kind is SwingKind.HIGH else lows)[s.index]
        seen |= {(s.kind, s.index) for s in new}
        assert seen == _offline_swings(highs[: n + 1], lows[: n + 1], left, right)
        assert len(sw.levels) <= max_levels
        assert all(lvl.first_index <= lvl.last_index <= n - right for lvl in sw.levels)
