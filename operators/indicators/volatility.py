"""Volatility and channels: ATR, Bollinger Bands, Donchian and Keltner channels.

ATR and Bollinger Bands equal ``talib.ATR`` / ``talib.BBANDS`` (SMA middle band). TA-Lib
has no Donchian or Keltner channel; their oracles are compositions of TA-Lib functions
(``MAX``/``MIN``, and ``EMA`` + ``ATR``), see each class.

>>> atr = Atr(2)
>>> for h, l, c in [(10, 9, 9.5), (11, 9, 10), (12, 10, 11), (11, 10, 10.5)]:
...     atr.update_bar(0.0, h, l, c, 0.0)
>>> atr.ready, atr.value
(True, 1.5)
"""

# Hot paths keep `if x > m: m = x` rather than `m = max(m, x)`: a builtin call per bar costs more
# than the branch, and the branches mirror TA-Lib's compare-and-replace order.
# ruff: noqa: PLR1730

from __future__ import annotations

import math

from operators.indicators.averages import Ema
from operators.indicators.indicator import NAN, REGISTRY, Indicator, Param, PriceIndicator, check_period, check_positive
from operators.indicators.windows import RollingExtremes

__all__ = ["Atr", "BollingerBands", "DonchianChannel", "KeltnerChannel"]


class Atr(Indicator):
    """Average true range with Wilder smoothing (``talib.ATR``).

    The first true range needs a previous close, so the seed is the mean of the true ranges
    of bars 2..period+1, as in TA-Lib; ``warmup`` is ``period + 1``.

    >>> atr = Atr(3)
    >>> atr.warmup
    4
    """

    __slots__ = ("_count", "_n1", "_prev_close", "_sum", "period")

    def __init__(self, period: int = 14) -> None:
        super().__init__(warmup=check_period("period", period) + 1)
        self.period = period
        self._n1 = float(period - 1)
        self._prev_close = NAN
        self._sum = 0.0
        self._count = 0

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        pc = self._prev_close
        self._prev_close = close
        tr = high - low
        t = pc - high  # |t| by branch: cheaper than a builtin call per bar, and exact
        if t < 0.0:
            t = -t
        if t > tr:
            tr = t
        t = low - pc
        if t < 0.0:
            t = -t
        if t > tr:
            tr = t
        if self.ready:
            self.value = (self.value * self._n1 + tr) / self.period
            return
        c = self._count
        self._count = c + 1
        if c == 0:
            return
        self._sum += tr
        if c == self.period:
            self.value = self._sum / self.period
            self.ready = True


REGISTRY.register("atr", Param("period", int, 14))(Atr)


class BollingerBands(PriceIndicator):
    """Bollinger Bands: SMA ± ``nbdev`` population standard deviations (``talib.BBANDS``, matype SMA).

    ``value`` is the middle band. The variance is TA-Lib 0.8's cancellation-free form: sums
    of deviations from a shift (the window mean when last re-anchored), rebuilt from the
    window every ``32 * period`` bars or when cancellation shows, with variances below
    1e-12 of the mean square taken as 0. ``nbdevdn`` defaults to ``nbdev``.

    >>> bb = BollingerBands(3, 2.0)
    >>> for x in (1.0, 2.0, 3.0):
    ...     bb.update(x)
    >>> round(bb.lower, 6), bb.middle, round(bb.upper, 6)
    (0.367007, 2.0, 3.632993)
    """

    __slots__ = ("_bars", "_buf", "_count", "_i", "_inv", "_shift", "_sum", "_v1", "_v2",
                 "lower", "middle", "nbdevdn", "nbdevup", "period", "upper")  # fmt: skip

    outputs = ("upper", "middle", "lower")

    def __init__(self, period: int = 20, nbdev: float = 2.0, nbdevdn: float | None = None) -> None:
        super().__init__(warmup=check_period("period", period, 2))
        self.period = period
        self.nbdevup = check_positive("nbdev", nbdev)
        self.nbdevdn = self.nbdevup if nbdevdn is None else check_positive("nbdevdn", nbdevdn)
        self._inv = 1.0 / period
        self._buf = [0.0] * period
        self._i = 0
        self._sum = 0.0  # like Sma: sum of the newest period-1 values once ready
        self._shift = NAN
        self._v1 = 0.0  # sum of (x - shift) over the window
        self._v2 = 0.0  # sum of (x - shift)**2 over the window
        self._bars = 32 * period  # until the next scheduled re-anchoring
        self._count = 0
        self.upper = self.middle = self.lower = NAN

    def values(self) -> tuple[float, ...]:
        return (self.upper, self.middle, self.lower)

    def update(self, x: float) -> None:
        i = self._i
        buf = self._buf
        buf[i] = x
        i += 1
        n = self.period
        if i == n:
            i = 0
        self._i = i
        s = self._sum + x
        if not self.ready:
            c = self._count
            self._count = c + 1
            if c == 0:
                self._shift = x
            if c < n - 1:
                t = x - self._shift
                self._sum = s
                self._v1 += t
                self._v2 += t * t
                return
            self.ready = True
        inv = self._inv
        shift = self._shift
        t = x - shift
        v1 = self._v1 + t
        v2 = self._v2 + t * t
        m1 = v1 * inv
        var = v2 * inv - m1 * m1
        mid = s / n
        old = buf[i]
        self._sum = s - old
        t = old - shift
        v1 -= t
        t *= t
        v2 -= t
        bars = self._bars - 1
        if var < 0.000001 * (v2 * inv) or t > 1000000.0 * v2 or bars <= 0:
            bars = 32 * n
            window = buf[i:] + buf[:i]  # oldest first
            total = 0.0
            for v in window:
                total += v
            shift = self._shift = total * inv
            v1 = v2 = 0.0
            for v in window:
                t = v - shift
                v1 += t
                v2 += t * t
            m1 = v1 * inv
            var = v2 * inv - m1 * m1
            if var < 0.000000000001 * (v2 * inv):
                var = 0.0
            t = window[0] - shift
            v1 -= t
            v2 -= t * t
        self._bars = bars
        self._v1 = v1
        self._v2 = v2
        sd = math.sqrt(var) if var > 0.0 else 0.0
        self.value = self.middle = mid
        self.upper = mid + sd * self.nbdevup
        self.lower = mid - sd * self.nbdevdn


