"""Price levels: floor-trader and Camarilla pivots from the previous session, and swing support/resistance.

Pivots are pure functions of the previous session's high, low and close:

>>> classic_pivots(110.0, 100.0, 105.0)
ClassicPivots(p=105.0, r1=110.0, r2=115.0, r3=120.0, s1=100.0, s2=95.0, s3=90.0)
>>> camarilla_pivots(110.0, 100.0, 105.0).r4
110.5

:class:`SwingLevels` confirms swing highs/lows as bars arrive and keeps the most recent
levels, merging nearby ones:

>>> sw = SwingLevels(left=1, right=1, tolerance=0.05)
>>> for high, low in [(10, 9), (12, 10), (11, 9.5), (11.5, 9.8), (12.25, 10.5), (11, 10)]:
...     _ = sw.update(high, low)
>>> sw.levels            # 12.25 is within 5% of 12: one level, two touches
(SwingLevel(price=12.125, touches=2, high_touches=2, low_touches=0, first_index=1, last_index=4), \
SwingLevel(price=9.5, touches=1, high_touches=0, low_touches=1, first_index=2, last_index=2))
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["CamarillaPivots", "ClassicPivots", "Swing", "SwingKind", "SwingLevel", "SwingLevels",
           "camarilla_pivots", "classic_pivots"]  # fmt: skip


def _check_session(high: float, low: float, close: float) -> None:
    if not low <= close <= high:  # also refuses NaN
        msg = f"expected low <= close <= high for the previous session, got high={high} low={low} close={close}"
        raise ValueError(msg)


@dataclass(frozen=True, slots=True)
class ClassicPivots:
    """Floor-trader pivots: ``p = (H+L+C)/3``; ``r1 = 2p-L``, ``s1 = 2p-H``; ``r2/s2 = p ± (H-L)``;
    ``r3 = H + 2(p-L)``, ``s3 = L - 2(H-p)``.

    >>> classic_pivots(12.0, 9.0, 9.0).p
    10.0
    """

    p: float
    r1: float
    r2: float
    r3: float
    s1: float
    s2: float
    s3: float


@dataclass(frozen=True, slots=True)
class CamarillaPivots:
    """Camarilla levels around the previous close: ``r_n/s_n = C ± (H-L) * 1.1 / d`` with d = 12, 6, 4, 2.

    >>> camarilla_pivots(12.0, 10.0, 11.0).s4
    9.9
    """

    r1: float
    r2: float
    r3: float
    r4: float
    s1: float
    s2: float
    s3: float
    s4: float


def classic_pivots(high: float, low: float, close: float) -> ClassicPivots:
    """Classic pivots from the previous session; raises ``ValueError`` unless ``low <= close <= high``.

    >>> round(classic_pivots(50.0, 44.0, 45.0).s1, 6)
    42.666667
    """
    _check_session(high, low, close)
    p = (high + low + close) / 3.0
    rng = high - low
    return ClassicPivots(
        p=p, r1=2.0 * p - low, r2=p + rng, r3=high + 2.0 * (p - low),
        s1=2.0 * p - high, s2=p - rng, s3=low - 2.0 * (high - p),
    )  # fmt: skip


def camarilla_pivots(high: float, low: float, close: float) -> CamarillaPivots:
    """Camarilla R1–R4 / S1–S4 from the previous session; raises ``ValueError`` unless ``low <= close <= high``.

    >>> camarilla_pivots(50.0, 44.0, 45.0).s4
    41.7
    """
    _check_session(high, low, close)
    k = (high - low) * 1.1
    return CamarillaPivots(
        r1=close + k / 12.0, r2=close + k / 6.0, r3=close + k / 4.0, r4=close + k / 2.0,
        s1=close - k / 12.0, s2=close - k / 6.0, s3=close - k / 4.0, s4=close - k / 2.0,
    )  # fmt: skip


class SwingKind(StrEnum):
    """Which extreme a swing is: a local high (resistance) or a local low (support).

    >>> SwingKind("low") is SwingKind.LOW
    True
    """

    HIGH = "high"
    LOW = "low"


@dataclass(frozen=True, slots=True)
class Swing:
    """A confirmed swing point: bar ``index`` (0-based count of bars fed) confirmed on bar ``confirmed_at``.

    >>> SwingLevels(left=1, right=1).update(1.0, 0.0)   # nothing can be confirmed on the first bar
    ()
    """

    kind: SwingKind
    index: int
    price: float
    confirmed_at: int


@dataclass(frozen=True, slots=True)
class SwingLevel:
    """A price zone touched by one or more swings; ``price`` is the mean of the touching swing prices.

    >>> SwingLevel(price=10.0, touches=3, high_touches=2, low_touches=1, first_index=4, last_index=40).touches
    3
    """

    price: float
    touches: int
    high_touches: int
    low_touches: int
    first_index: int
    last_index: int


class SwingLevels:
    """Incremental swing-high/swing-low detector feeding a bounded list of support/resistance levels.

    Rules, exactly:

    * Bars are numbered 0, 1, 2, … in the order fed. Bar ``j`` is a **swing high** if its high is
      strictly greater than the high of each of the ``left`` bars before it and each of the ``right``
      bars after it; a **swing low** likewise with lows strictly smaller. A tie with any bar in the
      window disqualifies (a flat top is not a swing). Bars with fewer than ``left`` predecessors are
      never swings. One bar may be both (an outside bar).
    * A swing at bar ``j`` is **confirmed on bar** ``j + right`` — the update that completes the window
      returns it — never earlier, so nothing ever depends on bars not yet fed.
    * Each confirmed swing price ``x`` is **merged** into the existing level nearest to it if
      ``|x - level.price| <= tolerance * level.price`` (equal distances: the most recently touched
      level wins); the level's price becomes the mean of all its swing prices, its touch count grows and
      it becomes the most recent. Otherwise ``x`` starts a new level with one touch. A merge never
      cascades into other levels, even if the moved mean comes within tolerance of one. When a bar
      confirms both a swing high and a swing low, the high is merged first. Highs and lows merge
      alike: a level is a price zone, whichever side touched it (support that was resistance).
    * At most ``max_levels`` levels are kept; adding one more drops the least recently touched.

    ``levels`` lists them most recently touched first. Per bar the cost is O(left + right + max_levels).

    >>> sw = SwingLevels(left=2, right=2, max_levels=5, tolerance=0.01)
    >>> swings = [sw.update(h, h - 1.0) for h in [1, 2, 5, 3, 2, 3, 4]]
    >>> swings[4]
    (Swing(kind=<SwingKind.HIGH: 'high'>, index=2, price=5.0, confirmed_at=4),)
    >>> swings[6]              # the low of bar 4 needed bars 5 and 6
    (Swing(kind=<SwingKind.LOW: 'low'>, index=4, price=1.0, confirmed_at=6),)
    >>> [lvl.price for lvl in sw.levels]
    [1.0, 5.0]
    >>> sw.resistance_above(4.5), sw.support_below(4.5)
    (5.0, 1.0)
    """

    __slots__ = ("_highs", "_levels", "_lows", "bars", "left", "max_levels", "right", "tolerance")

    def __init__(self, left: int = 2, right: int = 2, max_levels: int = 10, tolerance: float = 0.002) -> None:
        if left < 1 or right < 1 or max_levels < 1 or not tolerance >= 0.0:
            msg = (f"expected left >= 1, right >= 1, max_levels >= 1, tolerance >= 0; "
                   f"got left={left} right={right} max_levels={max_levels} tolerance={tolerance}")  # fmt: skip
            raise ValueError(msg)
        self.left, self.right, self.max_levels, self.tolerance = left, right, max_levels, tolerance
        self.bars = 0
        self._highs: deque[float] = deque(maxlen=left + right + 1)
        self._lows: deque[float] = deque(maxlen=left + right + 1)
        self._levels: list[SwingLevel] = []  # most recently touched first

    @property
    def levels(self) -> tuple[SwingLevel, ...]:
        return tuple(self._levels)

    def update(self, high: float, low: float) -> tuple[Swing, ...]:
        """Feed the next bar's high and low; return the swings this bar confirms (usually none)."""
        high, low = float(high), float(low)
        self._highs.append(high)
        self._lows.append(low)
        t = self.bars
        self.bars = t + 1
        if len(self._highs) <= self.left + self.right:
            return ()
        j = t - self.right  # the only bar whose window has just become complete
        found: tuple[Swing, ...] = ()
        hs, ls, c = self._highs, self._lows, self.left
        h, lo = hs[c], ls[c]
        # "Strictly above every other bar in the window" is "the window's max, and only once".
        if h == max(hs) and hs.count(h) == 1:
            found += (Swing(SwingKind.HIGH, j, h, t),)
        if lo == min(ls) and ls.count(lo) == 1:
            found += (Swing(SwingKind.LOW, j, lo, t),)
        for s in found:
            self._merge(s)
        return found

    def _merge(self, s: Swing) -> None:
        x, is_high = s.price, s.kind is SwingKind.HIGH
        best = -1
        best_dist = 0.0
        for k, lvl in enumerate(self._levels):  # recency order, so a strict < keeps the most recent on ties
            dist = abs(x - lvl.price)
            if dist <= self.tolerance * abs(lvl.price) and (best < 0 or dist < best_dist):
                best, best_dist = k, dist
        if best >= 0:
            old = self._levels.pop(best)
            n = old.touches + 1
            lvl = SwingLevel(
                price=(old.price * old.touches + x) / n, touches=n,
                high_touches=old.high_touches + is_high, low_touches=old.low_touches + (not is_high),
                first_index=old.first_index, last_index=s.index,
            )  # fmt: skip
        else:
            lvl = SwingLevel(x, 1, int(is_high), int(not is_high), s.index, s.index)
        self._levels.insert(0, lvl)
        del self._levels[self.max_levels :]

    def support_below(self, price: float) -> float | None:
        """The highest level price strictly below ``price``, if any."""
        return max((lvl.price for lvl in self._levels if lvl.price < price), default=None)

    def resistance_above(self, price: float) -> float | None:
        """The lowest level price strictly above ``price``, if any."""
        return min((lvl.price for lvl in self._levels if lvl.price > price), default=None)
