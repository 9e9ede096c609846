"""Opening range breakout: trade the first close outside the session's opening range, once a session.

Rules, exactly (evaluated on every closed candle of ``timeframe``; times are IST, candle
times UTC epoch ns; the session opens at 09:15 IST = 03:45 UTC):

* **Session.** A candle belongs to the IST date of its ``open_time``. On the first candle of a
  new date the state is reset: no range, no entry yet.
* **Range.** The candles whose ``open_time`` lies in ``[09:15, 09:15 + range_minutes)`` form
  the opening range: its high is their highest high, its low their lowest low. The range is
  usable only if the candle opening at exactly 09:15 was seen (a strategy started later, or
  an instrument without a 09:15 candle, sits the session out). During the range nothing is
  emitted; the strategy reads no indicators, so this is its whole warm-up.
* **Time exit.** If ``exit_time`` is set, on every candle whose close time (``ts_event``) is at
  or after it: target 0 while ``ctx.position`` is not 0, and no new entries that session.
* **Entry**, on candles opening at or after the range end and before the exit time, at most one
  per session: ``close > range high`` → target ``+qty``; ``close < range low`` with
  ``allow_short`` → target ``-qty``. The stop-loss is the other side of the range
  (``stop_at="range"``: the low for a long, the high for a short) or its midpoint
  (``stop_at="mid"``). Once an entry has fired, later breakouts that session (either side,
  also after a stop-out) are ignored. A close below the low without ``allow_short`` is not an
  entry and does not use up the session's entry.
* Otherwise the position is left alone (the exit is the stop-loss or the time exit), and a
  target equal to ``ctx.position`` is not emitted.

>>> p = OpeningRangeBreakoutParams(range_minutes=30, timeframe="5m")
>>> OpeningRangeBreakout.indicators(p), OpeningRangeBreakout.warmup(p)
((), 6)
>>> OpeningRangeBreakoutParams(range_minutes=7, timeframe="5m")
Traceback (most recent call last):
...
ValueError: range_minutes: expected a whole number of 5m candles, got 7
"""

from __future__ import annotations

from typing import Literal

from operators.candles import DAY_NS, IST_OFFSET_NS, SESSION_CLOSE_NS, SESSION_OPEN_NS, parse_timeframe
from schemas.market import Candle
from schemas.orders import TargetPosition
from strategies.base import Strategy, StrategyContext, StrategyParams
from strategies.registry import strategy

_MINUTE_NS = 60 * 10**9


def _clock_ns(field: str, hhmm: str) -> int:
    """``"15:10"`` -> ns after IST midnight; raises ValueError naming ``field``."""
    hh, sep, mm = hhmm.partition(":")
    if not (sep and len(hh) == 2 and len(mm) == 2 and hh.isdigit() and mm.isdigit()):
        msg = f"{field}: expected an IST time 'HH:MM', got {hhmm!r}"
        raise ValueError(msg)
    h, m = int(hh), int(mm)
    if h > 23 or m > 59:
        msg = f"{field}: expected an IST time 'HH:MM', got {hhmm!r}"
        raise ValueError(msg)
    return (h * 60 + m) * _MINUTE_NS


class OpeningRangeBreakoutParams(StrategyParams, frozen=True, kw_only=True):
    """``range_minutes`` from 09:15 IST (a whole number of candles); ``exit_time`` "HH:MM" IST or None."""

    range_minutes: int = 15
    allow_short: bool = False
    stop_at: Literal["range", "mid"] = "range"
    exit_time: str | None = "15:10"

    def __post_init__(self) -> None:
        super().__post_init__()
        tf = parse_timeframe(self.timeframe)  # its ValueError names the timeframe
        if tf.daily:
            msg = f"timeframe: expected an intraday timeframe, got {self.timeframe}"
            raise ValueError(msg)
        range_ns = self.range_minutes * _MINUTE_NS
        if self.range_minutes <= 0 or range_ns % tf.ns:
            msg = f"range_minutes: expected a whole number of {self.timeframe} candles, got {self.range_minutes}"
            raise ValueError(msg)
        if SESSION_OPEN_NS + range_ns >= SESSION_CLOSE_NS:
            msg = f"range_minutes: expected a range that ends before 15:30, got {self.range_minutes}"
            raise ValueError(msg)
        if self.exit_time is not None:
            at = _clock_ns("exit_time", self.exit_time)
            if not SESSION_OPEN_NS + range_ns < at <= SESSION_CLOSE_NS:
                msg = f"exit_time: expected a time after the opening range and not after 15:30, got {self.exit_time!r}"
                raise ValueError(msg)


@strategy("opening_range_breakout")
class OpeningRangeBreakout(Strategy[OpeningRangeBreakoutParams]):
    """See the module docstring for the exact rules."""

    Params = OpeningRangeBreakoutParams

    def __init__(self, params: OpeningRangeBreakoutParams) -> None:
        super().__init__(params)
        self._range_ns = params.range_minutes * _MINUTE_NS
        self._exit_ns = None if params.exit_time is None else _clock_ns("exit_time", params.exit_time)
        self._day: int | None = None  # IST date (days since the epoch) of the session in progress
        self._high: float | None = None  # None: no usable range (yet) this session
        self._low: float | None = None
        self._entered = False  # the session's one entry has fired

    @classmethod
    def warmup(cls, params: OpeningRangeBreakoutParams) -> int:
        return params.range_minutes * _MINUTE_NS // parse_timeframe(params.timeframe).ns

    def on_candle(self, ctx: StrategyContext[OpeningRangeBreakoutParams], candle: Candle) -> list[TargetPosition]:
        p = self.params
        day = (candle.open_time + IST_OFFSET_NS) // DAY_NS
        if day != self._day:
            self._day, self._high, self._low, self._entered = day, None, None, False
        midnight = day * DAY_NS - IST_OFFSET_NS  # IST midnight in UTC ns
        start = midnight + SESSION_OPEN_NS
        if candle.open_time < start + self._range_ns:
            if candle.open_time == start:
                self._high, self._low = candle.high, candle.low
            elif self._high is not None and self._low is not None:
                self._high, self._low = max(self._high, candle.high), min(self._low, candle.low)
            return []
        if self._exit_ns is not None and candle.ts_event >= midnight + self._exit_ns:
            if ctx.position == 0:
                return []
            return [self.target(ctx, candle, 0, f"orb exit at {p.exit_time} IST")]
        high, low = self._high, self._low
        if self._entered or high is None or low is None:
            return []
        mid = (high + low) / 2.0
        if candle.close > high:
            want, stop, reason = p.qty, (low if p.stop_at == "range" else mid), f"orb close above range high {high}"
        elif candle.close < low and p.allow_short:
            want, stop, reason = -p.qty, (high if p.stop_at == "range" else mid), f"orb close below range low {low}"
        else:
            return []
        self._entered = True
        if want == ctx.position:
            return []
        return [self.target(ctx, candle, want, reason, stop_loss=stop)]
