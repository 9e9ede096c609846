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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from prometheus_client import Counter

from connectors.kafka import HEARTBEAT, Record
from operators.analytics import AnalyticsConfig, InstrumentAnalytics
from operators.candles import DUPLICATE, LATE, OUTSIDE_SESSION
from operators.market_summary import MarketSummaryBook
from operators.open_interest import OptionChain, option_chains
from schemas.codec import DecodeError, codec_for, encode
from schemas.market import Candle, Instrument, InstrumentType, RejectedEvent, RejectReason, Tick
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.pipeline")

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


# ----------------------------------------------------------------------------- decode

CANDLE, EVENT, REJECT = "C", "E", "R"


def _decode_batch(records: list[Record]) -> list[tuple[str, Any]]:
    codec = codec_for(Tick)
    out: list[tuple[str, Any]] = []
    for rec in records:
        if rec is HEARTBEAT or rec.partition < 0:
            continue
        try:
            t = codec.decode(rec.value or b"", topic=rec.topic, partition=rec.partition, offset=rec.offset)
        except DecodeError as exc:
            out.append(("", (REJECT, (rec.topic, None, RejectReason.MALFORMED, str(exc), rec.value or b""))))
            continue
        out.append((t.instrument, t))
    return out


# ----------------------------------------------------------------------------- per instrument


class InstrumentLogic(op.StatefulBatchLogic[Tick, tuple[str, Any], InstrumentAnalytics]):
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
    ) -> None:
        self.core, self.factory, self.clock, self.ticks_topic = core, factory, clock, ticks_topic
        self.last_event = 0

    def on_batch(self, values: list[Tick]) -> tuple[Iterable[tuple[str, Any]], bool]:
        core, clock = self.core, self.clock
        if core is None:
            core = self.core = self.factory(values[0].instrument)
        self.last_event = max(self.last_event, values[-1].ts_event)
        out: list[Any] = []
        rejects: list[tuple[str, Any]] = []
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
                    rejects.append(
                        (
                            REJECT,
                            (
                                self.ticks_topic,
                                t.instrument,
                                RejectReason.LATE,
                                "older than the open bar: its candle already closed",
                                encode(t),
                            ),
                        )
                    )
                elif outcome == DUPLICATE:
                    TICKS_IGNORED.labels("duplicate").inc()
                elif outcome == OUTSIDE_SESSION:
                    TICKS_IGNORED.labels("outside_session").inc()
        return _tag(out) + rejects, op.StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        out: list[Any] = []
        if self.clock is not None and self.core is not None:
            self.core.close_due(self.clock.until(), self.clock.now(), out)
        return _tag(out), op.StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[tuple[str, Any]], bool]:
        out: list[Any] = []
        if self.clock is None and self.core is not None:  # a replay ends: close every open bar
            self.core.flush(self.last_event, out)
        return _tag(out), op.StatefulBatchLogic.RETAIN

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
        return copy.deepcopy(self.core)  # type: ignore[return-value]


def _tag(events: list[Any]) -> list[tuple[str, Any]]:
    return [(CANDLE, e) if type(e) is Candle else (EVENT, e) for e in events]


# ----------------------------------------------------------------------------- option chains


class ChainLogic(op.StatefulBatchLogic[tuple[tuple[str, str], Tick], tuple[str, Any], OptionChain]):
    """Keyed by ``underlying|expiry``; items carry their chain key so a new chain can be made."""

    def __init__(
        self, chain: OptionChain | None, chains: dict[tuple[str, str], OptionChain], clock: MarketClock | None
    ) -> None:
        self.chain, self.chains, self.clock = chain, chains, clock

    def on_batch(self, values: list[tuple[tuple[str, str], Tick]]) -> tuple[Iterable[tuple[str, Any]], bool]:
        out: list[tuple[str, Any]] = []
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
                out.append((EVENT, ev))
        return out, op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> OptionChain:
        return copy.deepcopy(self.chain)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- summary


