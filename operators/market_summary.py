"""Market breadth from closed candles: top movers, most active, advances and declines.

A pure, picklable core. The Bytewax wrapper runs one :class:`MarketSummaryBook` for the whole
market (a single key), feeds it every final candle and asks for a :class:`MarketSummary` at its
own event-time throttle; at 500 instruments a summary is a few ``heapq.nsmallest`` calls.

>>> from schemas.market import Candle
>>> def bar(sym, o, c, v):
...     return Candle(instrument=sym, timeframe="5m", open_time=0, ts_event=300, ts_init=300, open=o, high=max(o, c),
...                   low=min(o, c), close=c, volume=v, trade_count=1, vwap=c, oi=0, final=True)
>>> book = MarketSummaryBook(top_n=2)
>>> book.set_reference("NSE:INFY", 100.0, ts_event=0)
>>> for b in (bar("NSE:INFY", 100.0, 102.0, 50), bar("NSE:TCS", 200.0, 198.0, 70), bar("NSE:SBIN", 80.0, 80.0, 10)):
...     _ = book.update(b)
>>> s = book.summary("5m", ts_event=300)
>>> [(m.instrument, m.change_pct) for m in s.gainers], [m.instrument for m in s.losers], s.advances, s.unchanged
([('NSE:INFY', 2.0)], ['NSE:TCS'], 1, 1)
>>> [m.instrument for m in s.most_active]
['NSE:TCS', 'NSE:INFY']
"""

from __future__ import annotations

import heapq
import math

from schemas.analytics import MarketSummary, Mover
from schemas.market import Candle

_IST_OFFSET_NS = 19_800 * 10**9  # NSE sessions are IST days (UTC+05:30)
_DAY_NS = 86_400 * 10**9

# Per timeframe and instrument: (session day, open_time of the latest bar, its close, its volume, day volume so far).
_Bar = tuple[int, int, float, int, int]


def _session_day(ts: int) -> int:
    return (ts + _IST_OFFSET_NS) // _DAY_NS


