"""Moving averages: SMA, EMA, WMA, DEMA, TEMA — O(1) per value, equal to TA-Lib.

Each replicates TA-Lib's arithmetic in the same order (running sums for SMA/WMA, EMAs
seeded with the SMA of their first ``period`` inputs, ``k = 2 / (period + 1)``), so values
agree with ``talib.SMA``/``EMA``/``WMA``/``DEMA``/``TEMA`` from TA-Lib's first output on.

>>> ema = Ema(3)
>>> for x in (1.0, 2.0, 3.0, 4.0):
...     ema.update(x)
>>> ema.ready, ema.value, ema.warmup
(True, 3.0, 3)
"""

from __future__ import annotations

from operators.indicators.indicator import NAN, REGISTRY, Param, PriceIndicator, check_period

__all__ = ["Dema", "Ema", "Sma", "Tema", "Wma"]


class Sma(PriceIndicator):
    """Simple moving average (``talib.SMA``), running sum like TA-Lib's.

    >>> sma = Sma(3)
    >>> for x in (1.0, 2.0, 3.0, 4.0):
    ...     sma.update(x)
    >>> sma.value
    3.0
    """

    __slots__ = ("_buf", "_count", "_i", "_sum", "period")
    blank = (2,)

    def __init__(self, period: int) -> None:
        super().__init__(warmup=check_period("period", period))
        self.period = period
        self._buf = [0.0] * period
        self._i = 0
        self._sum = 0.0  # sum of the newest period-1 values once ready (TA-Lib's periodTotal)
        self._count = 0

    def update(self, x: float) -> None:
        i = self._i
        buf = self._buf
        buf[i] = x
        s = self._sum + x
        i += 1
        if i == self.period:
            i = 0
        self._i = i
        if self.ready:
            self.value = s / self.period
            self._sum = s - buf[i]  # buf[i] is the oldest value of the window
            return
        self._count += 1
        if self._count < self.period:
            self._sum = s
            return
        self.ready = True
        self.value = s / self.period
        self._sum = s - buf[i]


REGISTRY.register("sma", Param("period", int))(Sma)


class Ema(PriceIndicator):
    """Exponential moving average (``talib.EMA``): seeded with the SMA of the first ``period`` values.

    >>> ema = Ema(2)
    >>> for x in (2.0, 4.0, 6.0):
    ...     ema.update(x)
    >>> round(ema.value, 6)
    5.0
    """

    __slots__ = ("_count", "_sum", "k", "period")
    blank = (2,)

    def __init__(self, period: int) -> None:
        super().__init__(warmup=check_period("period", period, 2))
        self.period = period
        self.k = 2.0 / (period + 1)
        self._sum = 0.0
        self._count = 0

    def update(self, x: float) -> None:
        if self.ready:
            v = self.value
            self.value = (x - v) * self.k + v
            return
        self._sum += x
        self._count += 1
        if self._count == self.period:
            self.value = self._sum / self.period
            self.ready = True


REGISTRY.register("ema", Param("period", int))(Ema)


class Wma(PriceIndicator):
    """Linearly weighted moving average (``talib.WMA``), with TA-Lib's running weighted sum.

    As in TA-Lib 0.8 the running sums are rebuilt from the window every ``8 * period``
    bars (O(period) once per 8·period bars) so rounding residue cannot accumulate.

    >>> wma = Wma(3)
    >>> for x in (1.0, 2.0, 3.0):
    ...     wma.update(x)
    >>> round(wma.value, 12)  # (1*1 + 2*2 + 3*3) / 6
    2.333333333333
    """

    __slots__ = ("_bars", "_buf", "_count", "_i", "_sub", "_total", "_trail", "divider", "period")
    blank = (2,)

    def __init__(self, period: int) -> None:
        super().__init__(warmup=check_period("period", period, 2))
        self.period = period
        self.divider = period * (period + 1) / 2.0
        self._buf = [0.0] * period
        self._i = 0
        self._total = 0.0  # TA-Lib periodSum
        self._sub = 0.0  # TA-Lib periodSub
        self._trail = 0.0  # TA-Lib trailingValue: oldest value of the previous window
        self._bars = 8 * period  # until the next re-anchoring
        self._count = 0

    def update(self, x: float) -> None:
        n = self.period
        i = self._i
        buf = self._buf
        buf[i] = x
        i += 1
        if i == n:
            i = 0
        self._i = i
        if not self.ready:
            self._count += 1
            if self._count < n:
                self._sub += x
                self._total += x * self._count
                return
            self.ready = True
        sub = self._sub + x
        sub -= self._trail
        total = self._total + x * n
        bars = self._bars - 1
        if bars <= 0:
            bars = 8 * n
            sub = total = 0.0
            w = 1
            for v in buf[i:] + buf[:i]:  # oldest first, weights 1..n, like TA-Lib's rebuild
                sub += v
                total += v * w
                w += 1
        self._bars = bars
        self._trail = buf[i]
        self.value = total / self.divider
        self._total = total - sub
        self._sub = sub


