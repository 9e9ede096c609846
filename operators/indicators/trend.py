"""Trend: ADX with ±DI, Parabolic SAR (both equal to TA-Lib) and SuperTrend.

>>> sar = ParabolicSar()
>>> for h, l in [(10.0, 9.0), (10.5, 9.4), (11.0, 9.9)]:
...     sar.update_bar(0.0, h, l, 0.0, 0.0)
>>> sar.ready, round(sar.value, 6)   # long since bar 2; SAR trails below the lows
(True, 9.03)
"""

# Hot paths keep `if x > m: m = x` rather than `m = max(m, x)`: a builtin call per bar costs more
# than the branch, and the branches mirror TA-Lib's compare-and-replace order.
# ruff: noqa: PLR1730

from __future__ import annotations

from operators.indicators.indicator import NAN, REGISTRY, Indicator, Param, check_period, check_positive
from operators.indicators.volatility import Atr

__all__ = ["Adx", "ParabolicSar", "SuperTrend"]

_ZERO = 1e-14  # TA-Lib TA_EPSILON (TA_IS_ZERO band) as in the TA-Lib C library tested against (0.8.1)


class Adx(Indicator):
    """Average directional index with +DI and -DI (``talib.ADX``, ``PLUS_DI``, ``MINUS_DI``).

    Wilder's smoothing with TA-Lib's seeding: directional movement and true range are
    summed over bars 2..period, the ADX seed is the mean of the first ``period`` DX values,
    so ``warmup`` is ``2 * period``. ``value`` is the ADX. A DI is 0 when the smoothed true
    range is 0, and the ADX then keeps its previous value (TA-Lib's choices). ``ready``
    follows ``talib.ADX``; TA-Lib's ``PLUS_DI``/``MINUS_DI`` start ``period - 1`` bars
    earlier, and the ±DI here equal them from ``ready`` on.

    >>> adx = Adx(2)
    >>> for h, l, c in [(10, 9, 9.5), (11, 9.5, 10.5), (12, 10.5, 11.5), (11.5, 10, 10.2)]:
    ...     adx.update_bar(0.0, h, l, c, 0.0)
    >>> adx.ready, round(adx.adx, 6), round(adx.plus_di, 6), round(adx.minus_di, 6)
    (True, 60.0, 28.571429, 19.047619)
    """

    __slots__ = ("_count", "_mdm", "_n1", "_pc", "_pdm", "_ph", "_pl", "_sumdx", "_tr",
                 "adx", "minus_di", "period", "plus_di")  # fmt: skip

    outputs = ("adx", "plus_di", "minus_di")

    def __init__(self, period: int = 14) -> None:
        super().__init__(warmup=2 * check_period("period", period, 2))
        self.period = period
        self._n1 = float(period - 1)
        self._ph = self._pl = self._pc = NAN
        self._pdm = self._mdm = self._tr = self._sumdx = 0.0
        self._count = 0
        self.adx = self.plus_di = self.minus_di = NAN

    def values(self) -> tuple[float, ...]:
        return (self.adx, self.plus_di, self.minus_di)

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        diff_p = high - self._ph
        diff_m = self._pl - low
        pc = self._pc
        self._ph = high
        self._pl = low
        self._pc = close
        tr = high - low
        t = high - pc  # |t| by branch: cheaper than a builtin call per bar, and exact
        if t < 0.0:
            t = -t
        if t > tr:
            tr = t
        t = low - pc
        if t < 0.0:
            t = -t
        if t > tr:
            tr = t
        n = self.period
        c = self._count
        if c < n:  # bar 1 only sets the previous values; bars 2..period are plain sums
            self._count = c + 1
            if c == 0:
                return
            if diff_m > 0 and diff_p < diff_m:
                self._mdm += diff_m
            elif diff_p > 0 and diff_p > diff_m:
                self._pdm += diff_p
            self._tr += tr
            return
        mdm = self._mdm
        mdm -= mdm / n
        pdm = self._pdm
        pdm -= pdm / n
        if diff_m > 0 and diff_p < diff_m:
            mdm += diff_m
        elif diff_p > 0 and diff_p > diff_m:
            pdm += diff_p
        str_ = self._tr
        str_ = str_ - (str_ / n) + tr
        self._mdm = mdm
        self._pdm = pdm
        self._tr = str_
        dx = 0.0
        has_dx = False  # without a DX the ADX holds (TA-Lib)
        if not str_ > 0.0:  # TA-Lib 0.8 tests the true-range sum exactly
            mdi = pdi = 0.0
        else:
            mdi = 100.0 * (mdm / str_)
            pdi = 100.0 * (pdm / str_)
            s = mdi + pdi
            if not -_ZERO < s < _ZERO:
                dx = 100.0 * (abs(mdi - pdi) / s)
                has_dx = True
        if self.ready:
            if has_dx:
                self.value = self.adx = (self.adx * self._n1 + dx) / n
        else:
            if has_dx:
                self._sumdx += dx
            self._count = c + 1
            if c < 2 * n - 1:
                return
            self.ready = True
            self.value = self.adx = self._sumdx / n
        self.plus_di = pdi
        self.minus_di = mdi


REGISTRY.register("adx", Param("period", int, 14))(Adx)


