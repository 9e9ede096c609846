"""Incremental candlestick patterns that agree bar for bar with TA-Lib's ``CDL*`` functions.

A :class:`PatternDetector` is fed one closed bar at a time and returns the patterns that
complete on that bar, with TA-Lib's signal: ``+100`` bullish, ``-100`` bearish, ``±80`` for
an engulfing or harami whose real bodies match on one end, ``+100`` for a (neutral) doji.

How TA-Lib decides "long", "short", "near" (its *candle settings*, defaults of TA-Lib C)::

    setting           range of each candle    period  factor   threshold for candle i
    BodyLong          real body |C-O|         10      1.0      mean body of the 10 candles before i
    BodyShort         real body               10      1.0      same (BodyLong and BodyShort coincide)
    BodyDoji          high-low                10      0.1      10% of the mean range before i
    ShadowLong        real body                0      1.0      candle i's own real body
    ShadowVeryShort   high-low                10      0.1      10% of the mean range before i
    Near              high-low                 5      0.2      20% of the mean range of the 5 before
    Far               high-low                 5      0.6      60% of the same

A threshold is ``factor * (total / period)``, where *total* is a running sum that TA-Lib
starts at each function's lookback and then moves with ``total += new - old``. Float rounding
therefore depends on where the sum started; to match TA-Lib to the last bit by construction
(patterns are ``<`` / ``<=`` tests on these numbers) we keep one running total per (range, period, start) —
nine of them — and, for a threshold about candle ``i-k``, the value that total had ``k`` bars
ago. TA-Lib's total for ``i-k`` that started at lookback ``S`` is bit for bit the ``k``-bars-old
value of the total for ``i`` that started at ``S-k``, which is why nine suffice.

Inputs must be finite. Per bar the work is a fixed number of float operations (no history
scan); no list or tuple is built unless a pattern fires (hits are prebuilt constants).

>>> det = PatternDetector()
>>> bars = [(10.0, 10.6, 9.8, 10.4), (10.4, 10.9, 10.2, 10.5)] * 6      # 12 warm-up bars
>>> bars += [(10.6, 10.7, 9.9, 10.0), (9.9, 10.8, 9.8, 10.7)]           # black, then white engulfing it
>>> [det.update(*bar) for bar in bars][-1]
(PatternHit(pattern=<Pattern.ENGULFING: 'engulfing'>, signal=100),)
>>> det.ready
True
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final, NamedTuple

__all__ = ["LOOKBACK", "TALIB_FUNCTION", "Pattern", "PatternDetector", "PatternHit"]


class Pattern(StrEnum):
    """The recognised patterns; ``TALIB_FUNCTION`` and ``LOOKBACK`` give each one's TA-Lib twin.

    >>> Pattern("morning_star"), TALIB_FUNCTION[Pattern.MORNING_STAR], LOOKBACK[Pattern.MORNING_STAR]
    (<Pattern.MORNING_STAR: 'morning_star'>, 'CDLMORNINGSTAR', 12)
    """

    DOJI = "doji"
    HAMMER = "hammer"
    INVERTED_HAMMER = "inverted_hammer"
    HANGING_MAN = "hanging_man"
    SHOOTING_STAR = "shooting_star"
    ENGULFING = "engulfing"
    HARAMI = "harami"
    PIERCING = "piercing"
    DARK_CLOUD_COVER = "dark_cloud_cover"
    MORNING_STAR = "morning_star"
    EVENING_STAR = "evening_star"
    THREE_WHITE_SOLDIERS = "three_white_soldiers"
    THREE_BLACK_CROWS = "three_black_crows"


class PatternHit(NamedTuple):
    """One pattern completing on the current bar; ``signal`` follows TA-Lib (±100, ±80).

    >>> hit = PatternHit(Pattern.HARAMI, -80)
    >>> hit.pattern.value, hit.signal > 0
    ('harami', False)
    """

    pattern: Pattern
    signal: int


TALIB_FUNCTION: Final[dict[Pattern, str]] = {
    Pattern.DOJI: "CDLDOJI",
    Pattern.HAMMER: "CDLHAMMER",
    Pattern.INVERTED_HAMMER: "CDLINVERTEDHAMMER",
    Pattern.HANGING_MAN: "CDLHANGINGMAN",
    Pattern.SHOOTING_STAR: "CDLSHOOTINGSTAR",
    Pattern.ENGULFING: "CDLENGULFING",
    Pattern.HARAMI: "CDLHARAMI",
    Pattern.PIERCING: "CDLPIERCING",
    Pattern.DARK_CLOUD_COVER: "CDLDARKCLOUDCOVER",
    Pattern.MORNING_STAR: "CDLMORNINGSTAR",
    Pattern.EVENING_STAR: "CDLEVENINGSTAR",
    Pattern.THREE_WHITE_SOLDIERS: "CDL3WHITESOLDIERS",
    Pattern.THREE_BLACK_CROWS: "CDL3BLACKCROWS",
}

# Bars TA-Lib needs before its first output (index of the first bar it can flag).
LOOKBACK: Final[dict[Pattern, int]] = {
    Pattern.DOJI: 10,
    Pattern.HAMMER: 11,
    Pattern.INVERTED_HAMMER: 11,
    Pattern.HANGING_MAN: 11,
    Pattern.SHOOTING_STAR: 11,
    Pattern.ENGULFING: 2,
    Pattern.HARAMI: 11,
    Pattern.PIERCING: 11,
    Pattern.DARK_CLOUD_COVER: 11,
    Pattern.MORNING_STAR: 12,
    Pattern.EVENING_STAR: 12,
    Pattern.THREE_WHITE_SOLDIERS: 12,
    Pattern.THREE_BLACK_CROWS: 13,
}

_DARK_CLOUD_PENETRATION: Final = 0.5  # TA-Lib default optInPenetration
_STAR_PENETRATION: Final = 0.3  # TA-Lib default for morning/evening star

# Hits are immutable, so every possible one is built once.
_DOJI = (PatternHit(Pattern.DOJI, 100),)
_HAMMER = (PatternHit(Pattern.HAMMER, 100),)
_INVERTED_HAMMER = (PatternHit(Pattern.INVERTED_HAMMER, 100),)
_HANGING_MAN = (PatternHit(Pattern.HANGING_MAN, -100),)
_SHOOTING_STAR = (PatternHit(Pattern.SHOOTING_STAR, -100),)
_ENGULFING = {s: (PatternHit(Pattern.ENGULFING, s),) for s in (100, 80, -80, -100)}
_HARAMI = {s: (PatternHit(Pattern.HARAMI, s),) for s in (100, 80, -80, -100)}
_PIERCING = (PatternHit(Pattern.PIERCING, 100),)
_DARK_CLOUD_COVER = (PatternHit(Pattern.DARK_CLOUD_COVER, -100),)
_MORNING_STAR = (PatternHit(Pattern.MORNING_STAR, 100),)
_EVENING_STAR = (PatternHit(Pattern.EVENING_STAR, -100),)
_THREE_WHITE_SOLDIERS = (PatternHit(Pattern.THREE_WHITE_SOLDIERS, 100),)
_THREE_BLACK_CROWS = (PatternHit(Pattern.THREE_BLACK_CROWS, -100),)
_NONE: tuple[PatternHit, ...] = ()

# The nine running totals: (True = real body / False = high-low, period, bar index it starts at).
# Slot names used below: RB10@10, RB10@11, RB10@12, HL10@10, HL10@11, HL10@12, HL10@13, HL5@10, HL5@11.
_TOTALS: Final = (
    (True, 10, 10), (True, 10, 11), (True, 10, 12),
    (False, 10, 10), (False, 10, 11), (False, 10, 12), (False, 10, 13),
    (False, 5, 10), (False, 5, 11),
)  # fmt: skip
_WARMUP: Final = 13  # from this bar on every total is live and every pattern is evaluated


class PatternDetector:
    """Streaming TA-Lib ``CDL*`` recognition; plain picklable state, O(1) per bar.

    ``update(open, high, low, close)`` returns the hits for that bar (``()`` if none) and
    also keeps them in ``value``. A pattern is only reported from its TA-Lib lookback on
    (``LOOKBACK``), so bar ``n`` of a stream gives exactly what ``talib.CDLxxx`` gives at
    index ``n`` of the same series. ``ready`` is true once every pattern is evaluated.

    >>> det = PatternDetector()
    >>> for _ in range(10):
    ...     _ = det.update(10.0, 10.5, 9.5, 10.3)
    >>> det.update(10.0, 10.5, 9.5, 10.01)       # body far below 10% of the average range
    (PatternHit(pattern=<Pattern.DOJI: 'doji'>, signal=100),)
    >>> det.bars, det.ready
    (11, False)
    """

    __slots__ = (
        "_body_ring", "_bot1", "_bot2", "_c1", "_c2", "_h1", "_h2", "_h3", "_hl_ring", "_l1", "_lo1", "_lo2", "_o1",
        "_o2", "_rb1", "_rb2", "_top1", "_top2", "_tot", "_tot1", "_tot2", "_up1", "_up2", "_w1", "_w2", "_w3",
        "bars", "value",
    )  # fmt: skip

    def __init__(self) -> None:
        self.bars = 0
        self.value: tuple[PatternHit, ...] = _NONE
        # Previous candles: 1 = i-1, 2 = i-2, 3 = i-3 (only colour and high are read there).
        self._o1 = self._h1 = self._l1 = self._c1 = self._rb1 = self._top1 = self._bot1 = 0.0
        self._up1 = self._lo1 = self._o2 = self._c2 = self._rb2 = self._top2 = self._bot2 = 0.0
        self._up2 = self._lo2 = self._h2 = self._h3 = 0.0
        self._w1 = self._w2 = self._w3 = False
        self._body_ring = [0.0] * 10  # real body of bar t at t % 10
        self._hl_ring = [0.0] * 10  # high-low of bar t at t % 10
        self._tot = [0.0] * 9  # sums over bars [t-period, t-1], see _TOTALS
        self._tot1 = [0.0] * 9  # the same one bar ago
        self._tot2 = [0.0] * 9  # two bars ago

    @property
    def ready(self) -> bool:
        return self.bars >= _WARMUP

    def update(self, open_: float, high: float, low: float, close: float) -> tuple[PatternHit, ...]:
        """Feed the next closed bar; return the patterns completing on it."""
        t = self.bars
        white = close >= open_  # TA-Lib counts close == open as white
        if white:
            top, bot = close, open_
        else:
            top, bot = open_, close
        rb = abs(close - open_)
        upper = high - top
        lower = bot - low
        o1, c1, rb1, w1 = self._o1, self._c1, self._rb1, self._w1
        tot, tot1, tot2 = self._tot, self._tot1, self._tot2
        out = _NONE

        if t >= 2:
            # Engulfing: the second real body covers the first; one matching end gives 80.
            if white and not w1 and ((close >= o1 and open_ < c1) or (close > o1 and open_ <= c1)):
                out = _ENGULFING[100 if open_ != c1 and close != o1 else 80]
            elif not white and w1 and ((open_ >= c1 and close < o1) or (open_ > c1 and close <= o1)):
                out = _ENGULFING[-100 if open_ != c1 and close != o1 else -80]
        if t >= 10 and rb <= 0.1 * (tot[3] / 10.0):
            out += _DOJI
        if t >= 11:
            body_short = tot[1] / 10.0
            if rb < body_short:
                very_short = 0.1 * (tot[4] / 10.0)
                if lower > rb and upper < very_short:
                    near = 0.2 * (tot1[7] / 5.0)  # Near of candle i-1
                    if bot <= self._l1 + near:
                        out += _HAMMER
                    if bot >= self._h1 - near:
                        out += _HANGING_MAN
                if upper > rb and lower < very_short:
                    if top < self._bot1:
                        out += _INVERTED_HAMMER
                    elif bot > self._top1:
                        out += _SHOOTING_STAR
            body_long1 = tot1[0] / 10.0  # BodyLong of candle i-1
            if rb1 > body_long1:
                if rb <= body_short:
                    top1, bot1 = self._top1, self._bot1
                    if top < top1 and bot > bot1:
                        out += _HARAMI[-100 if w1 else 100]
                    elif top <= top1 and bot >= bot1:
                        out += _HARAMI[-80 if w1 else 80]
                if w1:
                    if not white and open_ > self._h1 and o1 < close < c1 - rb1 * _DARK_CLOUD_PENETRATION:
                        out += _DARK_CLOUD_COVER
                elif white and rb > body_short and open_ < self._l1 and c1 + rb1 * 0.5 < close < o1:
                    out += _PIERCING
        if t >= 12:
            rb2, c2 = self._rb2, self._c2
            if (
                rb > tot[2] / 10.0
                and rb2 > tot2[0] / 10.0  # BodyLong of candle i-2
                and rb1 <= tot1[1] / 10.0  # BodyShort of candle i-1
            ):
                if not self._w2 and white and self._top1 < self._bot2 and close > c2 + rb2 * _STAR_PENETRATION:
                    out += _MORNING_STAR
                elif self._w2 and not white and self._bot1 > self._top2 and close < c2 - rb2 * _STAR_PENETRATION:
                    out += _EVENING_STAR
            if (
                white and w1 and self._w2
                and close > c1 > c2
                and open_ > o1 > self._o2
                and upper < 0.1 * (tot[5] / 10.0)
                and self._up1 < 0.1 * (tot1[4] / 10.0)
                and self._up2 < 0.1 * (tot2[3] / 10.0)
                and o1 <= c2 + 0.2 * (tot2[7] / 5.0)
                and open_ <= c1 + 0.2 * (tot1[8] / 5.0)
                and rb1 > rb2 - 0.6 * (tot2[7] / 5.0)
                and rb > rb1 - 0.6 * (tot1[8] / 5.0)
                and rb > tot[2] / 10.0
            ):  # fmt: skip
                out += _THREE_WHITE_SOLDIERS
        if (
            t >= 13
            and self._w3 and not self._w2 and not w1 and not white
            and self._c2 < o1 < self._o2
            and c1 < open_ < o1
            and self._h3 > self._c2 > c1 > close
            and self._lo2 < 0.1 * (tot2[4] / 10.0)
            and self._lo1 < 0.1 * (tot1[5] / 10.0)
            and lower < 0.1 * (tot[6] / 10.0)
        ):  # fmt: skip
            out += _THREE_BLACK_CROWS

        # Move the totals from "before bar t" to "before bar t+1", as TA-Lib does after each output.
        j = t % 10
        rng = high - low
        self._tot2, self._tot1 = tot1, tot2
        tot2[:] = tot
        if t >= _WARMUP:
            d = rb - self._body_ring[j]
            tot[0] += d
            tot[1] += d
            tot[2] += d
            d = rng - self._hl_ring[j]
            tot[3] += d
            tot[4] += d
            tot[5] += d
            tot[6] += d
            d = rng - self._hl_ring[(j + 5) % 10]
            tot[7] += d
            tot[8] += d
        else:
            for k, (is_body, period, start) in enumerate(_TOTALS):
                new = rb if is_body else rng
                if t >= start:  # live: slide the window
                    old = self._body_ring[j] if is_body else self._hl_ring[(t - period) % 10]
                    tot[k] += new - old
                elif t >= start - period:  # TA-Lib's initial sum over [start-period, start-1]
                    tot[k] += new
        self._body_ring[j] = rb
        self._hl_ring[j] = rng

        self._h3, self._w3 = self._h2, self._w2
        self._o2, self._h2, self._c2, self._rb2, self._w2 = o1, self._h1, c1, rb1, w1
        self._top2, self._bot2, self._up2, self._lo2 = self._top1, self._bot1, self._up1, self._lo1
        self._o1, self._h1, self._l1, self._c1, self._rb1, self._w1 = open_, high, low, close, rb, white
        self._top1, self._bot1, self._up1, self._lo1 = top, bot, upper, lower
        self.bars = t + 1
        self.value = out
        return out
