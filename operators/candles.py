"""Multi-timeframe candles for one instrument, aligned to the NSE session.

:class:`CandleBook` folds ticks into every configured timeframe at once. Rules, exactly:

* **Session.** Bars are aligned to the session open, 09:15 IST; a day's intraday bars are
  ``09:15 + k·tf`` and the last one is cut at 15:30 (a 75-minute grid ends exactly there;
  an hourly grid's last bar is 15:15–15:30). The daily bar opens at 09:15 and closes at
  15:30. Ticks outside 09:15–15:30 IST are not aggregated (``OUTSIDE_SESSION``).
* **Base bars.** Only the finest timeframe (the base) is updated per tick. Every coarser bar
  is the fold of the closed bars of its parent timeframe (the coarsest finer one whose bars
  nest in it: 1s → 5s → 1m → 5m → 15m → 1h → 1d, 15m → 75m), merged as they close. Every
  timeframe must be a whole multiple of the base, so all bars nest.
* **Closing.** A bar closes on the first tick of a later bar, on :meth:`close_due` (the live
  flow calls it from a wall-clock timer at bar end + grace), or on :meth:`flush` (end of a
  replay). Bars without ticks are not emitted. A final candle's ``ts_event`` is its close
  time (bar end, or 15:30 for the last bar of the day).
* **Duplicates and late ticks.** ``Tick.seq`` is the per-instrument feed sequence assigned in
  arrival order, so a tick whose ``seq`` is not above the last one seen is a redelivery
  (``DUPLICATE``, ignored). A tick older than the open bar of any timeframe - that is,
  belonging to a bar already closed - is ``LATE``: the caller counts and publishes it; it
  never rewrites a closed bar. Within the open base bar, out-of-order ticks are folded by
  event time (the earliest sets the open, the latest the close).
* **Volume** is the delta of the cumulative day volume against the previous applied tick
  (the first tick of an IST day counts its whole cumulative volume; the first tick the book
  ever sees counts its ``last_qty``, so a mid-day start does not dump the day's volume into
  one bar). ``vwap`` is Σ(price·Δvolume)/ΣΔvolume, or the close when the bar has no volume
  (indices). ``trade_count`` is the number of ticks folded in; ``oi`` is the OI at close.
* **In-progress updates.** With ``partial_every_ns > 0``, at most one non-final candle per
  partial timeframe is emitted per that much event time, for the UI.

>>> from schemas.market import Tick
>>> book = CandleBook("NSE:INFY", ("1m", "5m"))
>>> open_ = 1_763_610_300 * 10**9  # 2025-11-20 09:15:00 IST
>>> def tick(sec, px, vol, seq):
...     ts = open_ + sec * 10**9
...     return Tick(instrument="NSE:INFY", ts_event=ts, ts_init=ts, seq=seq, ltp=px, last_qty=1, volume=vol,
...                 oi=0, bid=px, ask=px, bid_qty=1, ask_qty=1)
>>> out = []  # the first tick the book sees counts its last_qty (1), later ones the volume delta
>>> [book.on_tick(tick(s, p, v, i), 0, out) for i, (s, p, v) in enumerate([(1, 10.0, 5), (30, 11.0, 9), (61, 9.5, 12)])]
[0, 0, 0]
>>> [(c.timeframe, c.open, c.high, c.low, c.close, c.volume) for c in out]
[('1m', 10.0, 11.0, 10.0, 11.0, 5)]
>>> book.flush(0, out)
>>> [(c.timeframe, c.close, c.volume, c.trade_count) for c in out[1:]]
[('1m', 9.5, 3, 1), ('5m', 9.5, 8, 3)]
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta, timezone
from typing import NamedTuple

from schemas.market import Candle, Tick

IST_OFFSET_NS = 19_800 * 10**9
IST = timezone(timedelta(seconds=IST_OFFSET_NS // 10**9), "IST")  # NSE sessions are IST days
DAY_NS = 86_400 * 10**9
SESSION_OPEN_NS = (9 * 3600 + 15 * 60) * 10**9  # 09:15 IST, from IST midnight
SESSION_CLOSE_NS = (15 * 3600 + 30 * 60) * 10**9  # 15:30 IST
SESSION_NS = SESSION_CLOSE_NS - SESSION_OPEN_NS

DEFAULT_TIMEFRAMES = ("1s", "5s", "1m", "5m", "15m", "1h", "1d")

# Outcomes of CandleBook.on_tick.
APPLIED, DUPLICATE, LATE, OUTSIDE_SESSION = 0, 1, 2, 3

_UNITS = {"s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_TF = re.compile(r"^([1-9][0-9]*)([smhd])$")


class Timeframe(NamedTuple):
    name: str
    ns: int  # bar length; for "1d" the session length
    daily: bool


def parse_timeframe(name: str) -> Timeframe:
    """``"15s"``, ``"75m"``, ``"1h"`` or ``"1d"``; intraday bars must divide into whole seconds.

    >>> parse_timeframe("75m")
    Timeframe(name='75m', ns=4500000000000, daily=False)
    """
    m = _TF.match(name)
    if m is None:
        msg = f"timeframe {name!r}: expected <n>s, <n>m, <n>h or 1d (e.g. 1s, 5m, 75m, 1h, 1d)"
        raise ValueError(msg)
    n, unit = int(m.group(1)), m.group(2)
    if unit == "d":
        if n != 1:
            msg = f"timeframe {name!r}: only 1d is supported among daily bars"
            raise ValueError(msg)
        return Timeframe(name, SESSION_NS, True)
    ns = n * _UNITS[unit]
    if ns > SESSION_NS:
        msg = f"timeframe {name!r} is longer than the 6h15m session; use 1d"
        raise ValueError(msg)
    return Timeframe(name, ns, ns == SESSION_NS)


def parse_timeframes(names: Iterable[str]) -> tuple[Timeframe, ...]:
    """Parse, sort fine to coarse, and check that every timeframe is a multiple of the finest."""
    tfs = sorted({parse_timeframe(n) for n in names}, key=lambda t: t.ns)
    if not tfs:
        msg = "at least one timeframe is required"
        raise ValueError(msg)
    base = tfs[0]
    for tf in tfs[1:]:
        if tf.ns % base.ns:
            msg = f"timeframe {tf.name} is not a whole multiple of the finest timeframe {base.name}"
            raise ValueError(msg)
    return tuple(tfs)


def session_bounds(ts: int) -> tuple[int, int]:
    """(session open, session close) in UTC ns of the IST day containing ``ts``."""
    day = (ts + IST_OFFSET_NS) // DAY_NS * DAY_NS - IST_OFFSET_NS
    return day + SESSION_OPEN_NS, day + SESSION_CLOSE_NS


# The attributes of a bar and of a book: their __slots__, and what a snapshot holds, in this
# order (a class compiled by mypyc has no __slots__ at run time, so pickling reads these).
_BAR_STATE = ("close", "close_at", "count", "end", "first_ts", "high", "last_ts", "low", "oi", "open", "open_time",
              "pv", "volume")  # fmt: skip
_BOOK_STATE = ("_bars", "_children", "_floor", "_last_day", "_last_partial", "_last_seq", "_last_vol", "_parent",
               "_partial_every", "_partial_idx", "instrument", "timeframes")  # fmt: skip


class _Bar:
    """Mutable accumulator of one bar (an implementation detail of CandleBook)."""

    __slots__ = _BAR_STATE

    def __init__(self, open_time: int, end: int, close_at: int) -> None:
        self.open_time, self.end, self.close_at = open_time, end, close_at
        self.open = self.high = self.low = self.close = 0.0
        self.volume = self.count = self.oi = 0
        self.pv = 0.0
        self.first_ts = self.last_ts = -1  # -1: nothing folded in yet

    def fold(self, b: _Bar) -> None:
        """Merge a later, closed base bar into this coarser bar."""
        if self.first_ts < 0:
            self.open, self.high, self.low, self.first_ts = b.open, b.high, b.low, b.first_ts
        else:
            self.high = max(self.high, b.high)
            self.low = min(self.low, b.low)
        self.close, self.oi, self.last_ts = b.close, b.oi, b.last_ts
        self.volume += b.volume
        self.count += b.count
        self.pv += b.pv

    def __getnewargs__(self) -> tuple[int, int, int]:
        return 0, 0, 0  # unpickled as _Bar(0, 0, 0), then set from the state

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, k) for k in _BAR_STATE)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for k, v in zip(_BAR_STATE, state, strict=True):
            setattr(self, k, v)


class CandleBook:
    """Every timeframe of one instrument (see the module docstring for the rules)."""

    __slots__ = _BOOK_STATE

    def __init__(
        self,
        instrument: str,
        timeframes: Iterable[str] = DEFAULT_TIMEFRAMES,
        *,
        partial_every_ns: int = 0,
        partial_timeframes: Iterable[str] | None = None,
    ) -> None:
        self.instrument = instrument
        self.timeframes = tfs = parse_timeframes(timeframes)
        names = [tf.name for tf in tfs]
        wanted = names if partial_timeframes is None else list(partial_timeframes)
        for n in wanted:
            if n not in names:
                msg = f"partial timeframe {n!r} is not one of the configured timeframes {names}"
                raise ValueError(msg)
        self._partial_idx = tuple(i for i, n in enumerate(names) if n in wanted)
        self._partial_every = partial_every_ns
        self._last_partial = -(2**62)
        # Each coarser bar is folded from the closed bars of its parent: the coarsest finer
        # timeframe whose bars nest in it (every intraday bar nests in the day). A closing base
        # bar is folded once, not into every timeframe.
        parent = [-1]
        for i in range(1, len(tfs)):
            parent.append(max(j for j in range(i) if tfs[i].daily or tfs[i].ns % tfs[j].ns == 0))
        self._parent = tuple(parent)
        self._children = tuple(tuple(i for i in range(len(tfs)) if parent[i] == j) for j in range(len(tfs)))
        self._bars: list[_Bar | None] = [None] * len(tfs)  # the open bar per timeframe; [0] is the base
        self._floor = -(2**62)  # ticks before this belong to closed bars
        self._last_seq = -(2**62)
        self._last_vol = -1  # cumulative volume of the previous applied tick; -1: none yet
        self._last_day = -1

    def __getnewargs__(self) -> tuple[str]:
        return (self.instrument,)  # unpickled as CandleBook(instrument), then set from the state

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, k) for k in _BOOK_STATE)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for k, v in zip(_BOOK_STATE, state, strict=True):
            setattr(self, k, v)

    # ------------------------------------------------------------------ ticks

    def on_tick(self, t: Tick, now: int, out: list[Candle]) -> int:
        """Fold one tick; closed (and throttled in-progress) candles are appended to ``out``.

        ``now`` becomes the ``ts_init`` of emitted candles. Returns APPLIED, DUPLICATE, LATE or
        OUTSIDE_SESSION.
        """
        seq = t.seq
        if seq <= self._last_seq:
            return DUPLICATE
        ts = t.ts_event
        bar = self._bars[0]
        if bar is None or not (bar.open_time <= ts < bar.end):
            s_open, s_close = session_bounds(ts)
            if not (s_open <= ts < s_close):
                self._last_seq = seq
                return OUTSIDE_SESSION
            if ts < self._floor:
                self._last_seq = seq
                return LATE
            bar = self._roll(ts, s_open, s_close, now, out)
        self._last_seq = seq
        # Volume: delta of the cumulative day volume against the previous applied tick.
        vol = t.volume
        day = (ts + IST_OFFSET_NS) // DAY_NS
        last = self._last_vol
        if last < 0:
            delta = t.last_qty
        elif day != self._last_day:
            delta = vol
        else:
            delta = vol - last if vol > last else 0
        self._last_vol, self._last_day = vol, day
        px = t.ltp
        if bar.first_ts < 0:
            bar.open = bar.high = bar.low = bar.close = px
            bar.first_ts = bar.last_ts = ts
            bar.oi = t.oi
        else:
            if px > bar.high:
                bar.high = px
            elif px < bar.low:
                bar.low = px
            if ts >= bar.last_ts:
                bar.close, bar.last_ts, bar.oi = px, ts, t.oi
            elif ts < bar.first_ts:
                bar.open, bar.first_ts = px, ts
        bar.volume += delta
        bar.pv += px * delta
        bar.count += 1
        if self._partial_every and ts - self._last_partial >= self._partial_every:
            self._last_partial = ts
            self._emit_partials(now, out)
        return APPLIED

    def _roll(self, ts: int, s_open: int, s_close: int, now: int, out: list[Candle]) -> _Bar:
        """Open the base bar for ``ts`` (in session, not late), closing what it supersedes."""
        bars, tfs = self._bars, self.timeframes
        for i in range(len(bars)):  # fine to coarse: a bar is complete before its parent is folded in
            cur = bars[i]
            if cur is not None and (i == 0 or ts >= cur.end):
                self._close(i, now, out)
        base_tf = tfs[0]
        open_time = s_open + (ts - s_open) // base_tf.ns * base_tf.ns
        end = s_close if base_tf.daily else open_time + base_tf.ns
        base = bars[0] = _Bar(open_time, end, min(end, s_close))
        self._floor = max(self._floor, open_time)
        for i in range(1, len(bars)):
            if bars[i] is None:
                tf = tfs[i]
                if tf.daily:
                    bars[i] = _Bar(s_open, s_close, s_close)
                else:
                    o = s_open + (ts - s_open) // tf.ns * tf.ns
                    bars[i] = _Bar(o, o + tf.ns, min(o + tf.ns, s_close))
        return base

    def _close(self, i: int, now: int, out: list[Candle]) -> None:
        """Emit the open bar of timeframe ``i`` and fold it into the bars built from it."""
        bar = self._bars[i]
        assert bar is not None
        self._bars[i] = None
        if i:
            self._floor = max(self._floor, bar.end)
        if bar.first_ts < 0:  # nothing was folded in (cannot happen for the base)
            return
        self._emit(self.timeframes[i], bar, True, now, out)
        for k in self._children[i]:
            child = self._bars[k]
            if child is not None:
                child.fold(bar)

    # ------------------------------------------------------------------ bars

    def begin_bar(self, c: Candle, now: int, out: list[Candle]) -> int:
        """Start a closed bar of the base timeframe from a candle input (a candle-only replay):
        every coarser bar it supersedes closes first, as the first tick of that bar would close
        it. :meth:`end_bar` then closes the bar itself; between the two the caller may act at
        the bar's open. Returns APPLIED, DUPLICATE (same bar again), LATE or OUTSIDE_SESSION.

        >>> book = CandleBook("NSE:INFY", ("1m", "5m"))
        >>> t0 = 1_763_610_300 * 10**9  # 09:15 IST
        >>> out = []
        >>> for k in range(6):
        ...     bar = Candle(instrument="NSE:INFY", timeframe="1m", open_time=t0 + k * 60 * 10**9,
        ...                  ts_event=t0 + (k + 1) * 60 * 10**9, ts_init=0, open=10.0, high=10.0 + k, low=9.0,
        ...                  close=10.0 + k, volume=5, trade_count=1, vwap=10.0, oi=0, final=True)
        ...     assert book.begin_bar(bar, 0, out) == APPLIED
        ...     book.end_bar(0, out)
        >>> [(c.timeframe, c.high, c.volume) for c in out][4:]
        [('1m', 14.0, 5), ('5m', 14.0, 25), ('1m', 15.0, 5)]
        """
        base_tf = self.timeframes[0]
        if c.timeframe != base_tf.name:
            msg = f"{self.instrument}: a {c.timeframe} bar cannot feed a book whose finest timeframe is {base_tf.name}"
            raise ValueError(msg)
        ts = c.open_time
        s_open, s_close = session_bounds(ts)
        if not (s_open <= ts < s_close):
            return OUTSIDE_SESSION
        if ts < self._floor:
            return DUPLICATE if ts == self._last_seq else LATE
        self._last_seq = ts  # the open time of the newest bar, for duplicate detection
        bar = self._roll(ts, s_open, s_close, now, out)
        bar.open, bar.high, bar.low, bar.close = c.open, c.high, c.low, c.close
        bar.first_ts, bar.last_ts = ts, c.ts_event - 1
        bar.volume, bar.count, bar.oi = c.volume, c.trade_count, c.oi
        bar.pv = c.vwap * c.volume
        return APPLIED

    def end_bar(self, now: int, out: list[Candle]) -> None:
        """Close the base bar :meth:`begin_bar` started."""
        bar = self._bars[0]
        if bar is not None:
            self._floor = max(self._floor, bar.end)
            self._close(0, now, out)

    # ------------------------------------------------------------------ time

    def next_close_at(self) -> int | None:
        """The earliest close time among open bars (the live flow's timer adds its grace)."""
        base = self._bars[0]
        if base is not None:
            return base.close_at
        closes = [b.close_at for b in self._bars if b is not None]
        return min(closes) if closes else None

    def close_due(self, until: int, now: int, out: list[Candle]) -> None:
        """Close every open bar whose close time is at or before ``until`` (event-time ns)."""
        bars = self._bars
        for i in range(len(bars)):  # a bar is due no later than the coarser bars containing it
            cur = bars[i]
            if cur is not None and cur.close_at <= until:
                if i == 0:
                    self._floor = max(self._floor, cur.end)
                self._close(i, now, out)

    def flush(self, now: int, out: list[Candle]) -> None:
        """Close every open bar (end of a replay)."""
        for i in range(len(self._bars)):
            if self._bars[i] is not None:
                self._close(i, now, out)

    # ------------------------------------------------------------------ output

    def _merged(self, i: int) -> _Bar | None:
        """The open bar of timeframe ``i`` including the still-open finer bars inside it."""
        cur = self._bars[i]
        if i == 0 or cur is None:
            return cur
        inner = self._merged(self._parent[i])
        if inner is None or inner.first_ts < 0:
            return cur
        merged = _Bar(cur.open_time, cur.end, cur.close_at)
        if cur.first_ts >= 0:
            merged.fold(cur)
        merged.fold(inner)
        return merged

    def _emit_partials(self, now: int, out: list[Candle]) -> None:
        for i in self._partial_idx:
            bar = self._merged(i)
            if bar is not None and bar.first_ts >= 0:
                self._emit(self.timeframes[i], bar, False, now, out)

    def _emit(self, tf: Timeframe, b: _Bar, final: bool, now: int, out: list[Candle]) -> None:
        out.append(
            Candle(
                instrument=self.instrument,
                timeframe=tf.name,
                open_time=b.open_time,
                ts_event=b.close_at if final else b.last_ts,
                ts_init=now,
                open=b.open,
                high=b.high,
                low=b.low,
                close=b.close,
                volume=b.volume,
                trade_count=b.count,
                vwap=b.pv / b.volume if b.volume else b.close,
                oi=b.oi,
                final=final,
            )
        )
