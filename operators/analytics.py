"""Per-instrument market analytics: candles, indicators, patterns and OI in one core.

:class:`InstrumentAnalytics` is what the live and backtest flows keep per instrument. A tick
goes into the :class:`~operators.candles.CandleBook`; every candle that closes updates that
timeframe's indicators (the seed's "data structure that triggers indicator updates") and, on
a published timeframe, its pattern detector, so strategies read current values without
recomputing anything. It emits
the closed candles, an :class:`~schemas.analytics.IndicatorSnapshot` and any
:class:`~schemas.analytics.PatternSignal` for the timeframes chosen for publication, and OI
buildup changes for derivatives. Snapshots also carry the nearest swing support and
resistance of that timeframe (``swing.support``, ``swing.resistance``) and, once a daily bar
has closed, the classic and Camarilla pivots for the next session (``pivot.p``,
``pivot.r1``..``s3``, ``camarilla.r3``/``r4``/``s3``/``s4``).

>>> from operators.candles import APPLIED
>>> from schemas.market import Tick
>>> cfg = AnalyticsConfig(timeframes=("1m",), indicators=("sma:2",), publish_timeframes=("1m",))
>>> a = InstrumentAnalytics("NSE:INFY", cfg)
>>> t0 = 1_763_610_300 * 10**9  # 09:15 IST
>>> out = []
>>> for k, px in enumerate([10.0, 11.0, 12.0]):
...     ts = t0 + k * 60 * 10**9
...     tick = Tick(instrument="NSE:INFY", ts_event=ts, ts_init=ts, seq=k, ltp=px, last_qty=1, volume=k + 1,
...                 oi=0, bid=px, ask=px, bid_qty=1, ask_qty=1)
...     assert a.on_tick(tick, ts, out) == APPLIED
>>> [type(e).__name__ for e in out]
['Candle', 'IndicatorSnapshot', 'Candle', 'IndicatorSnapshot']
>>> out[-1].values, a.indicators["1m"].snapshot()
({'sma_2': 10.5}, {'sma_2': 10.5})
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from operators.candles import APPLIED, DEFAULT_TIMEFRAMES, IST_OFFSET_NS, CandleBook
from operators.indicators import REGISTRY as INDICATORS
from operators.indicators import IndicatorSet
from operators.levels import SwingLevels, camarilla_pivots, classic_pivots
from operators.open_interest import OiTracker
from operators.patterns import PatternDetector
from schemas.analytics import IndicatorSnapshot, PatternSignal
from schemas.market import Candle, Tick
from schemas.orders import TargetPosition
from schemas.risk import StrategyError

if TYPE_CHECKING:
    from operators.strategy_host import StrategyHost
    from schemas.control import ConfigureStrategy, DisableStrategy, EnableStrategy

DAY_NS = 86_400 * 10**9

# Ten indicators per timeframe by default: trend, momentum, volatility, volume.
DEFAULT_INDICATORS = (
    "ema:9",
    "ema:21",
    "sma:20",
    "rsi:14",
    "macd:12,26,9",
    "bbands:20,2",
    "atr:14",
    "adx:14",
    "supertrend:10,3",
    "vwap",
)


def _session(c: Candle) -> int:
    return (c.open_time + IST_OFFSET_NS) // DAY_NS


@functools.lru_cache(maxsize=256)
def merge_specs(base: tuple[str, ...], extra: tuple[str, ...]) -> tuple[str, ...]:
    """``base`` plus the specs of ``extra`` that compute something new (same key = same indicator).

    >>> merge_specs(("ema:9", "rsi:14"), ("rsi", "ema:21"))
    ('ema:9', 'rsi:14', 'ema:21')
    """
    out, keys = list(base), {INDICATORS.create(s)[0] for s in base}
    for spec in extra:
        key = INDICATORS.create(spec)[0]
        if key not in keys:
            keys.add(key)
            out.append(spec)
    return tuple(out)


@dataclass(frozen=True)
class AnalyticsConfig:
    """What to compute per instrument, and what to publish (chosen once, at the top)."""

    timeframes: tuple[str, ...] = DEFAULT_TIMEFRAMES
    indicators: tuple[str, ...] = DEFAULT_INDICATORS
    # Indicators are computed on every timeframe (strategies read them); snapshots and pattern
    # signals are published only for these (1s/5s snapshots would triple the output for no
    # reader), and patterns are only detected on these (nothing else reads them).
    publish_timeframes: tuple[str, ...] = ("1m", "5m", "15m", "1h", "1d")
    patterns: bool = True
    partial_every_ns: int = 0  # in-progress candle updates for the UI; 0 = none
    partial_timeframes: tuple[str, ...] = ("1m",)
    oi_min_interval_ns: int = 1_000_000_000

    def __post_init__(self) -> None:
        for tf in self.publish_timeframes + (self.partial_timeframes if self.partial_every_ns else ()):
            if tf not in self.timeframes:
                msg = f"timeframe {tf!r} is published but not computed; computed: {self.timeframes}"
                raise ValueError(msg)


class InstrumentAnalytics:
    """Candles, per-timeframe indicators and patterns, and OI buildup for one instrument."""

    __slots__ = (
        "_publish",
        "book",
        "host",
        "indicators",
        "instrument",
        "levels",
        "oi",
        "patterns",
        "pivots",
        "trade_from",
    )

    def __init__(
        self,
        instrument: str,
        cfg: AnalyticsConfig,
        *,
        track_oi: bool = False,
        host: StrategyHost | None = None,
        trade_from: int = 0,
    ) -> None:
        self.instrument = instrument
        self.book = CandleBook(
            instrument,
            cfg.timeframes,
            partial_every_ns=cfg.partial_every_ns,
            partial_timeframes=cfg.partial_timeframes if cfg.partial_every_ns else (),
        )
        # The strategies of this instrument read indicators from the same sets (one update per bar).
        need = host.indicator_specs() if host is not None else {}
        for tf in need:
            if tf not in cfg.timeframes:
                msg = f"{instrument}: a strategy trades timeframe {tf!r}, which is not computed ({cfg.timeframes})"
                raise ValueError(msg)
        self.indicators = {tf: IndicatorSet(merge_specs(cfg.indicators, need.get(tf, ()))) for tf in cfg.timeframes}
        self.host = host
        # Targets of candles that closed before this time are dropped (the strategies still see
        # those candles, so their state is warm): a start that replays the day's ticks, or
        # stored candles, never trades history.
        self.trade_from = trade_from
        self.patterns = {tf: PatternDetector() for tf in cfg.publish_timeframes} if cfg.patterns else {}
        self._publish = frozenset(cfg.publish_timeframes)
        # Swing support/resistance on the published timeframes; pivots from the last daily bar.
        self.levels = {tf: SwingLevels() for tf in cfg.publish_timeframes}
        self.pivots: dict[str, float] = {}
        self.oi = OiTracker(instrument, min_interval_ns=cfg.oi_min_interval_ns) if track_oi else None

    def on_tick(self, t: Tick, now: int, out: list[Any]) -> int:
        """Fold a tick; append closed candles and what they triggered to ``out``.

        Returns the CandleBook outcome (APPLIED, DUPLICATE, LATE, OUTSIDE_SESSION).
        """
        start = len(out)
        outcome = self.book.on_tick(t, now, out)
        if len(out) > start:
            self._after_candles(out, start, now)
        if outcome == APPLIED and self.oi is not None:
            change = self.oi.update(t.ltp, t.oi, t.ts_event, now)
            if change is not None:
                out.append(change)
        return outcome

    def begin_bar(self, c: Candle, now: int, out: list[Any]) -> int:
        """A closed bar of the finest timeframe from a candle input (a candle-only replay; see
        :meth:`CandleBook.begin_bar`): coarser bars it supersedes close, and what they trigger
        is appended to ``out``. :meth:`end_bar` closes the bar itself. Returns the outcome."""
        start = len(out)
        outcome = self.book.begin_bar(c, now, out)
        if len(out) > start:
            self._after_candles(out, start, now)
        return outcome

    def end_bar(self, now: int, out: list[Any]) -> None:
        start = len(out)
        self.book.end_bar(now, out)
        if len(out) > start:
            self._after_candles(out, start, now)

    def warm(self, candles: Iterable[Candle]) -> list[StrategyError]:
        """Fold stored closed candles (oldest first, earlier sessions) into the indicators,
        patterns, levels and strategies, publishing nothing and trading nothing. Returns the
        strategy errors they raised (they count toward disabling, so the caller reports them)."""
        sink: list[Any] = []
        errors: list[StrategyError] = []
        trade_from, self.trade_from = self.trade_from, 2**63 - 1
        try:
            for c in candles:
                if c.final and c.timeframe in self.indicators:
                    self._on_closed(c, c.ts_event, sink)
                    errors.extend(e for e in sink if type(e) is StrategyError)
                    sink.clear()
        finally:
            self.trade_from = trade_from
        return errors

    def control(self, cmd: EnableStrategy | DisableStrategy | ConfigureStrategy) -> bool:
        """Apply a strategy command here (see :meth:`StrategyHost.control`); a re-configured
        strategy that reads new indicators gets them, warmed from the candles the host keeps."""
        host = self.host
        if host is None or not host.control(cmd):
            return False
        for tf, specs in host.indicator_specs().items():
            ind = self.indicators.get(tf)
            if ind is None:
                msg = f"a strategy trades timeframe {tf!r}, which is not computed here"
                raise ValueError(msg)
            hist = host.history.get(tf, ())
            ind.add(specs, ((c.open, c.high, c.low, c.close, float(c.volume), _session(c)) for c in hist))
        return True

    def close_due(self, until: int, now: int, out: list[Any]) -> None:
        start = len(out)
        self.book.close_due(until, now, out)
        if len(out) > start:
            self._after_candles(out, start, now)

    def flush(self, now: int, out: list[Any]) -> None:
        start = len(out)
        self.book.flush(now, out)
        if len(out) > start:
            self._after_candles(out, start, now)

    def _after_candles(self, out: list[Any], start: int, now: int) -> None:
        closed = [c for c in out[start:] if c.final]
        for c in closed:
            self._on_closed(c, now, out)

    def _on_closed(self, c: Candle, now: int, out: list[Any]) -> None:
        tf = c.timeframe
        ind = self.indicators[tf]
        ind.on_bar(c.open, c.high, c.low, c.close, float(c.volume), _session(c))
        det = self.patterns.get(tf)
        hits = det.update(c.open, c.high, c.low, c.close) if det is not None else ()
        if tf == "1d" and c.low <= c.close <= c.high:
            cl, cam = classic_pivots(c.high, c.low, c.close), camarilla_pivots(c.high, c.low, c.close)
            self.pivots = {
                "pivot.p": cl.p, "pivot.r1": cl.r1, "pivot.r2": cl.r2, "pivot.r3": cl.r3,
                "pivot.s1": cl.s1, "pivot.s2": cl.s2, "pivot.s3": cl.s3,
                "camarilla.r3": cam.r3, "camarilla.r4": cam.r4, "camarilla.s3": cam.s3, "camarilla.s4": cam.s4,
            }  # fmt: skip
        host = self.host
        values: dict[str, float] | None = None
        if host is not None and tf in host.history:
            values = ind.snapshot()
            decided = host.on_candle(c, values, now)
            if decided:
                if c.ts_event < self.trade_from:  # history: the strategy saw it, nothing trades
                    decided = [d for d in decided if type(d) is not TargetPosition]
                for d in decided:
                    if type(d) is TargetPosition:
                        host.on_position(d.strategy, d.target_qty)  # target-based: assume it converges
                out.extend(decided)
        if tf in self._publish:
            values = ind.snapshot() if values is None else dict(values)
            swings = self.levels[tf]
            swings.update(c.high, c.low)
            support, resistance = swings.support_below(c.close), swings.resistance_above(c.close)
            if support is not None:
                values["swing.support"] = support
            if resistance is not None:
                values["swing.resistance"] = resistance
            if self.pivots:
                values.update(self.pivots)
            out.append(
                IndicatorSnapshot(
                    instrument=c.instrument,
                    timeframe=tf,
                    open_time=c.open_time,
                    ts_event=c.ts_event,
                    ts_init=now,
                    values=values,
                )
            )
            for h in hits:
                out.append(
                    PatternSignal(
                        instrument=c.instrument,
                        timeframe=tf,
                        open_time=c.open_time,
                        ts_event=c.ts_event,
                        ts_init=now,
                        pattern=h.pattern.value,
                        signal=h.signal,
                    )
                )