REGISTRY.register("bbands", Param("period", int, 20), Param("nbdev", float, 2.0))(BollingerBands)


class DonchianChannel(Indicator):
    """Highest high, lowest low and their midpoint over ``period`` bars; ``value`` is the middle.

    No TA-Lib function; the test oracle is ``talib.MAX(high)``/``talib.MIN(low)``.

    >>> dc = DonchianChannel(2)
    >>> for h, l in [(10.0, 8.0), (12.0, 9.0), (11.0, 10.0)]:
    ...     dc.update_bar(0.0, h, l, 0.0, 0.0)
    >>> dc.upper, dc.middle, dc.lower
    (12.0, 10.5, 9.0)
    """

    __slots__ = ("_window", "lower", "middle", "period", "upper")

    outputs = ("upper", "middle", "lower")

    def __init__(self, period: int = 20) -> None:
        super().__init__(warmup=check_period("period", period))
        self.period = period
        self._window = RollingExtremes(period)
        self.upper = self.middle = self.lower = NAN

    def values(self) -> tuple[float, ...]:
        return (self.upper, self.middle, self.lower)

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        w = self._window
        w.push(high, low)
        if not self.ready:
            if not w.full:
                return
            self.ready = True
        hi = self.upper = w.high
        lo = self.lower = w.low
        self.value = self.middle = (hi + lo) / 2.0


REGISTRY.register("donchian", Param("period", int, 20))(DonchianChannel)


class KeltnerChannel(Indicator):
    """EMA(close, ``period``) ± ``multiplier`` × ATR(``atr_period``); ``value`` is the middle.

    Defaults 20, 2, 10 (TradingView's). No TA-Lib function; the test oracle is
    ``talib.EMA(close, period) ± multiplier * talib.ATR(high, low, close, atr_period)``.

    >>> kc = KeltnerChannel(2, 1.0, 1)
    >>> for h, l, c in [(10, 8, 9), (12, 9, 11)]:
    ...     kc.update_bar(0.0, h, l, c, 0.0)
    >>> kc.lower, kc.middle, kc.upper
    (7.0, 10.0, 13.0)
    """

    __slots__ = ("_atr", "_ema", "atr_period", "lower", "middle", "multiplier", "period", "upper")

    outputs = ("upper", "middle", "lower")

    def __init__(self, period: int = 20, multiplier: float = 2.0, atr_period: int = 10) -> None:
        self._ema = Ema(period)
        self._atr = Atr(atr_period)
        super().__init__(warmup=max(self._ema.warmup, self._atr.warmup))
        self.period, self.atr_period = period, atr_period
        self.multiplier = check_positive("multiplier", multiplier)
        self.upper = self.middle = self.lower = NAN

    def values(self) -> tuple[float, ...]:
        return (self.upper, self.middle, self.lower)

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        ema = self._ema
        atr = self._atr
        ema.update(close)
        atr.update_bar(open, high, low, close, volume)
        if not self.ready:
            if not (ema.ready and atr.ready):
                return
            self.ready = True
        mid = ema.value
        band = self.multiplier * atr.value
        self.value = self.middle = mid
        self.upper = mid + band
        self.lower = mid - band


REGISTRY.register("keltner", Param("period", int, 20), Param("multiplier", float, 2.0), Param("atr_period", int, 10))(
    KeltnerChannel
)
