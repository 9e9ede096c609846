"""Volume: on-balance volume and money flow index (equal to TA-Lib) and session VWAP.

>>> obv = Obv()
>>> for c, v in [(10.0, 100.0), (11.0, 50.0), (10.5, 30.0)]:
...     obv.update_bar(c, c, c, c, v)
>>> obv.value   # 100 + 50 - 30
120.0
"""

from __future__ import annotations

from operators.indicators.indicator import NAN, REGISTRY, Indicator, Param, check_period

__all__ = ["Mfi", "Obv", "SessionVwap"]

_EPSILON = 1e-14  # TA-Lib TA_EPSILON, as in the TA-Lib C library tested against (0.8.1)


class Obv(Indicator):
    """On-balance volume (``talib.OBV``): starts at the first bar's volume.

    >>> obv = Obv()
    >>> obv.update_bar(1.0, 1.0, 1.0, 1.0, 7.0); obv.ready, obv.value
    (True, 7.0)
    """

    __slots__ = ("_prev",)

    def __init__(self) -> None:
        super().__init__(warmup=1)
        self._prev = NAN

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        prev = self._prev
        self._prev = close
        if close > prev:
            self.value += volume
        elif close < prev:
            self.value -= volume
        elif not self.ready:
            self.ready = True
            self.value = volume


REGISTRY.register("obv")(Obv)


class Mfi(Indicator):
    """Money flow index on the typical price ``(H+L+C)/3`` (``talib.MFI`` of TA-Lib 0.8).

    As in TA-Lib: a bar whose typical price moved by less than 1e-14 of its magnitude
    counts as unchanged (no flow); after ``period`` bars without flow the running sums are
    reset to exactly zero; an empty window reads 0, and the positive sum is clamped into
    ``[0, total]`` so rounding residue never leaves 0..100.

    >>> mfi = Mfi(2)
    >>> for h, l, c, v in [(10, 8, 9, 100), (11, 9, 10, 100), (10, 8, 9, 50)]:
    ...     mfi.update_bar(0.0, h, l, c, v)
    >>> round(mfi.value, 6)   # 1000 up, 450 down
    68.965517
    """

    __slots__ = ("_count", "_i", "_neg", "_negsum", "_null_run", "_pos", "_possum", "_prev", "period")

    def __init__(self, period: int = 14) -> None:
        super().__init__(warmup=check_period("period", period, 2) + 1)
        self.period = period
        self._pos = [0.0] * period
        self._neg = [0.0] * period
        self._i = 0
        self._possum = 0.0
        self._negsum = 0.0
        self._null_run = 0
        self._prev = NAN
        self._count = 0

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        tp = (high + low + close) / 3.0
        if not self.ready:
            c = self._count
            self._count = c + 1
            if c == 0:
                self._prev = tp
                return
        i = self._i
        pos, neg = self._pos, self._neg
        possum = self._possum - pos[i]
        negsum = self._negsum - neg[i]
        prev = self._prev
        d = tp - prev
        self._prev = tp
        flow = 0.0 if abs(d) <= _EPSILON * (abs(tp) + abs(prev)) else tp * volume
        if d < 0.0:
            pos[i] = 0.0
            neg[i] = flow
            negsum += flow
        else:
            pos[i] = flow
            neg[i] = 0.0
            possum += flow
        n = self.period
        if flow == 0.0:
            run = self._null_run + 1
            if run >= n:  # a whole window without flow: drop the add/subtract residue
                run = n
                possum = negsum = 0.0
            self._null_run = run
        else:
            self._null_run = 0
        i += 1
        self._i = 0 if i == n else i
        self._possum = possum
        self._negsum = negsum
        if not self.ready:
            if self._count <= n:
                return
            self.ready = True
        total = possum + negsum
        if total <= 0.0:
            self.value = 0.0
            return
        if possum < 0.0:
            possum = 0.0
        elif possum > total:
            possum = total
        self.value = 100.0 * (possum / total)


REGISTRY.register("mfi", Param("period", int, 14))(Mfi)


class SessionVwap(Indicator):
    """Volume-weighted average of the typical price ``(H+L+C)/3`` since the session began.

    ``update_bar(..., session_key=k)`` starts a new session whenever ``k`` differs from the
    current one (use the IST trading date as an int); without a key the bar continues the
    current session. While the session has no volume yet (indices such as NIFTY trade no
    volume) ``value`` is the latest typical price, so it is always finite. Ready from the
    first bar. No TA-Lib function; the test oracle is a per-session cumulative numpy sum.

    >>> vw = SessionVwap()
    >>> vw.update_bar(0.0, 11.0, 9.0, 10.0, 100.0, session_key=20251120)
    >>> vw.update_bar(0.0, 13.0, 11.0, 12.0, 300.0, session_key=20251120)
    >>> vw.value
    11.5
    >>> vw.update_bar(0.0, 21.0, 19.0, 20.0, 10.0, session_key=20251121); vw.value
    20.0
    """

    __slots__ = ("_pv", "_vol", "session")

    def __init__(self) -> None:
        super().__init__(warmup=1)
        self.session: int | None = None
        self._pv = 0.0
        self._vol = 0.0

    def start_session(self, session_key: int) -> None:
        """Forget the running sums: the next bar opens session ``session_key``."""
        self.session = session_key
        self._pv = 0.0
        self._vol = 0.0

    def update_bar(
        self, open: float, high: float, low: float, close: float, volume: float, session_key: int | None = None
    ) -> None:
        if session_key is not None and session_key != self.session:
            self.start_session(session_key)
        tp = (high + low + close) / 3.0
        pv = self._pv + tp * volume
        vol = self._vol + volume
        self._pv = pv
        self._vol = vol
        self.value = pv / vol if vol > 0.0 else tp
        self.ready = True


REGISTRY.register("vwap")(SessionVwap)
