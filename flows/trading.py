"""The trading half of the pipeline: strategy decisions and ticks into the account's desk.

    decisions (Decided targets and PriceRun; each instrument's own order)
    + desk commands (Halt, Resume, manual orders, ClosePosition, DisableStrategy)  ─ keyed by account ─▶ desk
    → ord.intents, ord.updates, ord.fills, pf.positions, risk.events

One :class:`~operators.desk.TradingDesk` per account, on one worker (cross-instrument risk
state is small and keyed by account, ARCHITECTURE.md §3). The desk works at the event time of
its input: ticks and decisions at their own (its clock never runs backwards), so a replay -
a backtest, or the catch-up after a crash - decides the same way and stamps the same times.
Commands are stamped by whoever issued them, on another clock, so live they are refused when
older than the signal age limit by the wall clock (never a halt), and otherwise act at the
market clock's time (newest event time plus the wall time since: the wall clock in real
trading, the simulated session's time on the simulator), as do the timers of an idle market.
The desk merges each batch by event time. Ticks reach the desk as one
:class:`PriceRun` per instrument per batch, so the per-tick cost is a loop iteration, not a
dataflow hop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Stream
from prometheus_client import Counter, Gauge, Histogram

from connectors.kafka import KafkaClientConfig, read_topics
from flows.pipeline import Decided, MarketClock, PriceRun, TimedLiveBatches, _snapshot
from operators.candles import DAY_NS, IST_OFFSET_NS
from operators.desk import TradingDesk
from operators.risk import RiskConfig
from operators.stops import StopConfig
from operators.venue import SimVenue
from schemas.codec import codec_for, encode
from schemas.control import (
    CancelManualOrder,
    ClosePosition,
    DisableStrategy,
    Halt,
    ManualOrder,
    ModifyManualOrder,
    Resume,
)
from schemas.market import Instrument, Tick
from schemas.orders import CancelOrder, Fill, OrderIntent, OrderUpdate, Position, VenueRequest
from schemas.risk import RiskRejected, StopAlert, TradingState, TradingStateChanged
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.trading")

TRADING_OUT = Counter("ticktape_trading_events_total", "Events emitted by the trading desk", ["kind"])
STATE = Gauge("ticktape_trading_state", "Account trading state: 0 ACTIVE, 1 REDUCING, 2 HALTED", ["account"])
DAY_PNL = Gauge("ticktape_day_pnl_rupees", "Account day PnL: realized + unrealized - charges", ["account"])
OPEN_POSITIONS = Gauge("ticktape_open_positions", "Open strategy positions of the account", ["account"])
EXPOSURE = Gauge("ticktape_gross_exposure_rupees", "Account gross exposure: sum of |qty| x last price", ["account"])
REJECTS = Counter("ticktape_risk_rejects_total", "Risk gate rejections, by reason code", ["reason"])
_STATE_CODE = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}
DECISION_LATENCY = Histogram(
    "ticktape_decision_to_intent_seconds",
    "Live: wall time from the tick that closed a candle (processed in its instrument's step) to the "
    "desk's order intents for the decision it triggered",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
DESK_COMMANDS = (Halt, Resume, ManualOrder, CancelManualOrder, ModifyManualOrder, ClosePosition, DisableStrategy)


@dataclass(frozen=True)
class TradingSetup:
    """The desks of the flow; chosen once at the top."""

    accounts: tuple[str, ...] = ("paper",)
    risk: RiskConfig = field(default_factory=RiskConfig)
    stops: StopConfig = field(default_factory=StopConfig)
    paper: bool = True  # fills from the simulated venue, in the flow; False: a broker's execution flow
    venue: Callable[[dict[str, Instrument]], SimVenue] = SimVenue
    halted: frozenset[str] = frozenset()  # accounts whose persisted state is HALTED at start
    # Live: (account, since_ns) -> that account's intents, cancels, updates and fills published
    # since then (read_published); a desk takes them back before its first batch (TradingDesk.restore).
    published: Callable[[str, int], Iterable[Any]] | None = None


class MergeOrder:
    """The order in which a desk takes one batch: by (event time, decision 0 / tick 1 / command 2,
    instrument, strategy / seq / command id) - a decision precedes the tick that closed its
    candle; the rest only breaks ties, and full ties keep their arrival order.

    Sorting those tuples compared strings at every tie, and a candle replay's bars share their
    times across the whole universe. So each item gets one int instead, ordered as its tuple:
    time relative to the batch's first item (a small int, negative if earlier), kind, the
    instrument's rank among the names seen so far, and the rank of the strategy (or command id)
    among the batch's ones. Ticks leave the last field 0: the ticks of one instrument come in
    their run's order, which is their seq order (a run is in feed order, duplicates already
    dropped), and a stable sort keeps it.
    """

    __slots__ = ("_rank",)

    def __init__(self) -> None:
        self._rank: dict[str, int] = {}

    def _ranks(self, runs: list[list[Tick]], decided: list[Decided]) -> dict[str, int]:
        rank = self._rank
        new = {r[0].instrument for r in runs if r[0].instrument not in rank}
        new.update(d.target.instrument for d in decided if d.target.instrument not in rank)
        if new:
            rank = self._rank = {n: i for i, n in enumerate(sorted(new.union(rank)))}
        return rank

    def order(self, runs: list[list[Tick]], decided: list[Decided], commands: list[Any]) -> list[Any]:
        """Ticks (each list one instrument's, in feed order), decisions and commands, merged."""
        rank = self._ranks(runs, decided)
        strategies = {n: i for i, n in enumerate(sorted({d.target.strategy for d in decided}))} if decided else {}
        ids = {n: i for i, n in enumerate(sorted({c.command_id for c in commands}))} if commands else {}
        sb = max(len(strategies), len(ids)).bit_length()
        kb = sb + len(rank).bit_length()  # the kind's lowest bit
        shift = kb + 2
        first = runs[0][0].ts_event if runs else decided[0].at if decided else commands[0].ts_event
        tick = 1 << kb
        consts = [tick | rank[r[0].instrument] << sb for r in runs]
        keys = [(t.ts_event - first) << shift | c for r, c in zip(runs, consts, strict=True) for t in r]
        values: list[Any] = [t for r in runs for t in r]
        for d in decided:
            values.append(d)
            keys.append((d.at - first) << shift | rank[d.target.instrument] << sb | strategies[d.target.strategy])
        for cmd in commands:
            values.append(cmd)
            keys.append((cmd.ts_event - first) << shift | 2 << kb | ids[cmd.command_id])
        return [values[i] for i in sorted(range(len(keys)), key=keys.__getitem__)]


class DeskLogic(TimedLiveBatches, op.StatefulBatchLogic[Any, Any, TradingDesk]):
    STEP = "desk"

    def __init__(
        self,
        desk: TradingDesk | None,
        factory: Callable[[str], TradingDesk],
        clock: MarketClock | None,
        recovery: bool,
        published: Callable[[str, int], Iterable[Any]] | None = None,
    ) -> None:
        self.desk, self.factory, self.clock, self.recovery = desk, factory, clock, recovery
        self.last_event = 0
        self.last_tick_wall = 0
        self.published = published  # taken back once, before the first live batch
        self._order = MergeOrder()
        self._gauges: tuple[Any, ...] | None = None

    def _process(self, values: list[Any]) -> tuple[Iterable[Any], bool]:
        desk = self.desk
        if desk is None:  # Bytewax does not tell the logic its key: every value carries it
            desk = self.desk = self.factory(values[0][0])
        clock = self.clock
        out: list[Any] = []
        if self.published is not None and clock is not None and clock.market_now():
            self._restore(desk, clock.market_now(), out)
        if clock is not None and any(type(v) is PriceRun for _, v in values):
            self.last_tick_wall = clock.wall()
        self._merged(desk, values, out, None if clock is None else clock.market_now())
        if clock is None:
            due = desk.next_wake()
            if due is not None and due <= self.last_event:
                desk.on_timer(self.last_event, out)
        self._report(desk)
        return out, op.StatefulBatchLogic.RETAIN

    def _restore(self, desk: TradingDesk, market_now: int, out: list[Any]) -> None:
        """Before the first live batch of this process: what the desk published today but its
        state (a snapshot, or nothing) does not hold comes back in (:meth:`TradingDesk.restore`)."""
        published, self.published = self.published, None
        assert published is not None
        day_start = (market_now + IST_OFFSET_NS) // DAY_NS * DAY_NS - IST_OFFSET_NS
        taken = desk.restore(published(desk.account, day_start), market_now, out)
        if taken:
            log.warning("desk %s: took back %d published order events its state did not hold", desk.account, taken)

    def _live_command(self, desk: TradingDesk, cmd: Any, market_now: int, out: list[Any]) -> Any:
        """A live command, re-stamped to market time - the desk's clock, which on the simulator is
        not the wall clock its issuer stamped - once its wall-clock age is checked: a command
        older than the signal age limit is refused (a halt is never refused)."""
        assert self.clock is not None
        age = self.clock.wall() - cmd.ts_event
        if type(cmd) is not Halt and age > desk.gate.config.max_signal_age_ns:
            out.append(
                RiskRejected(
                    account=desk.account,
                    strategy=getattr(cmd, "strategy", ""),
                    instrument=getattr(cmd, "instrument", ""),
                    reason_code="STALE_SIGNAL",
                    detail=f"{type(cmd).__name__} {cmd.command_id} arrived {age / 1e9:.1f} s after it was issued",
                    ts_event=market_now,
                    ts_init=market_now,
                    signal_id=cmd.command_id,
                )
            )
            return None
        return msgspec.structs.replace(cmd, ts_event=market_now)

    def _report(self, desk: TradingDesk) -> None:
        gauges = self._gauges
        if gauges is None:  # a labelled child per account, looked up once (labels() takes a lock)
            gauges = self._gauges = tuple(g.labels(desk.account) for g in (STATE, DAY_PNL, OPEN_POSITIONS, EXPOSURE))
        gate = desk.gate
        state, pnl, positions, exposure = gauges
        state.set(_STATE_CODE[gate.state])
        pnl.set(gate.book.day_pnl())
        positions.set(gate.book.open_count())
        exposure.set(gate.book.gross_exposure())

    def _merged(self, desk: TradingDesk, values: list[tuple[str, Any]], out: list[Any], market_now: int | None) -> None:
        """One batch holds runs of many instruments (each spanning the batch's market time),
        each in its own order; the desk sees them merged by event time - a decision after the
        ticks of its candle - so cross-instrument risk state (and signal age) evolves as it did
        in the market. Commands act at their own time in a replay, live at the market clock's
        (they are stamped by whoever issued them, on another clock)."""
        runs: list[PriceRun] = []
        decided: list[Decided] = []
        commands: list[Any] = []
        for _, v in values:
            kind = type(v)
            if kind is PriceRun:
                runs.append(v)
            elif kind is Decided:
                decided.append(v)
            elif (cmd := v if market_now is None else self._live_command(desk, v, market_now, out)) is not None:
                commands.append(cmd)
        involved = {d.target.instrument for d in decided}
        involved.update(c.instrument for c in commands if type(c) in (ManualOrder, ClosePosition))
        due = desk.next_wake()
        # An instrument the desk has nothing in (no position, order or stop) needs only its
        # latest price - unless timed work falls due inside this batch, which its ticks' times
        # would trigger.
        skip = due is None or not runs or due > max(r.ticks[-1].ts_event for r in runs)
        ticks = [
            r.ticks if not skip or r.instrument in involved or desk.watching(r.instrument) else r.ticks[-1:] for r in runs
        ]
        if not ticks and not decided and not commands:
            return
        wall = self.clock.wall if market_now is not None and self.clock is not None else None
        at = 0
        for v in self._order.order(ticks, decided, commands):
            kind = type(v)
            if kind is Tick:
                at = v.ts_event
                desk.on_tick(v, None, out)
            elif kind is Decided:
                at = v.at
                mark = len(out)
                desk.on_target(v.target, at, out)
                if wall is not None and any(type(e) is OrderIntent for e in out[mark:]):
                    DECISION_LATENCY.observe((wall() - v.target.ts_init) / 1e9)
            else:
                at = v.ts_event
                desk.on_command(v, at, out)
        self.last_event = max(self.last_event, at)

    # While ticks flow, the gate's timed work (throttle queue, square-off, a flatten waiting for
    # the open) is done at tick time, deterministically. The wall-clock timer only covers an
    # idle market: no tick for IDLE_NS of wall time.
    IDLE_NS = 1_000_000_000

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        out: list[Any] = []
        clock = self.clock
        if self.desk is not None and clock is not None and clock.wall() - self.last_tick_wall >= self.IDLE_NS:
            self.desk.on_timer(clock.market_now(), out)
        return out, op.StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.clock is None or self.desk is None:
            return None
        due = self.desk.next_wake()
        if due is None:
            return None
        wall = self.clock.wall()
        at = max(self.clock.wall_when(due), self.last_tick_wall + self.IDLE_NS, wall + 5_000_000)
        return datetime.fromtimestamp(min(at, wall + 1_000_000_000) / 1e9, tz=UTC)

    def snapshot(self) -> TradingDesk:
        return _snapshot(self.desk, self.recovery)  # type: ignore[no-any-return]


def read_published(client: KafkaClientConfig, catalog: TopicCatalog, account: str, since_ns: int) -> list[Any]:
    """``account``'s intents and cancels, order updates and fills with event time from
    ``since_ns`` on, in that order, each topic in log order (one account is one partition)."""
    out: list[Any] = []
    kinds = {catalog.name(t): k for t, k in (("ord.intents", VenueRequest), ("ord.updates", OrderUpdate),
                                              ("ord.fills", Fill))}  # fmt: skip
    for topic, records in read_topics(client, list(kinds)).items():
        decode = codec_for(kinds[topic]).decode
        for value in records:
            ev = decode(value)
            if ev.account == account and ev.ts_event >= since_ns:
                out.append(ev)
    return out


def _desk_command(c: Any) -> tuple[str, tuple[str, Any]] | None:
    return (c.account, (c.account, c)) if type(c) in DESK_COMMANDS else None


def build_trading(
    decisions: Stream[Any],
    commands: Stream[Any] | None,
    universe: Iterable[Instrument],
    catalog: TopicCatalog,
    setup: TradingSetup,
    clock: MarketClock | None,
    *,
    recovery: bool = False,
) -> Stream[tuple[str, str, bytes]]:
    """Add the desks; returns ``(topic, key, value)`` records of everything they emitted."""
    instruments = {i.instrument: i for i in universe}
    accounts = setup.accounts

    def factory(account: str) -> TradingDesk:
        venue = setup.venue(instruments) if setup.paper else None
        desk = TradingDesk(account, instruments, risk=setup.risk, stops=setup.stops, venue=venue)
        if account in setup.halted:  # the kill switch survives restarts: only an explicit resume clears it
            now = clock.market_now() if clock is not None else 0
            desk.on_command(
                Halt(
                    command_id=f"restore:{account}",
                    account=account,
                    issued_by="startup",
                    ts_event=now,
                    ts_init=now,
                    reason="HALTED when the flow last stopped",
                ),
                now,
                [],
            )
        return desk

    def route(v: Decided | PriceRun) -> list[tuple[str, tuple[str, Any]]]:
        if type(v) is PriceRun:
            return [(a, (a, v)) for a in accounts]
        return [(v.target.account, (v.target.account, v))]

    keyed = op.flat_map("to_desk", decisions, route)
    if commands is not None:
        desk_cmds = op.filter_map("desk_commands", commands, _desk_command)
        keyed = op.merge("desk_in", keyed, desk_cmds)
    desks = op.stateful_batch("desk", keyed, lambda resume: DeskLogic(resume, factory, clock, recovery, setup.published))
    events = op.key_rm("unkey_desk", desks)

    t_intents, t_updates = catalog.name("ord.intents"), catalog.name("ord.updates")
    t_fills, t_pos, t_risk = catalog.name("ord.fills"), catalog.name("pf.positions"), catalog.name("risk.events")
    topics = {
        OrderIntent: t_intents,
        CancelOrder: t_intents,
        OrderUpdate: t_updates,
        Fill: t_fills,
        Position: t_pos,
        RiskRejected: t_risk,
        TradingStateChanged: t_risk,
        StopAlert: t_risk,
    }
    counts: dict[str, int] = {}

    def encode_batch(items: list[Any]) -> list[tuple[str, str, bytes]]:
        counts.clear()
        recs = []
        for ev in items:
            kind = type(ev)
            recs.append((topics[kind], ev.account, encode(ev)))
            counts[kind.__name__] = counts.get(kind.__name__, 0) + 1
            if kind is RiskRejected:
                REJECTS.labels(ev.reason_code).inc()
        for name, n in counts.items():
            TRADING_OUT.labels(name).inc(n)
        return recs

    return op.flat_map_batch("encode_trading", events, encode_batch)