REGISTRY.register("wma", Param("period", int))(Wma)


class _Chain(PriceIndicator):
    """``depth`` EMAs in a chain, each seeded with the SMA of the previous one's first outputs."""

    __slots__ = ("_count", "_emas", "_sums", "k", "period")

    def __init__(self, period: int, depth: int) -> None:
        check_period("period", period, 2)
        super().__init__(warmup=depth * (period - 1) + 1)
        self.period = period
        self.k = 2.0 / (period + 1)
        self._emas = [NAN] * depth
        self._sums = [0.0] * depth
        self._count = 0  # values seen

    def _warm(self, x: float) -> bool:
        """Advance the chain during warm-up; True once every EMA has its seed."""
        n, k = self.period, self.k
        t = self._count
        self._count = t + 1
        emas, sums = self._emas, self._sums
        v = x
        for j in range(len(emas)):
            start = j * (n - 1)  # index of the first input EMA j sees
            if t < start:
                return False
            if t < start + n - 1:
                sums[j] += v
                return False
            if t == start + n - 1:
                sums[j] += v
                emas[j] = sums[j] / n
            else:
                e = emas[j]
                emas[j] = (v - e) * k + e
            v = emas[j]
        return True


class Dema(_Chain):
    """Double EMA ``2*EMA - EMA(EMA)`` (``talib.DEMA``).

    >>> dema = Dema(2)
    >>> for x in (1.0, 2.0, 3.0, 4.0):
    ...     dema.update(x)
    >>> dema.ready, dema.warmup, round(dema.value, 9)
    (True, 3, 4.0)
    """

    __slots__ = ()
    blank = (2,)

    def __init__(self, period: int) -> None:
        super().__init__(period, 2)

    def update(self, x: float) -> None:
        if self.ready:
            k = self.k
            emas = self._emas
            e1, e2 = emas
            e1 = (x - e1) * k + e1
            e2 = (e1 - e2) * k + e2
            emas[0] = e1
            emas[1] = e2
            self.value = (2.0 * e1) - e2
        elif self._warm(x):
            self.ready = True
            e1, e2 = self._emas
            self.value = (2.0 * e1) - e2


REGISTRY.register("dema", Param("period", int))(Dema)


class Tema(_Chain):
    """Triple EMA ``3*EMA - 3*EMA(EMA) + EMA(EMA(EMA))`` (``talib.TEMA``).

    >>> tema = Tema(2)
    >>> for x in (1.0, 2.0, 3.0, 4.0, 5.0):
    ...     tema.update(x)
    >>> tema.ready, tema.warmup, round(tema.value, 9)
    (True, 4, 5.0)
    """

    __slots__ = ()
    blank = (2,)

    def __init__(self, period: int) -> None:
        super().__init__(period, 3)

    def update(self, x: float) -> None:
        if self.ready:
            k = self.k
            emas = self._emas
            e1, e2, e3 = emas
            e1 = (x - e1) * k + e1
            e2 = (e1 - e2) * k + e2
            e3 = (e2 - e3) * k + e3
            emas[0] = e1
            emas[1] = e2
            emas[2] = e3
            self.value = e3 + ((3.0 * e1) - (3.0 * e2))
        elif self._warm(x):
            self.ready = True
            e1, e2, e3 = self._emas
            self.value = e3 + ((3.0 * e1) - (3.0 * e2))


REGISTRY.register("tema", Param("period", int))(Tema)
