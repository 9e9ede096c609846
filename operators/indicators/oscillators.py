"""Oscillators: RSI, MACD, ROC, CCI, Williams %R, Stochastic, Stochastic RSI — equal to TA-Lib.

Degenerate inputs get TA-Lib 0.8.1's finite values: RSI is 0 when average gain + loss is
exactly 0 (a flat series); %K, %R and CCI are 0 when the window is flat relative to its own
price level (within 1e-14); ROC is 0 against a zero price.

>>> rsi = Rsi(2)
>>> for x in (10.0, 11.0, 10.5, 11.5):
...     rsi.update(x)
>>> rsi.ready, round(rsi.value, 6)
(True, 85.714286)
"""

from __future__ import annotations

from operators.indicators.averages import Sma
from operators.indicators.indicator import NAN, REGISTRY, Indicator, Param, PriceIndicator, check_period
from operators.indicators.windows import RollingExtremes

__all__ = ["Cci", "Macd", "Roc", "Rsi", "Stochastic", "StochasticRsi", "WilliamsR"]

_EPSILON = 1e-14  # TA-Lib TA_EPSILON, as in the TA-Lib C library tested against (0.8.1)


def _fast_k(close: float, highest: float, lowest: float) -> float:
    """TA-Lib 0.8 raw stochastic: 0 for a range within 1e-14 of the extremes' magnitude."""
    rng = highest - lowest
    if abs(rng) <= _EPSILON * (abs(highest) + abs(lowest)):
        return 0.0
    return ((close - lowest) / rng) * 100.0


class Rsi(PriceIndicator):
    """Wilder's RSI (``talib.RSI``): seeded with plain averages of the first ``period`` changes.

    Like TA-Lib 0.8.1 it reads 0 when average gain + loss is exactly 0 (a flat series).

    >>> rsi = Rsi(3)
    >>> for x in (5.0,) * 4:
    ...     rsi.update(x)
    >>> rsi.ready, rsi.value   # flat series: TA-Lib gives 0
    (True, 0.0)
    """

    __slots__ = ("_count", "_gain", "_inv", "_loss", "_n1", "_prev", "period")

    def __init__(self, period: int = 14) -> None:
        super().__init__(warmup=check_period("period", period, 2) + 1)
        self.period = period
        self._n1 = float(period - 1)
        self._inv = 1.0 / period
        self._prev = NAN
        self._gain = 0.0
        self._loss = 0.0
        self._count = 0

    def update(self, x: float) -> None:
        d = x - self._prev
        self._prev = x
        up = d if d > 0.0 else 0.0
        if self.ready:
            n1 = self._n1
            inv = self._inv
            gain = (self._gain * n1 + up) * inv
            loss = (self._loss * n1 + (up - d)) * inv
            self._gain = gain
            self._loss = loss
        else:
            t = self._count
            self._count = t + 1
            if t == 0:
                return
            self._gain += up
            self._loss += up - d
            if t < self.period:
                return
            self.ready = True
            gain = self._gain = self._gain * self._inv
            loss = self._loss = self._loss * self._inv
        s = gain + loss
        self.value = 100.0 * (gain / s) if s > 0.0 else 0.0


REGISTRY.register("rsi", Param("period", int, 14))(Rsi)