class SummaryLogic(op.StatefulBatchLogic[Candle, tuple[str, Any], MarketSummaryBook]):
    """One market-wide book; a summary of a timeframe is published when its next bar starts."""

    def __init__(self, book: MarketSummaryBook, timeframes: tuple[str, ...], clock: MarketClock | None) -> None:
        self.book, self.timeframes, self.clock = book, timeframes, clock
        self.current: dict[str, int] = {}  # timeframe -> open_time of the bars being collected

    def on_batch(self, values: list[Candle]) -> tuple[Iterable[tuple[str, Any]], bool]:
        out: list[tuple[str, Any]] = []
        for c in values:
            cur = self.current.get(c.timeframe)
            if cur is not None and c.open_time > cur:
                now = c.ts_event if self.clock is None else self.clock.now()
                out.append((EVENT, self.book.summary(c.timeframe, c.open_time - 1, now)))
            if cur is None or c.open_time > cur:
                self.current[c.timeframe] = c.open_time
            self.book.update(c)
        return out, op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> MarketSummaryBook:
        return copy.deepcopy(self.book)


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
    derivatives = {i.instrument for i in universe if i.instrument_type in _DERIVATIVES}
    chains = option_chains(universe, min_interval_ns=cfg.chain_min_interval_ns)
    by_member: dict[str, list[tuple[str, str]]] = {}  # instrument -> chains it feeds (options and underlyings)
    for inst in universe:
        if inst.instrument_type in (InstrumentType.CE, InstrumentType.PE) and (inst.underlying, inst.expiry) in chains:
            by_member.setdefault(inst.instrument, []).append((inst.underlying, inst.expiry))  # type: ignore[arg-type]
    for under, expiry in chains:
        by_member.setdefault(under, []).append((under, expiry))
    t_ticks, t_candles = catalog.name("md.ticks"), catalog.name("md.candles")
    t_analytics, t_dlq = catalog.name("md.analytics"), catalog.name("md.dlq")
    acfg, clock = cfg.analytics, cfg.clock

    decoded = op.flat_map_batch("decode", ticks, _decode_batch)
    split = op.branch("decodable", decoded, lambda kv: type(kv[1]) is Tick)
    valid: Stream[tuple[str, Tick]] = split.trues  # type: ignore[assignment]

    def factory(instrument: str) -> InstrumentAnalytics:
        return InstrumentAnalytics(instrument, acfg, track_oi=instrument in derivatives)

    per_inst = op.stateful_batch("instrument", valid, lambda resume: InstrumentLogic(resume, factory, clock, t_ticks))
    chain_ticks = op.flat_map(
        "chain_route", valid, lambda kv: [(f"{k[0]}|{k[1]}", (k, kv[1])) for k in by_member.get(kv[0], ())]
    )
    per_chain = op.stateful_batch("chain", chain_ticks, lambda resume: ChainLogic(resume, chains, clock))

    tagged = op.merge("tagged", op.key_rm("unkey_inst", per_inst), op.key_rm("unkey_chain", per_chain))
    closed = op.filter_map(
        "summary_feed",
        tagged,
        lambda kv: (
            ("market", kv[1]) if kv[0] is CANDLE and kv[1].final and kv[1].timeframe in cfg.summary_timeframes else None
        ),
    )
    summary = op.stateful_batch(
        "summary",
        closed,
        lambda resume: SummaryLogic(resume or MarketSummaryBook(cfg.summary_top), cfg.summary_timeframes, clock),
    )
    rejects = op.key_rm("unkey_rejects", split.falses)
    events = op.merge("events", tagged, op.key_rm("unkey_summary", summary), rejects)

    def encode_batch(items: list[tuple[str, Any]]) -> list[tuple[str, str, bytes]]:
        recs: list[tuple[str, str, bytes]] = []
        for kind, ev in items:
            if kind is CANDLE:
                recs.append((t_candles, ev.instrument, encode(ev)))
                if ev.final:
                    CANDLES_CLOSED.labels(ev.timeframe).inc()
            elif kind is EVENT:
                key = getattr(ev, "instrument", None) or getattr(ev, "underlying", None) or "market"
                recs.append((t_analytics, key, encode(ev)))
                ANALYTICS_OUT.labels(type(ev).__name__).inc()
            else:
                topic, inst, reason, detail, payload = ev
                rej = RejectedEvent(
                    source_topic=topic,
                    instrument=inst,
                    reason=reason,
                    detail=detail,
                    payload=payload.decode("utf-8", "replace"),
                    ts_event=0,
                    ts_init=0,
                )
                recs.append((t_dlq, inst or "", encode(rej)))
        return recs

    records = op.flat_map_batch("encode", events, encode_batch)
    candles = op.filter_map("candles", events, lambda kv: kv[1] if kv[0] is CANDLE else None)
    analytics = op.filter_map("analytics", events, lambda kv: kv[1] if kv[0] is EVENT else None)
    return MarketStreams(records=records, candles=candles, analytics=analytics)