class SuperTrend(Indicator):
    """SuperTrend on ``hl2 ± multiplier × ATR(period)``; ``direction`` is +1 (up) or -1 (down).

    ``value`` is the trailing line: the final lower band in an uptrend, the final upper
    band in a downtrend. A final band only ratchets towards price unless the previous
    close crossed it; the trend flips when the close crosses the active band. The ATR is
    TA-Lib's (Wilder, seeded with a mean), so the first value is at bar ``period + 1``,
    starting in a downtrend (TradingView's ``ta.supertrend`` convention).

    No TA-Lib function; the test oracle is a plain loop over ``talib.ATR``.

    >>> st = SuperTrend(1, 1.0)
    >>> for h, l, c in [(10, 9, 9.5), (11, 10, 10.8), (12, 11, 11.9)]:
    ...     st.update_bar(0.0, h, l, c, 0.0)
    >>> st.direction, st.value   # the upper band held at 12 and the close stayed below it
    (-1.0, 12.0)
    >>> st.update_bar(0.0, 13.0, 12.0, 12.9, 0.0); st.direction, st.value
    (1.0, 11.4)
    """

    __slots__ = ("_atr", "_lower", "_prev_close", "_upper", "direction", "multiplier", "period")

    outputs = ("value", "direction")

    def __init__(self, period: int = 10, multiplier: float = 3.0) -> None:
        self._atr = Atr(period)
        super().__init__(warmup=self._atr.warmup)
        self.period = period
        self.multiplier = check_positive("multiplier", multiplier)
        self._upper = self._lower = self._prev_close = NAN
        self.direction = NAN

    def values(self) -> tuple[float, ...]:
        return (self.value, self.direction)

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        atr = self._atr
        atr.update_bar(open, high, low, close, volume)
        pc = self._prev_close
        self._prev_close = close
        if not atr.ready:
            return
        hl2 = (high + low) / 2.0
        band = self.multiplier * atr.value
        upper = hl2 + band
        lower = hl2 - band
        if not self.ready:
            self.ready = True
            self._upper, self._lower = upper, lower
            self.direction = -1.0
            self.value = upper
            return
        pu = self._upper
        if not (upper < pu or pc > pu):
            upper = pu
        pl = self._lower
        if not (lower > pl or pc < pl):
            lower = pl
        self._upper = upper
        self._lower = lower
        d = self.direction
        if d < 0.0 and close > upper:
            d = 1.0
        elif d > 0.0 and close < lower:
            d = -1.0
        self.direction = d
        self.value = lower if d > 0.0 else upper


REGISTRY.register("supertrend", Param("period", int, 10), Param("multiplier", float, 3.0))(SuperTrend)


class ParabolicSar(Indicator):
    """Wilder's Parabolic SAR (``talib.SAR``), including TA-Lib's start-up rule.

    The initial direction is short if bar 2 has a positive -DM against bar 1, else long;
    the first SAR (at bar 2) is bar 1's low (long) or high (short). ``warmup`` is 2.

    >>> sar = ParabolicSar(0.02, 0.2)
    >>> sar.update_bar(0.0, 10.0, 9.0, 0.0, 0.0); sar.ready
    False
    >>> sar.update_bar(0.0, 10.5, 9.5, 0.0, 0.0); sar.value
    9.0
    """

    __slots__ = ("_af", "_count", "_ep", "_high", "_long", "_low", "_sar", "acceleration", "maximum")

    def __init__(self, acceleration: float = 0.02, maximum: float = 0.2) -> None:
        super().__init__(warmup=2)
        self.acceleration = check_positive("acceleration", acceleration)
        self.maximum = check_positive("maximum", maximum)
        self.acceleration = min(self.acceleration, self.maximum)  # TA-Lib clamps rather than refuses
        self._af = self.acceleration
        self._ep = self._sar = self._high = self._low = NAN
        self._long = True
        self._count = 0

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        prev_high = self._high
        prev_low = self._low
        self._high = high
        self._low = low
        if not self.ready:
            self._count += 1
            if self._count == 1:
                return
            diff_p = high - prev_high
            diff_m = prev_low - low
            is_long = not (diff_m > 0 and diff_p < diff_m)
            self._long = is_long
            if is_long:
                self._ep, self._sar = high, prev_low
            else:
                self._ep, self._sar = low, prev_high
            prev_high, prev_low = high, low  # TA-Lib's first step compares bar 2 with itself
            self.ready = True
        sar = self._sar
        ep = self._ep
        af = self._af
        if self._long:
            if low <= sar:  # stop and reverse to short
                self._long = False
                sar = ep
                if sar < prev_high:
                    sar = prev_high
                if sar < high:
                    sar = high
                self.value = sar
                af = self.acceleration
                ep = low
                sar = sar + af * (ep - sar)
                if sar < prev_high:
                    sar = prev_high
                if sar < high:
                    sar = high
            else:
                self.value = sar
                if high > ep:
                    ep = high
                    af += self.acceleration
                    if af > self.maximum:
                        af = self.maximum
                sar = sar + af * (ep - sar)
                if sar > prev_low:
                    sar = prev_low
                if sar > low:
                    sar = low
        elif high >= sar:  # stop and reverse to long
            self._long = True
            sar = ep
            if sar > prev_low:
                sar = prev_low
            if sar > low:
                sar = low
            self.value = sar
            af = self.acceleration
            ep = high
            sar = sar + af * (ep - sar)
            if sar > prev_low:
                sar = prev_low
            if sar > low:
                sar = low
        else:
            self.value = sar
            if low < ep:
                ep = low
                af += self.acceleration
                if af > self.maximum:
                    af = self.maximum
            sar = sar + af * (ep - sar)
            if sar < prev_high:
                sar = prev_high
            if sar < high:
                sar = high
        self._sar = sar
        self._ep = ep
        self._af = af


REGISTRY.register("sar", Param("acceleration", float, 0.02), Param("maximum", float, 0.2))(ParabolicSar)
