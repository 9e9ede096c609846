"""The one pipeline builder shared by live, paper and backtest runs.

    ticks (md.ticks records) ─ decode ─┬─ per instrument: candles → indicators → patterns, OI buildup
                                       │                  → strategies (with cfg.strategies)
                                       ├─ per option chain: PCR, max pain
                                       └─ (closed candles) market summary per timeframe
    → md.candles, md.analytics, md.dlq (late or undecodable ticks), sig.signals, risk.events
      (strategy errors); with desks (flows.trading), the decisions stream handed to them right
      after the instrument step: each target as :class:`Decided` at the time of the tick that
      closed its candle, and the instrument's ticks as :class:`PriceRun` s, in the
      instrument's own order.

Only the clock differs between modes, and it is chosen once, here: a live
:class:`MarketClock` stamps outputs with wall time and closes idle bars on a timer at bar end
+ grace; a replay clock uses event time only, closes bars on the next tick or at end of
input, and makes every run byte-identical.
"""

from __future__ import annotations

import copy
import logging
import pickle
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream
from prometheus_client import Counter, Histogram

from operators.analytics import AnalyticsConfig, InstrumentAnalytics
from operators.candles import DUPLICATE, LATE, OUTSIDE_SESSION, parse_timeframes, session_bounds
from operators.market_summary import MarketSummaryBook
from operators.open_interest import OptionChain, option_chains
from operators.strategy_host import Deployment, StrategyHost
from schemas.codec import DecodeError, encode
from schemas.control import ConfigureStrategy, DisableStrategy, EnableStrategy
from schemas.market import Candle, Instrument, InstrumentType, RejectReason, Tick, rejected
from schemas.orders import TargetPosition
from schemas.risk import StrategyError
from schemas.topics import TopicCatalog
from strategies.registry import REGISTRY, StrategyRegistry

log = logging.getLogger("ticktape.pipeline")
_LATE = "older than the open bar: its candle already closed"