class Macd(PriceIndicator):
    """MACD line, signal and histogram (``talib.MACD``); ``value`` is the MACD line.

    Like TA-Lib, the fast EMA is seeded on the ``fast`` values that end where the slow
    EMA's seed ends (not on the first ``fast`` values), and ``fast``/``slow`` are swapped
    if given in the wrong order.

    >>> m = Macd(2, 3, 2)
    >>> for x in (1.0, 2.0, 3.0, 5.0, 4.0):
    ...     m.update(x)
    >>> m.ready, m.warmup, round(m.macd, 6), round(m.signal, 6), round(m.hist, 6)
    (True, 4, 0.305556, 0.398148, -0.092593)
    """

    __slots__ = ("_count", "_fast", "_fsum", "_gsum", "_kf", "_kg", "_ks", "_sig", "_slow", "_ssum",
                 "fast_period", "hist", "macd", "signal", "signal_period", "slow_period")  # fmt: skip

    outputs = ("macd", "signal", "hist")

    def __init__(self, fast: int = 12, slow: int = 26, signal: int = 9) -> None:
        check_period("fast", fast, 2)
        check_period("slow", slow, 2)
        check_period("signal", signal, 1)
        if slow < fast:
            fast, slow = slow, fast
        super().__init__(warmup=slow + signal - 1)
        self.fast_period, self.slow_period, self.signal_period = fast, slow, signal
        self._kf = 2.0 / (fast + 1)
        self._ks = 2.0 / (slow + 1)
        self._kg = 2.0 / (signal + 1)
        self._fast = self._slow = self._sig = NAN
        self._fsum = self._ssum = self._gsum = 0.0
        self._count = 0
        self.macd = self.signal = self.hist = NAN

    def values(self) -> tuple[float, ...]:
        return (self.macd, self.signal, self.hist)

    def update(self, x: float) -> None:
        if self.ready:
            f = self._fast
            f = (x - f) * self._kf + f
            s = self._slow
            s = (x - s) * self._ks + s
            m = f - s
            g = self._sig
            g = (m - g) * self._kg + g
            self._fast = f
            self._slow = s
            self._sig = g
            self.value = self.macd = m
            self.signal = g
            self.hist = m - g
            return
        t = self._count
        self._count = t + 1
        fast, slow = self.fast_period, self.slow_period
        if t < slow:
            self._ssum += x
            if t >= slow - fast:
                self._fsum += x
            if t < slow - 1:
                return
            self._slow = self._ssum / slow
            self._fast = self._fsum / fast
        else:
            s = self._slow
            self._slow = (x - s) * self._ks + s
            f = self._fast
            self._fast = (x - f) * self._kf + f
        m = self._fast - self._slow
        self._gsum += m
        if t - (slow - 1) < self.signal_period - 1:
            return
        g = self._sig = self._gsum / self.signal_period
        self.ready = True
        self.value = self.macd = m
        self.signal = g
        self.hist = m - g


REGISTRY.register("macd", Param("fast", int, 12), Param("slow", int, 26), Param("signal", int, 9))(Macd)


class Roc(PriceIndicator):
    """Rate of change in percent, ``(x / x[-period] - 1) * 100`` (``talib.ROC``).

    >>> roc = Roc(2)
    >>> for x in (100.0, 105.0, 110.0):
    ...     roc.update(x)
    >>> round(roc.value, 9)
    10.0
    """

    __slots__ = ("_buf", "_count", "_i", "period")

    def __init__(self, period: int = 10) -> None:
        super().__init__(warmup=check_period("period", period) + 1)
        self.period = period
        self._buf = [0.0] * period
        self._i = 0
        self._count = 0

    def update(self, x: float) -> None:
        i = self._i
        buf = self._buf
        old = buf[i]  # the value `period` updates ago
        buf[i] = x
        i += 1
        self._i = 0 if i == self.period else i
        if not self.ready:
            self._count += 1
            if self._count <= self.period:
                return
            self.ready = True
        self.value = ((x / old) - 1.0) * 100.0 if old != 0.0 else 0.0


REGISTRY.register("roc", Param("period", int, 10))(Roc)


class Cci(Indicator):
    """Commodity Channel Index on the typical price ``(H+L+C)/3`` (``talib.CCI``).

    O(period) per bar, not O(1): the mean absolute deviation around a moving mean has no
    exact running form. Zero when the price equals its mean or the mean deviation is zero,
    both to within 1e-14 of the mean (TA-Lib 0.8's scale-relative test).

    >>> cci = Cci(3)
    >>> for h, l, c in [(10, 8, 9), (11, 9, 10), (12, 10, 11)]:
    ...     cci.update_bar(0.0, h, l, c, 0.0)
    >>> round(cci.value, 6)
    100.0
    """

    __slots__ = ("_buf", "_count", "_i", "period")

    def __init__(self, period: int = 14) -> None:
        super().__init__(warmup=check_period("period", period, 2))
        self.period = period
        self._buf = [0.0] * period  # slot = bar index mod period, summed in slot order like TA-Lib
        self._i = 0
        self._count = 0

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        tp = (high + low + close) / 3
        buf = self._buf
        i = self._i
        buf[i] = tp
        i += 1
        n = self.period
        self._i = 0 if i == n else i
        if not self.ready:
            self._count += 1
            if self._count < n:
                return
            self.ready = True
        avg = 0.0
        for v in buf:
            avg += v
        avg /= n
        dev = 0.0
        for v in buf:
            dev += abs(v - avg)
        dev /= n
        diff = tp - avg
        scale = _EPSILON * abs(avg)  # flat relative to the window's own price level (TA-Lib 0.8)
        self.value = 0.0 if abs(diff) <= scale or abs(dev) <= scale else diff / (0.015 * dev)


REGISTRY.register("cci", Param("period", int, 14))(Cci)