class MarketSummaryBook:
    """Latest change and day volume per instrument and timeframe, ranked on demand.

    **Reference price** (change % is ``(close - reference) / reference * 100``), per instrument
    and session (IST day), in order of preference:

    1. the previous close given with :meth:`set_reference` for that session (the broker's
       official previous close, e.g. Kite ``ohlc.close``);
    2. the last close this book saw in an earlier session (the last traded price, which can
       differ from the exchange's official closing price);
    3. the open of the session's earliest candle seen, of any timeframe.

    **Bars.** Only final candles count. For each timeframe the latest bar per instrument gives
    the close, and the bars' volumes add up to the day volume. A bar with the same
    ``open_time`` as the latest replaces it (at-least-once redelivery does not double-count);
    an older bar, or one from an earlier session, is ignored.

    **Summary.** Only instruments with a bar of the summary's session are counted. An
    instrument advanced if its change exceeds ``unchanged_band_pct``, declined if below minus
    that, else is unchanged (the default band 0 means exactly unchanged). Gainers are the
    ``top_n`` advancers by change, losers the ``top_n`` decliners by most negative change,
    most active the ``top_n`` by day volume; ties go to the instrument name, ascending.

    >>> from schemas.market import Candle
    >>> book = MarketSummaryBook(top_n=5)
    >>> book.update(Candle(instrument="NSE:ITC", timeframe="1m", open_time=0, ts_event=60, ts_init=60, open=400.0,
    ...                    high=401.0, low=395.0, close=396.0, volume=900, trade_count=9, vwap=398.2, oi=0, final=True))
    True
    >>> book.summary("1m", ts_event=60).losers
    (Mover(instrument='NSE:ITC', change_pct=-1.0, volume=900),)
    """

    __slots__ = ("_bars", "_day_open", "_explicit", "_last_close", "_learned", "top_n", "unchanged_band_pct")

    def __init__(self, top_n: int = 10, *, unchanged_band_pct: float = 0.0) -> None:
        if top_n < 0:
            msg = f"top_n must be >= 0, got {top_n}"
            raise ValueError(msg)
        if not unchanged_band_pct >= 0:
            msg = f"unchanged_band_pct must be >= 0, got {unchanged_band_pct}"
            raise ValueError(msg)
        self.top_n = top_n
        self.unchanged_band_pct = unchanged_band_pct
        self._explicit: dict[str, dict[int, float]] = {}  # instrument -> session day -> previous close
        self._learned: dict[str, tuple[int, float]] = {}  # instrument -> (session day, last close before it)
        self._day_open: dict[str, tuple[int, int, float]] = {}  # instrument -> (day, open_time, open)
        self._last_close: dict[str, tuple[int, int, float]] = {}  # instrument -> (day, ts_event, close)
        self._bars: dict[str, dict[str, _Bar]] = {}  # timeframe -> instrument -> bar

    def set_reference(self, instrument: str, prev_close: float, ts_event: int) -> None:
        """The previous session's close of ``instrument``, for the session (IST day) containing ``ts_event``.

        Setting the next session's reference ahead of time leaves the current one's in force.
        """
        if not (math.isfinite(prev_close) and prev_close > 0):
            msg = f"{instrument}: previous close must be a positive number, got {prev_close}"
            raise ValueError(msg)
        refs = self._explicit.setdefault(instrument, {})
        refs[_session_day(ts_event)] = prev_close
        last = self._last_close.get(instrument)
        if last is not None:  # sessions before the instrument's current one are over
            for day in [d for d in refs if d < last[0]]:
                del refs[day]

    def reference(self, instrument: str, ts_event: int) -> float | None:
        """The price change % is measured against, for the session containing ``ts_event``."""
        day = _session_day(ts_event)
        explicit = self._explicit.get(instrument)
        if explicit is not None and day in explicit:
            return explicit[day]
        learned = self._learned.get(instrument)
        if learned is not None and learned[0] == day:
            return learned[1]
        opened = self._day_open.get(instrument)
        return opened[2] if opened is not None and opened[0] == day else None

    def update(self, candle: Candle) -> bool:
        """Fold in a candle; False if it was ignored (not final, invalid, stale or out of order)."""
        if not candle.final or candle.volume < 0:
            return False
        if not (math.isfinite(candle.open) and candle.open > 0 and math.isfinite(candle.close) and candle.close > 0):
            return False
        inst, day = candle.instrument, _session_day(candle.open_time)
        last = self._last_close.get(inst)
        if last is not None and day < last[0]:
            return False
        bars = self._bars.setdefault(candle.timeframe, {})
        bar = bars.get(inst)
        if bar is None or day > bar[0]:
            bars[inst] = (day, candle.open_time, candle.close, candle.volume, candle.volume)
        elif day < bar[0] or candle.open_time < bar[1]:
            return False
        elif candle.open_time == bar[1]:  # redelivered or corrected bar: replace, don't add
            bars[inst] = (day, bar[1], candle.close, candle.volume, bar[4] - bar[3] + candle.volume)
        else:
            bars[inst] = (day, candle.open_time, candle.close, candle.volume, bar[4] + candle.volume)

        if last is None or day > last[0]:
            if last is not None:
                self._learned[inst] = (day, last[2])
            self._last_close[inst] = (day, candle.ts_event, candle.close)
        elif candle.ts_event >= last[1]:
            self._last_close[inst] = (day, candle.ts_event, candle.close)
        opened = self._day_open.get(inst)
        if opened is None or day > opened[0] or candle.open_time < opened[1]:
            self._day_open[inst] = (day, candle.open_time, candle.open)
        return True

    def movers(self, timeframe: str, ts_event: int) -> list[Mover]:
        """Every instrument with a ``timeframe`` bar in the session containing ``ts_event``, unranked."""
        day = _session_day(ts_event)
        out: list[Mover] = []
        for inst, (bar_day, _, close, _, day_volume) in self._bars.get(timeframe, {}).items():
            if bar_day != day:
                continue
            ref = self.reference(inst, ts_event)
            if ref is not None:
                out.append(Mover(inst, (close - ref) / ref * 100.0, day_volume))
        return out

    def summary(self, timeframe: str, ts_event: int, ts_init: int | None = None) -> MarketSummary:
        """The breadth of ``timeframe`` now; ``ts_init`` defaults to ``ts_event``."""
        rows = self.movers(timeframe, ts_event)
        band, n = self.unchanged_band_pct, self.top_n
        up = [m for m in rows if m.change_pct > band]
        down = [m for m in rows if m.change_pct < -band]
        return MarketSummary(
            timeframe=timeframe,
            ts_event=ts_event,
            ts_init=ts_event if ts_init is None else ts_init,
            gainers=tuple(heapq.nsmallest(n, up, key=lambda m: (-m.change_pct, m.instrument))),
            losers=tuple(heapq.nsmallest(n, down, key=lambda m: (m.change_pct, m.instrument))),
            most_active=tuple(heapq.nsmallest(n, rows, key=lambda m: (-m.volume, m.instrument))),
            advances=len(up),
            declines=len(down),
            unchanged=len(rows) - len(up) - len(down),
        )