TICKS_IGNORED = Counter("ticktape_candle_ticks_ignored_total", "Ticks not folded into candles", ["reason"])
CANDLES_CLOSED = Counter("ticktape_candles_closed_total", "Closed candles", ["timeframe"])
ANALYTICS_OUT = Counter("ticktape_analytics_events_total", "Analytics events published", ["kind"])
STEP_SECONDS = Histogram(
    "ticktape_step_batch_seconds",
    "Live: processing time of one batch of one key in a stateful step",
    ["step"],
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


class TimedLiveBatches:
    """Mixin for a stateful step's logic: ``on_batch`` runs ``_process`` and, live (a clock is
    set), observes its duration in ``ticktape_step_batch_seconds{step=STEP}``; a replay is
    timed as a whole and pays nothing here."""

    STEP: str
    clock: MarketClock | None
    _timer: Histogram  # this step's child of STEP_SECONDS

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._timer = STEP_SECONDS.labels(cls.STEP)

    def on_batch(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        if self.clock is None:
            return self._process(values)
        t0 = time.perf_counter()
        try:
            return self._process(values)
        finally:
            self._timer.observe(time.perf_counter() - t0)

    def _process(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        raise NotImplementedError


SIGNALS = Counter("ticktape_signals_total", "Strategy decisions (target positions) published", ["strategy"])
STRATEGY_ERRORS = Counter("ticktape_strategy_errors_total", "Strategy exceptions caught while deciding", ["strategy"])

_DERIVATIVES = {InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE}


class MarketClock:
    """Market time for live runs: the newest event time, advanced by the wall time since.

    ``market_now`` is the newest tick's event time plus the wall time elapsed since that tick
    arrived. In steady live trading that is the wall clock (minus feed latency); while the flow
    catches up on a backlog it is the backlog's own event time, so catching up closes bars by
    market time and marks nothing late; when the whole market goes quiet it keeps moving with
    the wall clock, so the day's last bars still close. A bar is closed by the timer once
    ``market_now - grace`` passes its end. It works the same for a simulated session at any
    time of day. One clock per process, shared by every key of the flow.
    """

    def __init__(self, grace: timedelta, wall: Callable[[], int] = time.time_ns) -> None:
        self.grace_ns = int(grace.total_seconds() * 1e9)
        self.wall = wall
        self.max_event = 0
        self.last_arrival = 0

    def observe(self, ts_event: int) -> None:
        self.max_event = max(self.max_event, ts_event)
        self.last_arrival = self.wall()

    def now(self) -> int:
        """Wall time, for ``ts_init`` of what the flow emits."""
        return self.wall()

    def market_now(self) -> int:
        if not self.max_event:
            return 0
        return self.max_event + (self.wall() - self.last_arrival)

    def until(self) -> int:
        return self.market_now() - self.grace_ns

    def wall_when(self, market_ns: int) -> int:
        """The wall time at which market time will reach ``market_ns`` (if the market stays idle)."""
        return self.last_arrival + (market_ns - self.max_event)


@dataclass(frozen=True)
class PipelineConfig:
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    clock: MarketClock | None = None  # None: replay (event time only, flush at end of input)
    summary_timeframes: tuple[str, ...] = ("1m", "5m", "15m", "1d")
    summary_top: int = 10
    chain_min_interval_ns: int = 1_000_000_000
    open_interest: bool = True  # OI buildup per derivative and option-chain stats
    # With Bytewax recovery on, snapshots must be copies; without it Bytewax still asks for one
    # at every epoch for every key touched, and a deep copy of 500 instruments' analytics
    # costs more than computing them, so the live state is handed over as is.
    recovery: bool = False
    strategies: StrategySetup | None = None
    # A candle-only replay: the input topic carries closed candles of this timeframe (the finest
    # computed), which skip aggregation and feed indicators and strategies directly; no candle
    # is published (the input is the record of them). None: the input is ticks.
    bars: str | None = None

    def __post_init__(self) -> None:
        if self.bars is not None:
            finest = parse_timeframes(self.analytics.timeframes)[0].name
            if finest != self.bars:
                msg = f"a {self.bars} candle input needs {self.bars} as the finest timeframe; computed: {finest}"
                raise ValueError(msg)


@dataclass(frozen=True)
class StrategySetup:
    """The strategies the flow runs, evaluated inside each instrument's step on closed candles."""

    deployments: tuple[Deployment, ...]
    registry: StrategyRegistry = field(default_factory=lambda: REGISTRY)
    # Candles closing before this (ns) only warm the strategies; their targets are dropped. A
    # fresh live start sets it to "now", so replaying the retained day never trades history;
    # a restart from Bytewax recovery keeps the value its instruments were created with.
    trade_from: int = 0
    warm: Mapping[str, Sequence[Candle]] = field(default_factory=dict)  # stored closed candles, oldest first
    max_errors: int = 3

    def host(self, instrument: str) -> StrategyHost | None:
        if not any(d.subscribes(instrument) for d in self.deployments):
            return None
        return StrategyHost(instrument, self.deployments, self.registry, max_errors=self.max_errors)


def _snapshot(state: Any, recovery: bool) -> Any:
    return pickle.loads(pickle.dumps(state, protocol=5)) if recovery else state


# ----------------------------------------------------------------------------- decode


class PriceRun(NamedTuple):
    """Consecutive applied ticks of one instrument, on their way to the trading desk."""

    instrument: str
    ticks: list[Tick]


class Decided(NamedTuple):
    """A strategy's target, with the event time at which it was decided: the time of the tick
    that closed its candle (or the market time of a timer close). The desk orders decisions
    by it, so a decision comes after every tick before that one, whatever the batching."""

    at: int
    target: TargetPosition


class Reject(NamedTuple):
    """A tick the pipeline refuses (undecodable or late), on its way to the dead-letter topic."""

    topic: str
    instrument: str | None
    reason: RejectReason
    detail: str
    payload: bytes
    ts: int = 0  # event time of the tick, when it decoded


_DECODE: dict[type, Callable[[bytes], Any]] = {t: msgspec.json.Decoder(t).decode for t in (Tick, Candle)}


def market_parser(
    value_type: type[Tick | Candle], topic: str, timeframe: str | None = None
) -> Callable[[bytes, int, int], tuple[int, tuple[str, Any]]]:
    """The market source's ``parse`` (:class:`OrderedSource`): a record of ``topic`` at
    ``partition``/``offset`` becomes its event time and the flow's item for it,
    ``(instrument, value)``, or ``("", Reject)`` with the reason it cannot be one (merged
    first, then dead-lettered). A candle input (``timeframe`` set) takes only closed bars
    of that timeframe.

    >>> from schemas.codec import encode
    >>> c = Candle(instrument="NSE:INFY", timeframe="5m", open_time=0, ts_event=300, ts_init=300, open=10.0,
    ...            high=12.0, low=9.0, close=11.0, volume=8, trade_count=1, vwap=10.5, oi=0, final=True)
    >>> parse = market_parser(Candle, "bars", "1m")
    >>> ts, (key, reject) = parse(encode(c), 0, 7)
    >>> ts, key, reject.instrument, reject.detail
    (300, '', 'NSE:INFY', 'bars[0]@7: expected a closed 1m candle, got a closed 5m one')
    >>> parse(b"{not json", 0, 8)[1][1].detail[:25]
    'cannot decode bars[0]@8: '
    """
    decode = _DECODE[value_type]

    def parse(value: bytes, partition: int, offset: int) -> tuple[int, tuple[str, Any]]:
        try:
            v = decode(value)
        except msgspec.DecodeError as exc:
            err = DecodeError(topic, partition, offset, str(exc))
            return 0, ("", Reject(topic, None, RejectReason.MALFORMED, str(err), value))
        return v.ts_event, (v.instrument, v)

    if timeframe is None:
        return parse

    def parse_bar(value: bytes, partition: int, offset: int) -> tuple[int, tuple[str, Any]]:
        ts, item = parse(value, partition, offset)
        c = item[1]
        if type(c) is not Candle or (c.timeframe == timeframe and c.final):
            return ts, item
        why = (
            f"{topic}[{partition}]@{offset}: expected a closed {timeframe} candle, "
            f"got {'a closed' if c.final else 'an open'} {c.timeframe} one"
        )
        return ts, ("", Reject(topic, c.instrument, RejectReason.MALFORMED, why, value, c.ts_event))

    return parse_bar


def bar_ticks(c: Candle) -> list[Tick]:
    """The price path a candle-only replay shows the desk for one bar: open at the bar's open,
    then low and high (high first on a down bar), then the close just before the bar's close
    time - so stops see the bar's range and a decision taken at the close meets the close
    price. ``seq`` follows the open time, so it rises bar to bar.

    >>> c = Candle(instrument="NSE:INFY", timeframe="1m", open_time=0, ts_event=60, ts_init=60, open=10.0,
    ...            high=12.0, low=9.0, close=11.0, volume=8, trade_count=1, vwap=10.5, oi=0, final=True)
    >>> [(t.ts_event, t.ltp) for t in bar_ticks(c)]
    [(0, 10.0), (20, 9.0), (40, 12.0), (59, 11.0)]
    """
    o, span = c.open_time, c.ts_event - c.open_time
    first, second = (c.low, c.high) if c.close >= c.open else (c.high, c.low)
    seq, qty = (o // 1_000_000) * 4, c.volume // 4
    return [
        Tick(instrument=c.instrument, ts_event=ts, ts_init=ts, seq=seq + k, ltp=px, last_qty=qty, volume=0, oi=c.oi,
             bid=px, ask=px, bid_qty=0, ask_qty=0)
        for k, (ts, px) in enumerate(((o, c.open), (o + span // 3, first), (o + 2 * span // 3, second),
                                      (c.ts_event - 1, c.close)))
    ]  # fmt: skip


# ----------------------------------------------------------------------------- per instrument


def _decide(out: list[Any], start: int, at: int) -> bool:
    """Wrap the targets in ``out[start:]`` as :class:`Decided` at ``at``; True if there were any."""
    found = False
    for i in range(start, len(out)):
        e = out[i]
        if type(e) is TargetPosition:
            out[i] = Decided(at, e)
            found = True
    return found


class InstrumentLogic(TimedLiveBatches, op.StatefulBatchLogic[Tick, Any, InstrumentAnalytics]):
    """Thin Bytewax wrapper of :class:`InstrumentAnalytics`: timers in live mode, flush on EOF.

    Bytewax builds logic without telling it the key, so a new instrument's core is made from
    its first tick.
    """

    def __init__(
        self,
        core: InstrumentAnalytics | None,
        factory: Callable[[str, int], InstrumentAnalytics],
        clock: MarketClock | None,
        ticks_topic: str,
        recovery: bool,
        prices: bool,
    ) -> None:
        self.core, self.factory, self.clock, self.ticks_topic = core, factory, clock, ticks_topic
        self.recovery, self.prices = recovery, prices
        self.last_event = 0

    STEP = "instrument"

    def _process(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        core, clock = self.core, self.clock
        if core is None:
            first = next((v for v in values if type(v) is Tick or type(v) is Candle), None)
            if first is None:  # only commands for an instrument that has not ticked yet: nothing to do
                return (), op.StatefulBatchLogic.RETAIN
            core = self.core = self.factory(first.instrument, first.ts_event if type(first) is Tick else first.open_time)
        out: list[Any] = []
        prices = self.prices
        run: list[Tick] = []  # ticks since the last decision, for the trading desk, in order
        for t in values:
            if type(t) is not Tick:
                if type(t) is Candle:
                    run = self._bar(core, t, run, out)
                else:
                    self._command(core, t, out)
                continue
            if t.ts_event > self.last_event:  # noqa: PLR1730 (per tick: cheaper than max())
                self.last_event = t.ts_event
            if clock is not None:
                clock.observe(t.ts_event)
                now = clock.now()
            else:
                now = t.ts_event
            mark = len(out)
            outcome = core.on_tick(t, now, out)
            if prices:
                if len(out) > mark and _decide(out, mark, t.ts_event) and run:
                    # The decision was made on the candle before this tick: it reaches the desk
                    # after the ticks of that candle and before this one.
                    out.insert(mark, PriceRun(t.instrument, run))
                    run = []
                if not outcome:
                    run.append(t)
            if outcome:
                if outcome == LATE:
                    TICKS_IGNORED.labels("late").inc()
                    out.append(Reject(self.ticks_topic, t.instrument, RejectReason.LATE, _LATE, encode(t), t.ts_event))
                elif outcome == DUPLICATE:
                    TICKS_IGNORED.labels("duplicate").inc()
                elif outcome == OUTSIDE_SESSION:
                    TICKS_IGNORED.labels("outside_session").inc()
        if run:
            out.append(PriceRun(run[0].instrument, run))
        return out, op.StatefulBatchLogic.RETAIN

    def _bar(self, core: InstrumentAnalytics, c: Candle, run: list[Tick], out: list[Any]) -> list[Tick]:
        """One closed bar of a candle input; returns the price run still to be sent."""
        self.last_event = max(self.last_event, c.ts_event)
        mark = len(out)
        outcome = core.begin_bar(c, c.open_time, out)
        if outcome:
            if outcome == LATE:
                TICKS_IGNORED.labels("late").inc()
                out.append(Reject(self.ticks_topic, c.instrument, RejectReason.LATE, _LATE, encode(c), c.ts_event))
            else:
                TICKS_IGNORED.labels("duplicate" if outcome == DUPLICATE else "outside_session").inc()
            return run
        prices = self.prices
        if prices and len(out) > mark and _decide(out, mark, c.open_time) and run:
            out.insert(mark, PriceRun(c.instrument, run))  # coarser bars closed at this bar's open
            run = []
        if prices:
            run.extend(bar_ticks(c))
        mark = len(out)
        core.end_bar(c.ts_event, out)
        if prices and len(out) > mark and _decide(out, mark, c.ts_event) and run:
            out.insert(mark, PriceRun(c.instrument, run))
            run = []
        return run

    def _command(self, core: InstrumentAnalytics, cmd: Any, out: list[Any]) -> None:
        try:
            core.control(cmd)
        except ValueError as exc:  # bad params (ParamsError) or an uncomputed timeframe: refused, reported
            now = self.clock.now() if self.clock is not None else self.last_event
            out.append(
                StrategyError(
                    strategy=cmd.strategy,
                    instrument=core.instrument,
                    error_type=type(exc).__name__,
                    message=f"command {cmd.command_id} refused: {exc}"[:500],
                    error_count=0,
                    disabled=False,
                    ts_event=cmd.ts_event,
                    ts_init=now,
                )
            )

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        if self.clock is not None and self.core is not None:
            until = self.clock.until()
            self.core.close_due(until, self.clock.now(), out)
            if self.prices:
                _decide(out, 0, max(until, self.last_event))
        return out, op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        if self.clock is None and self.core is not None:  # a replay ends: close every open bar
            self.core.flush(self.last_event, out)
            if self.prices:
                _decide(out, 0, self.last_event)
        return out, op.StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.clock is None or self.core is None:
            return None
        due = self.core.book.next_close_at()
        if due is None:
            return None
        wall = self.clock.wall()
        at = self.clock.wall_when(due + self.clock.grace_ns)
        # Never in the past (that would spin); re-check at least every 250 ms, because market
        # time can run faster than the wall clock (an accelerated simulator).
        at = min(max(at, wall + 20_000_000), wall + 250_000_000)
        return datetime.fromtimestamp(at / 1e9, tz=UTC)

    def snapshot(self) -> InstrumentAnalytics:
        return _snapshot(self.core, self.recovery)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- option chains


class ChainLogic(op.StatefulBatchLogic[tuple[tuple[str, str], Tick], Any, OptionChain]):
    """Keyed by ``underlying|expiry``; items carry their chain key so a new chain can be made."""

    def __init__(
        self,
        chain: OptionChain | None,
        chains: dict[tuple[str, str], OptionChain],
        clock: MarketClock | None,
        recovery: bool,
    ) -> None:
        self.chain, self.chains, self.clock, self.recovery = chain, chains, clock, recovery

    def on_batch(self, values: list[tuple[tuple[str, str], Tick]]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        if self.chain is None:
            self.chain = copy.deepcopy(self.chains[values[0][0]])
        chain = self.chain
        for _key, t in values:
            now = t.ts_event if self.clock is None else self.clock.now()
            ev = (
                chain.update(t.instrument, t.oi, t.ts_event, now)
                if t.instrument in chain
                else (chain.update_underlying(t.ltp, t.ts_event, now))
            )
            if ev is not None:
                out.append(ev)
        return out, op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> OptionChain:
        return _snapshot(self.chain, self.recovery)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- summary


class SummaryLogic(op.StatefulBatchLogic[Candle, Any, MarketSummaryBook]):
    """One market-wide book; a summary of a timeframe is published when its next bar starts."""

    def __init__(
        self, book: MarketSummaryBook, timeframes: tuple[str, ...], clock: MarketClock | None, recovery: bool
    ) -> None:
        self.book, self.timeframes, self.clock, self.recovery = book, timeframes, clock, recovery
        self.current: dict[str, int] = {}  # timeframe -> open_time of the bars being collected

    def on_batch(self, values: list[Candle]) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        for c in values:
            cur = self.current.get(c.timeframe)
            if cur is not None and c.open_time > cur:
                now = c.ts_event if self.clock is None else self.clock.now()
                out.append(self.book.summary(c.timeframe, c.open_time - 1, now))
            if cur is None or c.open_time > cur:
                self.current[c.timeframe] = c.open_time
            self.book.update(c)
        return out, op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> MarketSummaryBook:
        return _snapshot(self.book, self.recovery)


# ----------------------------------------------------------------------------- builder


Records = Stream[tuple[str, str, bytes]]  # (topic, key, value) for ProducerSink


@dataclass(frozen=True)
class MarketStreams:
    records: Records
    trading: Records | None  # what the desks emitted (``desks`` given)


def build_market(
    market: Stream[tuple[str, Any]],
    universe: Iterable[Instrument],
    catalog: TopicCatalog,
    cfg: PipelineConfig,
    commands: Stream[tuple[str, Any]] | None = None,
    desks: Callable[[Stream[Any]], Records] | None = None,
) -> MarketStreams:
    """Add the market-analytics steps (and, with ``cfg.strategies``, strategy evaluation) to the
    flow that owns ``market``: the items of :func:`market_parser` (``(instrument, tick)``, or
    ``(instrument, candle)`` for a candle input, and ``("", Reject)``). ``commands`` are strategy commands keyed by
    instrument (see :func:`strategy_commands`). ``desks`` adds the steps that trade on the
    decisions stream (Decided targets and PriceRun, in each instrument's order;
    :func:`flows.trading.build_trading`) and returns their records.

    The desks are added right after the instrument step, before the steps that only publish
    (option chains, market summary, encoding). Timely runs a worker's active operators in the
    order they were added (lowest index first), so a batch's decisions reach the desk before
    those steps take their share of the batch. On the latency bench's scenario (1s bars, 500
    instruments, 40 deployments, 10k ticks/s; 3 runs each, interleaved) adding the desks last
    gave a decision latency of p50 28-31 / p99 81-87 ms, adding them here 15-17 / 49-50 ms."""
    universe = list(universe)
    derivatives = {i.instrument for i in universe if i.instrument_type in _DERIVATIVES} if cfg.open_interest else set()
    chains = option_chains(universe, min_interval_ns=cfg.chain_min_interval_ns) if cfg.open_interest else {}
    by_member: dict[str, list[tuple[str, str]]] = {}  # instrument -> chains it feeds (options and underlyings)
    for inst in universe:
        if inst.instrument_type in (InstrumentType.CE, InstrumentType.PE) and (inst.underlying, inst.expiry) in chains:
            by_member.setdefault(inst.instrument, []).append((inst.underlying, inst.expiry))  # type: ignore[arg-type]
    for under, expiry in chains:
        by_member.setdefault(under, []).append((under, expiry))
    t_ticks, t_candles = catalog.name("md.ticks"), catalog.name("md.candles")
    t_analytics, t_dlq = catalog.name("md.analytics"), catalog.name("md.dlq")
    t_signals, t_risk = catalog.name("sig.signals"), catalog.name("risk.events")
    acfg, clock, rec = cfg.analytics, cfg.clock, cfg.recovery

    bars = cfg.bars
    market_type = Tick if bars is None else Candle
    split = op.branch("decodable", market, lambda kv: type(kv[1]) is market_type)
    valid: Stream[tuple[str, Tick]] = split.trues  # type: ignore[assignment]

    strat = cfg.strategies

    def factory(instrument: str, first_event: int) -> InstrumentAnalytics:
        if strat is None:
            return InstrumentAnalytics(instrument, acfg, track_oi=instrument in derivatives)
        core = InstrumentAnalytics(
            instrument,
            acfg,
            track_oi=instrument in derivatives,
            host=strat.host(instrument),
            trade_from=strat.trade_from,
        )
        warm = [c for c in strat.warm.get(instrument, ()) if c.open_time < session_bounds(first_event)[0]]
        for err in core.warm(warm) if warm else ():
            log.warning("strategy %s failed on a stored candle of %s: %s", err.strategy, instrument, err.message)
        return core

    inst_in: Stream[tuple[str, Any]] = valid  # type: ignore[assignment]
    if commands is not None:
        inst_in = op.merge("with_commands", valid, commands)
    prices = strat is not None
    per_inst = op.stateful_batch(
        "instrument", inst_in, lambda resume: InstrumentLogic(resume, factory, clock, t_ticks, rec, prices)
    )
    trading = None
    if desks is not None:
        decided = op.filter_map("decisions", per_inst, lambda kv: kv[1] if type(kv[1]) in _DECISIONS else None)
        trading = desks(decided)
    routes = {sym: [(f"{k[0]}|{k[1]}", k) for k in keys] for sym, keys in by_member.items()}

    def route_batch(items: list[tuple[str, Tick]]) -> list[tuple[str, tuple[tuple[str, str], Tick]]]:
        out = []
        for sym, t in items:
            for key, chain in routes.get(sym, ()):
                out.append((key, (chain, t)))
        return out

    chain_ticks = op.flat_map_batch("chain_route", valid, route_batch)
    per_chain = op.stateful_batch("chain", chain_ticks, lambda resume: ChainLogic(resume, chains, clock, rec))

    per_key = op.merge("per_key", op.key_rm("unkey_inst", per_inst), op.key_rm("unkey_chain", per_chain))
    summary_tfs = frozenset(cfg.summary_timeframes)
    closed = op.filter_map(
        "summary_feed",
        per_key,
        lambda ev: ("market", ev) if type(ev) is Candle and ev.final and ev.timeframe in summary_tfs else None,
    )
    summary = op.stateful_batch(
        "summary",
        closed,
        lambda resume: SummaryLogic(resume or MarketSummaryBook(cfg.summary_top), cfg.summary_timeframes, clock, rec),
    )
    rejects = op.key_rm("unkey_rejects", split.falses)
    events = op.merge("events", per_key, op.key_rm("unkey_summary", summary), rejects)

    closed_by_tf: dict[str, int] = {}
    events_by_kind: dict[str, int] = {}

    def encode_batch(items: list[Any]) -> list[tuple[str, str, bytes]]:
        recs: list[tuple[str, str, bytes]] = []
        closed_by_tf.clear()
        events_by_kind.clear()
        for ev in items:
            kind = type(ev)
            if kind is Candle:
                if bars is None:  # a candle input is its own record: nothing goes back into it
                    recs.append((t_candles, ev.instrument, encode(ev)))
                if ev.final:
                    closed_by_tf[ev.timeframe] = closed_by_tf.get(ev.timeframe, 0) + 1
            elif kind is PriceRun:
                continue
            elif kind is Decided:
                recs.append((t_signals, ev.target.strategy, encode(ev.target)))
                SIGNALS.labels(ev.target.strategy).inc()
            elif kind is StrategyError:
                recs.append((t_risk, ev.strategy, encode(ev)))
                STRATEGY_ERRORS.labels(ev.strategy).inc()
            elif kind is Reject:
                rej = rejected(ev.topic, ev.instrument, ev.reason, ev.detail, ev.payload, ev.ts)
                recs.append((t_dlq, ev.instrument or "", encode(rej)))
            else:
                key = getattr(ev, "instrument", None) or getattr(ev, "underlying", None) or "market"
                recs.append((t_analytics, key, encode(ev)))
                events_by_kind[kind.__name__] = events_by_kind.get(kind.__name__, 0) + 1
        for tf, n in closed_by_tf.items():
            CANDLES_CLOSED.labels(tf).inc(n)
        for name, n in events_by_kind.items():
            ANALYTICS_OUT.labels(name).inc(n)
        return recs

    # A step runs on every item whether or not anything reads its output, so only the streams
    # the flows use are built (a candles or analytics stream would be a filter over every event).
    return MarketStreams(records=op.flat_map_batch("encode", events, encode_batch), trading=trading)


_DECISIONS = (Decided, PriceRun)  # what the desks take (strategy errors are only published)


def strategy_commands(commands: Stream[Any], universe: Iterable[Instrument]) -> tuple[Stream[tuple[str, Any]], Stream[Any]]:
    """Split decoded control commands: strategy commands go to every instrument's step (keyed
    by instrument), the rest (halt, resume, manual orders) to the account's desk."""
    symbols = [i.instrument for i in universe]
    split = op.branch("strategy_command", commands, lambda c: type(c) in _STRATEGY_COMMANDS)
    fanned = op.flat_map("to_instruments", split.trues, lambda c: [(sym, c) for sym in symbols])
    return fanned, split.falses


_STRATEGY_COMMANDS = (EnableStrategy, DisableStrategy, ConfigureStrategy)