class WilliamsR(Indicator):
    """Williams %R in [-100, 0] (``talib.WILLR``); 0 when the window's high equals its low.

    "Equals" is TA-Lib 0.8's scale-relative test: a range within 1e-14 of ``|high|+|low|``.

    >>> w = WilliamsR(2)
    >>> for h, l, c in [(10, 8, 9), (12, 9, 11)]:
    ...     w.update_bar(0.0, h, l, c, 0.0)
    >>> w.value
    -25.0
    """

    __slots__ = ("_window", "period")

    def __init__(self, period: int = 14) -> None:
        super().__init__(warmup=check_period("period", period, 2))
        self.period = period
        self._window = RollingExtremes(period)

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        w = self._window
        w.push(high, low)
        if not self.ready:
            if not w.full:
                return
            self.ready = True
        highest = w.high
        lowest = w.low
        rng = highest - lowest
        flat = abs(rng) <= _EPSILON * (abs(highest) + abs(lowest))
        self.value = 0.0 if flat else ((highest - close) / rng) * -100.0


REGISTRY.register("willr", Param("period", int, 14))(WilliamsR)


class Stochastic(Indicator):
    """Slow stochastic %K/%D (``talib.STOCH`` with SMA smoothing); ``value`` is %K.

    Raw %K is ``(close - lowest low) / (highest high - lowest low) * 100``, 0 when the
    window has no range (within 1e-14 of ``|high|+|low|``, as TA-Lib 0.8); %K is its SMA
    over ``slowk`` bars, %D the SMA of %K over ``slowd``.

    >>> s = Stochastic(2, 1, 1)
    >>> for h, l, c in [(10, 8, 9), (12, 9, 11)]:
    ...     s.update_bar(0.0, h, l, c, 0.0)
    >>> s.k, s.d
    (75.0, 75.0)
    """

    __slots__ = ("_d", "_k", "_window", "d", "fastk_period", "k", "slowd_period", "slowk_period")

    outputs = ("k", "d")

    def __init__(self, fastk: int = 5, slowk: int = 3, slowd: int = 3) -> None:
        check_period("fastk", fastk)
        check_period("slowk", slowk)
        check_period("slowd", slowd)
        super().__init__(warmup=fastk + slowk + slowd - 2)
        self.fastk_period, self.slowk_period, self.slowd_period = fastk, slowk, slowd
        self._window = RollingExtremes(fastk)
        self._k = Sma(slowk)
        self._d = Sma(slowd)
        self.k = self.d = NAN

    def values(self) -> tuple[float, ...]:
        return (self.k, self.d)

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        w = self._window
        w.push(high, low)
        if not w.full:
            return
        sk = self._k
        sk.update(_fast_k(close, w.high, w.low))
        if not sk.ready:
            return
        sd = self._d
        sd.update(sk.value)
        if sd.ready:
            self.ready = True
            self.value = self.k = sk.value
            self.d = sd.value


REGISTRY.register("stoch", Param("fastk", int, 5), Param("slowk", int, 3), Param("slowd", int, 3))(Stochastic)


class StochasticRsi(PriceIndicator):
    """Fast stochastic of RSI (``talib.STOCHRSI`` with SMA %D); ``value`` is %K.

    %K is the raw stochastic of the RSI values (0 when they have no range over ``fastk``
    bars), %D its SMA over ``fastd``. TA-Lib's defaults are 14, 5, 3.

    >>> s = StochasticRsi(2, 2, 1)
    >>> for x in (10.0, 11.0, 10.5, 11.5, 11.0):
    ...     s.update(x)
    >>> s.ready, s.warmup, round(s.k, 6)
    (True, 4, 0.0)
    """

    __slots__ = ("_d", "_rsi", "_window", "d", "fastd_period", "fastk_period", "k", "period")

    outputs = ("k", "d")

    def __init__(self, period: int = 14, fastk: int = 5, fastd: int = 3) -> None:
        self._rsi = Rsi(period)
        check_period("fastk", fastk)
        check_period("fastd", fastd)
        super().__init__(warmup=period + fastk + fastd - 1)
        self.period, self.fastk_period, self.fastd_period = period, fastk, fastd
        self._window = RollingExtremes(fastk)
        self._d = Sma(fastd)
        self.k = self.d = NAN

    def values(self) -> tuple[float, ...]:
        return (self.k, self.d)

    def update(self, x: float) -> None:
        rsi = self._rsi
        rsi.update(x)
        if not rsi.ready:
            return
        r = rsi.value
        w = self._window
        w.push(r, r)
        if not w.full:
            return
        k = _fast_k(r, w.high, w.low)
        sd = self._d
        sd.update(k)
        if sd.ready:
            self.ready = True
            self.value = self.k = k
            self.d = sd.value


REGISTRY.register("stochrsi", Param("period", int, 14), Param("fastk", int, 5), Param("fastd", int, 3))(StochasticRsi)
