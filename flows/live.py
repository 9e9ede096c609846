"""Live flow: ``md.ticks`` into candles, indicators, patterns, OI analytics, strategies and the
account desks (risk gate, stop-loss manager, paper venue).

    python -m bytewax.run flows.live

Reads md.ticks from the start of the retained topic (so indicators are warm after a restart;
candles re-emitted for bars already stored change nothing downstream, every sink upserts),
runs the shared pipeline (flows.pipeline) with a live clock - bars of instruments that stop
ticking close at bar end + ``TICKTAPE_CANDLE_GRACE_MS`` - and publishes to md.candles,
md.analytics and md.dlq (late ticks).

Trading (``TICKTAPE_TRADING``, on by default): the deployments of the ``strategies`` table run
inside each instrument's step, warmed with the stored candles of earlier sessions and with the
day's retained ticks; only candles closing after the newest tick that was in md.ticks at start
may trade, so replaying the day never re-trades it. Decisions go to sig.signals and to the
account desks, whose orders, updates, fills, positions and risk events go to ord.*,
pf.positions and risk.events. Control commands (ctl.commands) are read from the end of the
topic at start: what was decided earlier is in the strategies and trading_state tables.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream

from connectors.history import stored_candle
from connectors.kafka import (
    HEARTBEAT,
    DeliveredProducerSink,
    KafkaClientConfig,
    OrderedSource,
    ProducerSink,
    Record,
    RecordSource,
)
from flows.pipeline import MarketClock, PipelineConfig, build_market, market_parser, strategy_commands
from flows.trading import TradingSetup, build_trading, read_published
from operators.analytics import AnalyticsConfig
from operators.candles import IST, SESSION_NS, parse_timeframe, session_bounds
from operators.strategy_host import Deployment
from schemas.codec import DecodeError, codec_for, encode
from schemas.control import Control
from schemas.market import Candle, Instrument, RejectReason, Tick, rejected
from schemas.topics import TopicCatalog
from strategies.registry import StrategyRegistry

log = logging.getLogger("ticktape.live")
_COMMAND = codec_for(Control)


def analytics_config(settings: Any) -> AnalyticsConfig:
    tfs = tuple(t.strip() for t in settings.candle_timeframes.split(",") if t.strip())
    return AnalyticsConfig(
        timeframes=tfs,
        indicators=tuple(x.strip() for x in settings.indicators.split(";") if x.strip()),
        publish_timeframes=tuple(t for t in ("1m", "5m", "15m", "1h", "1d") if t in tfs),
        partial_every_ns=settings.candle_partial_ms * 1_000_000 if "1m" in tfs else 0,
        partial_timeframes=("1m",) if "1m" in tfs else (),
    )


def _decode_commands(dlq: str) -> Any:
    def decode(records: list[Record]) -> list[Any]:
        out: list[Any] = []
        for rec in records:
            if rec is HEARTBEAT or rec.partition < 0:
                continue
            value = rec.value or b""
            try:
                out.append(_COMMAND.decode(value, topic=rec.topic, partition=rec.partition, offset=rec.offset))
            except DecodeError as exc:
                log.error("%s", exc)
                out.append((dlq, "", encode(rejected(rec.topic, None, RejectReason.MALFORMED, str(exc), value, 0))))
        return out

    return decode


def market_input(
    flow: Dataflow,
    client: KafkaClientConfig,
    topic: str,
    bars: str | None,
    *,
    start: Mapping[tuple[str, int], int] | None = None,
    tail: bool = True,
    batch_size: int = 5000,
) -> Stream[tuple[str, Any]]:
    """The market input of ``flow``: ``topic`` in event-time order (:class:`OrderedSource`),
    decoded to ``(instrument, tick)`` - or ``(instrument, candle)`` when ``bars`` names the
    timeframe of a candle input - and ``("", Reject)`` for what cannot be one."""
    parse = market_parser(Tick if bars is None else Candle, topic, bars)
    return op.input("md", flow, OrderedSource(client, topic, parse, start=start, tail=tail, batch_size=batch_size))


def build(
    client: KafkaClientConfig,
    catalog: TopicCatalog,
    universe: Iterable[Instrument],
    cfg: PipelineConfig,
    *,
    tail: bool = True,
    start: dict[tuple[str, int], int] | None = None,
    trading: TradingSetup | None = None,
    commands_start: Mapping[tuple[str, int], int] | None = None,
    batch_size: int = 5000,
    source: str | None = None,
) -> Dataflow:
    """The live (or, with ``tail=False`` and no clock, replay) flow. md.ticks is read in
    event-time order across its partitions (:class:`OrderedSource`), so a backlog - a replay,
    the catch-up after a restart - is seen in market order.

    ``commands_start``: offsets of ctl.commands to start from (default: the beginning).
    ``source``: read the market input from this topic instead of the catalog's.
    ``batch_size``: most ticks per source batch. A decision leaves the flow once its whole
    batch has been through the instrument steps, so live latency grows with it; replays want
    it large (throughput). A live flow that falls behind grows its batches until it has
    caught up (:class:`OrderedSource`).
    """
    universe = list(universe)
    flow = Dataflow("live")
    # A candle-only replay reads bars; ``source`` names another topic with the input (shared by runs).
    ticks_topic = source or catalog.name("md.ticks" if cfg.bars is None else "md.candles")
    market = market_input(flow, client, ticks_topic, cfg.bars, start=start, tail=tail, batch_size=batch_size)
    strategy_cmds: Stream[tuple[str, Any]] | None = None
    desk_cmds: Stream[Any] | None = None
    dlq: Stream[Any] | None = None
    if cfg.strategies is not None or trading is not None:
        raw = op.input(
            "ctl", flow, RecordSource(client, [catalog.name("ctl.commands")], start=commands_start or {}, tail=tail)
        )
        decoded = op.flat_map_batch("decode_commands", raw, _decode_commands(catalog.name("md.dlq")))
        bad = op.branch("command_ok", decoded, lambda v: type(v) is not tuple)
        dlq = bad.falses
        strategy_cmds, desk_cmds = strategy_commands(bad.trues, universe)
    desks = None
    if trading is not None:
        if cfg.clock is not None and trading.published is None:
            trading = dataclasses.replace(trading, published=functools.partial(read_published, client, catalog))
        desks = functools.partial(build_trading, commands=desk_cmds, universe=universe, catalog=catalog,
                                  setup=trading, clock=cfg.clock, recovery=cfg.recovery)  # fmt: skip
    streams = build_market(market, universe, catalog, cfg, strategy_cmds, desks)
    outputs = [streams.records]
    if streams.trading is not None:
        outputs.append(streams.trading)
    if dlq is not None:
        outputs.append(dlq)
    records = outputs[0] if len(outputs) == 1 else op.merge("all_records", *outputs)
    if cfg.recovery:  # every snapshot waits for the broker: a restart never assumes an output that was lost
        op.output("publish", op.map("for_sink", records, lambda r: ("", r)), DeliveredProducerSink(client.producer()))
    else:
        op.output("publish", records, ProducerSink(client.producer()))
    return flow


def warm_candles(conn: Any, timeframes: Sequence[str], days: int, until: Any = None) -> dict[str, list[Candle]]:
    """Closed candles of the ``days`` days before ``until`` (default now) per instrument,
    oldest first (strategy warm-up)."""
    rows = conn.execute(
        """SELECT i.symbol, c.timeframe, c.time, c.open_price, c.high_price, c.low_price, c.close_price, c.volume,
                  c.trade_count, c.vwap, c.oi
           FROM ohlc_candles c JOIN instruments i ON i.id = c.instrument_id
           WHERE c.timeframe = ANY(%s) AND c.time >= coalesce(%s, NOW()) - make_interval(days => %s)
             AND c.time < coalesce(%s, NOW())
           ORDER BY i.symbol, c.time, c.timeframe""",
        (list(timeframes), until, days, until),
    ).fetchall()
    out: dict[str, list[Candle]] = {}
    for sym, tf, *bar in rows:
        out.setdefault(sym, []).append(stored_candle(sym, tf, *bar))
    return out


def _span(seconds: float) -> str:
    """``"45 s"``, ``"2 min 12 s"``, ``"22 min"``, ``"1 h 20 min"`` (seconds only under an hour)."""
    h, rest = divmod(round(seconds), 3600)
    m, sec = divmod(rest, 60)
    parts = [f"{h} h"] if h else []
    if m:
        parts.append(f"{m} min")
    if sec and not h:
        parts.append(f"{sec} s")
    return " ".join(parts) or "0 s"


def warmup_note(
    deployments: Iterable[Deployment],
    universe: Iterable[str],
    warm: Mapping[str, Sequence[Candle]],
    registry: StrategyRegistry,
    speed: float,
    session_open: int,
) -> str | None:
    r"""How long the enabled deployments wait before they can decide: the closed bars each still
    needs (``Strategy.warmup``) beyond the stored candles of earlier sessions (those before
    ``session_open``, ns: the pipeline warms with those only), and the longest wait in market
    time from the day's first tick (the day's retained ticks replay at start and count) and in
    wall time at the simulator's ``speed`` (0: unpaced). None when the stored candles cover
    every one of them.

    >>> import strategies.builtin
    >>> from strategies.registry import REGISTRY
    >>> ema = Deployment("ema_fast_1m", "ema_crossover", REGISTRY.params("ema_crossover", {"timeframe": "1m"}))
    >>> print(warmup_note([ema], ["NSE:A", "NSE:B"], {}, REGISTRY, speed=10, session_open=0).replace("; ", ";\n"))
    first decisions once warm-up bars have closed (stored candles cover none of it): ema_fast_1m 22 x 1m on 2 instruments;
    the longest is 22 min of market time from the day's first tick, 2 min 12 s at 10x speed
    """
    have: Counter[tuple[str, str]] = Counter(
        (sym, c.timeframe) for sym, cs in warm.items() for c in cs if c.final and c.open_time < session_open
    )
    symbols = list(universe)
    parts, longest, sessions, covered_any = [], 0.0, 0, False
    for d in deployments:
        if not d.enabled or (bars := registry[d.kind].warmup(d.params)) <= 0:
            continue
        try:
            tf = parse_timeframe(d.params.timeframe)
        except ValueError:  # not a timeframe: live start reports it where it is used
            continue
        mine = [sym for sym in symbols if d.subscribes(sym)]
        cold = [sym for sym in mine if have[(sym, tf.name)] < bars]
        covered_any |= len(cold) < len(mine)
        if not cold:
            continue
        need = max(bars - have[(sym, tf.name)] for sym in cold)
        parts.append(f"{d.strategy_id} {need} x {tf.name} on {len(cold)} instrument{'s' if len(cold) != 1 else ''}")
        if tf.daily:
            sessions = max(sessions, need)
        else:
            wait_ns = need * tf.ns
            longest = max(longest, wait_ns / 1e9)
            sessions = max(sessions, -(-wait_ns // SESSION_NS) if wait_ns > SESSION_NS else 0)
    if not parts:
        return None
    cover = "where stored candles do not hold them" if covered_any else "stored candles cover none of it"
    if sessions:
        wait = f"the longest takes {sessions} session{'s' if sessions != 1 else ''}: it trades from a later day on"
    else:
        wall = f", {_span(longest / speed)} at {speed:g}x speed" if speed > 0 and speed != 1 else ""
        wait = f"the longest is {_span(longest)} of market time from the day's first tick{wall}"
    return f"first decisions once warm-up bars have closed ({cover}): {', '.join(parts)}; {wait}"


def _flow_from_env() -> Dataflow:
    import strategies.builtin  # noqa: F401  (registers the built-in strategies)
    from connectors.kafka import end_offsets, last_values
    from connectors.postgres import connect
    from connectors.postgres.instruments import load_instruments
    from connectors.postgres.strategies import halted_accounts, load_deployments
    from flows.pipeline import StrategySetup
    from flows.runtime import flow_context
    from schemas.market import Tick
    from strategies.registry import REGISTRY

    ctx = flow_context("live")
    s = ctx.settings
    # The grace is the feed's skew tolerance in wall time; an accelerated simulator covers that
    # much wall time in ``sim_speed`` times more market time, so its grace scales with it (a
    # 30x demo would otherwise close a bar before a partition 20 ms behind delivers its ticks).
    clock = MarketClock(timedelta(milliseconds=s.candle_grace_ms * max(1.0, s.sim_speed)))
    with connect(ctx.endpoints.database_url, autocommit=True) as conn:
        universe = load_instruments(conn)
        deployments = load_deployments(conn, REGISTRY) if s.trading else ()
        halted = halted_accounts(conn) if s.trading else frozenset()
        tfs = sorted({d.params.timeframe for d in deployments})
        warm = warm_candles(conn, tfs, s.strategy_warmup_days) if deployments else {}
    strat = trading = None
    commands_start = None
    if s.trading:
        ticks_topic = ctx.catalog.name("md.ticks")
        decode = codec_for(Tick).decode
        newest = max((decode(v).ts_event for v in last_values(ctx.kafka, ticks_topic)), default=0)
        strat = StrategySetup(deployments=deployments, trade_from=newest + 1, warm=warm)
        accounts = tuple(sorted({d.account for d in deployments} | {"paper"}))
        trading = TradingSetup(accounts=accounts, halted=halted)
        commands_start = end_offsets(ctx.kafka, ctx.catalog.name("ctl.commands"))
        log.info(
            "trading on paper: %d deployments (%d enabled), accounts %s%s",
            len(deployments),
            sum(d.enabled for d in deployments),
            ",".join(accounts),
            f", HALTED: {','.join(sorted(halted))}" if halted else "",
        )
        for d in deployments:
            if d.enabled and (why := d.untradable(universe)):
                log.warning("deployment %s: %s", d.strategy_id, why)
    # Under Bytewax recovery (``ticktape up`` sets it) snapshots must be copies, not the live state.
    recovery = bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY"))
    # The two lines below describe instruments that start afresh; one restored from recovery
    # keeps its own warm state and trade-from bound.
    restored = " (instruments restored from recovery: {})" if recovery else ""
    if strat is not None:
        day = s.sim_date or datetime.now(IST).date()
        noon = int(datetime(day.year, day.month, day.day, 12, tzinfo=IST).timestamp()) * 10**9
        opens = session_bounds(strat.trade_from - 1 or noon)[0]  # the session of the newest retained tick, or today's
        instruments = [i.instrument for i in universe]
        if note := warmup_note(deployments, instruments, warm, REGISTRY, s.sim_speed, opens):
            log.info("%s%s", note, restored.format("warm already"))
    cfg = PipelineConfig(analytics=analytics_config(s), clock=clock, strategies=strat, recovery=recovery)
    if strat is not None and trading is not None:
        from connectors.postgres.strategies import record_session

        with connect(ctx.endpoints.database_url, autocommit=True) as conn:
            sid = record_session(conn, s.topic_prefix, strat, trading, cfg.analytics, s.strategy_warmup_days, recovery)
        since = "every candle (no ticks retained)" if strat.trade_from <= 1 else (
            f"candles closing after {datetime.fromtimestamp(strat.trade_from / 1e9, IST).isoformat(timespec='seconds')}"
            " (the newest retained tick; the ones before only warm up)")  # fmt: skip
        log.info("live session %d trades %s%s", sid, since, restored.format("the bound they had"))
    log.info("analytics for %d instruments, timeframes %s", len(universe), ",".join(cfg.analytics.timeframes))
    return build(
        ctx.kafka, ctx.catalog, universe, cfg, trading=trading, commands_start=commands_start, batch_size=s.live_batch_size
    )


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return _flow_from_env()
    raise AttributeError(name)
