"""The one pipeline builder shared by live, paper and backtest runs.

    ticks (md.ticks records) ─ decode ─┬─ per instrument: candles → indicators → patterns, OI buildup
                                       ├─ per option chain: PCR, max pain
                                       └─ (closed candles) market summary per timeframe
    → md.candles, md.analytics, md.dlq (late or undecodable ticks)

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream
from prometheus_client import Counter

from connectors.kafka import HEARTBEAT, Record
from operators.analytics import AnalyticsConfig, InstrumentAnalytics
from operators.candles import DUPLICATE, LATE, OUTSIDE_SESSION
from operators.market_summary import MarketSummaryBook
from operators.open_interest import OptionChain, option_chains
from schemas.codec import DecodeError, encode
from schemas.market import Candle, Instrument, InstrumentType, RejectReason, Tick, rejected
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.pipeline")
_LATE = "older than the open bar: its candle already closed"

TICKS_IGNORED = Counter("ticktape_candle_ticks_ignored_total", "Ticks not folded into candles", ["reason"])
CANDLES_CLOSED = Counter("ticktape_candles_closed_total", "Closed candles", ["timeframe"])
ANALYTICS_OUT = Counter("ticktape_analytics_events_total", "Analytics events published", ["kind"])

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


def _snapshot(state: Any, recovery: bool) -> Any:
    return pickle.loads(pickle.dumps(state, protocol=5)) if recovery else state


# ----------------------------------------------------------------------------- decode


class Reject(NamedTuple):
    """A tick the pipeline refuses (undecodable or late), on its way to the dead-letter topic."""

    topic: str
    instrument: str | None
    reason: RejectReason
    detail: str
    payload: bytes
    ts: int = 0  # event time of the tick, when it decoded


_TICK_DECODER = msgspec.json.Decoder(Tick)


def _decode_batch(records: list[Record]) -> list[tuple[str, Any]]:
    decode = _TICK_DECODER.decode
    out: list[tuple[str, Any]] = []
    for rec in records:
        if rec is HEARTBEAT or rec.partition < 0:
            continue
        try:
            t = decode(rec.value or b"")
        except msgspec.DecodeError as exc:
            err = DecodeError(rec.topic, rec.partition, rec.offset, str(exc))
            out.append(("", Reject(rec.topic, None, RejectReason.MALFORMED, str(err), rec.value or b"")))
            continue
        out.append((t.instrument, t))
    return out


# ----------------------------------------------------------------------------- per instrument


class InstrumentLogic(op.StatefulBatchLogic[Tick, Any, InstrumentAnalytics]):
    """Thin Bytewax wrapper of :class:`InstrumentAnalytics`: timers in live mode, flush on EOF.

    Bytewax builds logic without telling it the key, so a new instrument's core is made from
    its first tick.
    """

    def __init__(
        self,
        core: InstrumentAnalytics | None,
        factory: Callable[[str], InstrumentAnalytics],
        clock: MarketClock | None,
        ticks_topic: str,
        recovery: bool,
    ) -> None:
        self.core, self.factory, self.clock, self.ticks_topic = core, factory, clock, ticks_topic
        self.recovery = recovery
        self.last_event = 0

    def on_batch(self, values: list[Tick]) -> tuple[Iterable[Any], bool]:
        core, clock = self.core, self.clock
        if core is None:
            core = self.core = self.factory(values[0].instrument)
        self.last_event = max(self.last_event, values[-1].ts_event)
        out: list[Any] = []
        for t in values:
            if clock is not None:
                clock.observe(t.ts_event)
                now = clock.now()
            else:
                now = t.ts_event
            outcome = core.on_tick(t, now, out)
            if outcome:
                if outcome == LATE:
                    TICKS_IGNORED.labels("late").inc()
                    out.append(Reject(self.ticks_topic, t.instrument, RejectReason.LATE, _LATE, encode(t), t.ts_event))
                elif outcome == DUPLICATE:
                    TICKS_IGNORED.labels("duplicate").inc()
                elif outcome == OUTSIDE_SESSION:
                    TICKS_IGNORED.labels("outside_session").inc()
        return out, op.StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        if self.clock is not None and self.core is not None:
            self.core.close_due(self.clock.until(), self.clock.now(), out)
        return out, op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        if self.clock is None and self.core is not None:  # a replay ends: close every open bar
            self.core.flush(self.last_event, out)
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


@dataclass(frozen=True)
class MarketStreams:
    records: Stream[tuple[str, str, bytes]]  # (topic, key, value) for ProducerSink
    candles: Stream[Candle]  # closed and in-progress candles, for downstream (strategy) steps
    analytics: Stream[Any]  # IndicatorSnapshot, PatternSignal, OiChange, OptionChainStats, MarketSummary


def build_market(
    ticks: Stream[Record],
    universe: Iterable[Instrument],
    catalog: TopicCatalog,
    cfg: PipelineConfig,
) -> MarketStreams:
    """Add the market-analytics steps to the flow that owns ``ticks`` (md.ticks records)."""
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
    acfg, clock, rec = cfg.analytics, cfg.clock, cfg.recovery

    decoded = op.flat_map_batch("decode", ticks, _decode_batch)
    split = op.branch("decodable", decoded, lambda kv: type(kv[1]) is Tick)
    valid: Stream[tuple[str, Tick]] = split.trues  # type: ignore[assignment]

    def factory(instrument: str) -> InstrumentAnalytics:
        return InstrumentAnalytics(instrument, acfg, track_oi=instrument in derivatives)

    per_inst = op.stateful_batch("instrument", valid, lambda resume: InstrumentLogic(resume, factory, clock, t_ticks, rec))
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
                recs.append((t_candles, ev.instrument, encode(ev)))
                if ev.final:
                    closed_by_tf[ev.timeframe] = closed_by_tf.get(ev.timeframe, 0) + 1
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

    records = op.flat_map_batch("encode", events, encode_batch)
    candles = op.filter_map("candles", events, lambda ev: ev if type(ev) is Candle else None)
    analytics = op.filter_map("analytics", events, lambda ev: ev if type(ev) not in (Candle, Reject) else None)
    return MarketStreams(records=records, candles=candles, analytics=analytics)
