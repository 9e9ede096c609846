"""Simulator -> md.ticks -> live flow (strategies, risk gate, stops, paper venue) -> topics ->
persist -> PostgreSQL: the trading record must be consistent with itself."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any

import psycopg
import pytest
from bytewax.testing import run_main
from prometheus_client import REGISTRY as REGISTRY_METRICS

import strategies.builtin  # noqa: F401  (registers the built-ins)
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, read_all
from connectors.postgres.instruments import upsert_instruments
from flows import ingest, live, persist
from flows.pipeline import PipelineConfig, StrategySetup
from flows.trading import TradingSetup
from operators.analytics import AnalyticsConfig
from operators.strategy_host import Deployment
from schemas.market import InstrumentType
from schemas.topics import TopicCatalog, load_catalog
from strategies.registry import REGISTRY

DAY = date(2026, 11, 23)
SECONDS = 900  # 15 minutes of market time


@pytest.fixture
def traded(kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str) -> dict[str, object]:
    universe = tuple(build_universe(DAY, 40))
    stocks = [i.instrument for i in universe if i.instrument_type is InstrumentType.EQ][:12]
    assert len(stocks) >= 8
    cfg = ingest.SimConfig(universe=universe, seed=5, groups=2, day=DAY, speed=0, max_steps=SECONDS)
    run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, kafka.producer()))
    deployments = (
        Deployment("ema", "ema_crossover", REGISTRY.params("ema_crossover", {
            "fast": 3, "slow": 8, "timeframe": "5s", "qty": 10, "instruments": stocks[:6], "allow_short": True})),
        Deployment("st", "supertrend_trend", REGISTRY.params("supertrend_trend", {
            "period": 5, "multiplier": 1.5, "timeframe": "5s", "qty": 5, "instruments": stocks[6:],
            "allow_short": True})),
    )  # fmt: skip
    pipeline = PipelineConfig(
        analytics=AnalyticsConfig(timeframes=("1s", "5s", "1m"), patterns=False, publish_timeframes=("1m",)),
        open_interest=False,
        summary_timeframes=(),
        strategies=StrategySetup(deployments=deployments),
    )
    signals_before = {s: REGISTRY_METRICS.get_sample_value("ticktape_signals_total", {"strategy": s}) or 0.0
                      for s in ("ema", "st")}  # fmt: skip
    run_main(live.build(kafka, catalog, universe, pipeline, tail=False, trading=TradingSetup()))
    signals_counted = {s: (REGISTRY_METRICS.get_sample_value("ticktape_signals_total", {"strategy": s}) or 0.0) - before
                       for s, before in signals_before.items()}  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, universe)
    run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=5000, max_age_s=0.2))
    return {"url": database_url, "stocks": stocks, "signals_counted": signals_counted, "kafka": kafka, "catalog": catalog}


def test_the_flow_counts_the_signals_it_publishes(traded: dict[str, Any]) -> None:
    from schemas.codec import codec_for
    from schemas.orders import TargetPosition

    codec = codec_for(TargetPosition)
    published = [codec.decode(v).strategy for v in read_all(traded["kafka"], traded["catalog"].name("sig.signals"))]
    assert published, "the session made no signals: nothing was tested"
    assert traded["signals_counted"] == {s: float(published.count(s)) for s in ("ema", "st")}


def test_orders_fills_and_positions_agree(traded: dict[str, object]) -> None:
    with psycopg.connect(str(traded["url"]), autocommit=True) as conn:
        fills = conn.execute(
            "SELECT f.strategy_id, i.symbol, f.side, f.quantity, f.price::float8, f.client_order_id, f.time "
            "FROM fills f JOIN instruments i ON i.id = f.instrument_id ORDER BY f.time, f.id"
        ).fetchall()
        orders = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT client_order_id, current_status, filled_quantity, quantity, purpose FROM orders"
            ).fetchall()
        }
        positions = {
            (r[0], r[1]): (r[2], float(r[3]))
            for r in conn.execute(
                "SELECT p.strategy_id, i.symbol, p.quantity, p.realized_pnl FROM positions p "
                "JOIN instruments i ON i.id = p.instrument_id"
            ).fetchall()
        }
        # Charges: a position carries the sum of its fills' charges (its realized PnL is gross).
        charges = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE abs(p.charges - f.total) > 0.011), sum(f.total) FROM positions p "
            "JOIN (SELECT strategy_id, instrument_id, sum(charges) AS total FROM fills GROUP BY 1, 2) f "
            "USING (strategy_id, instrument_id)"
        ).fetchone()
        assert charges[0] == len(positions) and charges[1] == 0 and charges[2] > 0, charges
        history = conn.execute("SELECT count(DISTINCT order_id) FROM order_history").fetchone()[0]

    # Both strategies traded, with entries and exits, and every entry was protected by a backstop.
    assert {f[0] for f in fills} == {"ema", "st"}
    purposes = {o[3] for o in orders.values()}
    assert {"ENTRY", "EXIT", "STOP"} <= purposes, purposes
    assert history == len(orders)

    # No fill without an order; an order's filled quantity is the sum of its fills; no overfill.
    by_order: dict[str, int] = defaultdict(int)
    for _, _, _, qty, _, coid, _ in fills:
        assert coid in orders
        by_order[coid] += qty
    for coid, (status, filled, qty, _) in orders.items():
        assert filled == by_order.get(coid, 0), coid
        assert filled <= qty
        if status == "COMPLETE":
            assert filled == qty

    # Position = sum of signed fills; realized PnL = average-cost fills math.
    book: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # qty, avg, realized
    for strategy, sym, side, qty, price, _, _ in fills:
        pos = book[strategy, sym]
        signed = qty if side == "BUY" else -qty
        q, avg = pos[0], pos[1]
        if q == 0 or (q > 0) == (signed > 0):
            pos[1] = (avg * abs(q) + price * qty) / (abs(q) + qty)
            pos[0] = q + signed
        else:
            closed = min(abs(q), qty)
            pos[2] += closed * (price - avg) * (1 if q > 0 else -1)
            pos[0] = q + signed
            if pos[0] == 0:
                pos[1] = 0.0
            elif (pos[0] > 0) != (q > 0):  # flipped: the rest opens at this price
                pos[1] = price
    assert set(positions) == set(book)
    for key, (qty, realized) in positions.items():
        assert qty == book[key][0], key
        assert realized == pytest.approx(book[key][2], abs=0.02), key


def test_a_replay_trades_byte_identically_every_time(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    """The same md.ticks replayed twice (event-time order, one worker) gives the same orders,
    updates, fills, positions and risk events, byte for byte and in the same order."""
    from confluent_kafka import Producer

    from connectors.kafka import create_topics, delete_topics
    from schemas.codec import codec_for
    from schemas.market import RejectedEvent

    universe = tuple(build_universe(DAY, 30))
    stocks = [i.instrument for i in universe if i.instrument_type is InstrumentType.EQ][:8]
    cfg = ingest.SimConfig(universe=universe, seed=8, groups=2, day=DAY, speed=0, max_steps=600)
    run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, kafka.producer()))
    deployments = (
        Deployment("ema", "ema_crossover", REGISTRY.params("ema_crossover", {
            "fast": 3, "slow": 8, "timeframe": "5s", "qty": 10, "instruments": stocks, "allow_short": True})),
        Deployment("rsi", "rsi_reversion", REGISTRY.params("rsi_reversion", {
            "period": 5, "timeframe": "5s", "qty": 5, "instruments": stocks})),
    )  # fmt: skip
    pipeline = PipelineConfig(
        analytics=AnalyticsConfig(timeframes=("1s", "5s", "1m"), patterns=False, publish_timeframes=()),
        open_interest=False,
        summary_timeframes=(),
        strategies=StrategySetup(deployments=deployments),
    )
    outputs = [catalog.name(t) for t in ("sig.signals", "ord.intents", "ord.updates", "ord.fills", "pf.positions",
                                         "risk.events")]  # fmt: skip

    def replay() -> dict[str, list[bytes]]:
        admin = kafka.admin()
        delete_topics(admin, outputs)
        create_topics(admin, catalog)
        run_main(live.build(kafka, catalog, universe, pipeline, tail=False, trading=TradingSetup()))
        return {topic: read_all(kafka, topic) for topic in outputs}

    bad = Producer(kafka.producer())  # a malformed control command is dead-lettered, naming where it was
    bad.produce(catalog.name("ctl.commands"), b'{"type":"Halt","command_id":', b"paper")
    assert bad.flush(10) == 0
    first, second = replay(), replay()
    assert len(first[catalog.name("ord.fills")]) > 20
    dlq = read_all(kafka, catalog.name("md.dlq"))
    assert dlq and all(f"{catalog.name('ctl.commands')}[0]@0" in codec_for(RejectedEvent).decode(v).detail for v in dlq)
    for topic in outputs:
        assert first[topic] == second[topic], topic


def test_stored_candles_load_for_warm_up(database_url: str) -> None:
    """flows.live reads the stored closed candles of the strategies' timeframes, oldest first,
    with their open and close times, so they can warm a fresh start."""
    from datetime import UTC, datetime, timedelta

    from flows.live import warm_candles

    universe = build_universe(DAY, 10)
    sym = universe[3].instrument
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, universe)
        iid = conn.execute("SELECT id FROM instruments WHERE symbol = %s", (sym,)).fetchone()[0]
        for k in range(3):
            for tf, step in (("1m", 60), ("5m", 300)):
                conn.execute(
                    "INSERT INTO ohlc_candles (time, instrument_id, timeframe, open_price, high_price, low_price, "
                    "close_price, volume, trade_count, vwap, oi) VALUES (%s, %s, %s, 10, 12, 9, %s, 100, 5, 10.5, 0)",
                    (start + timedelta(seconds=k * step), iid, tf, 11 + k),
                )
        conn.execute(  # older than the window: not loaded
            "INSERT INTO ohlc_candles (time, instrument_id, timeframe, open_price, high_price, low_price, close_price,"
            " volume) VALUES (%s, %s, '1m', 1, 1, 1, 1, 1)",
            (start - timedelta(days=30), iid),
        )
        got = warm_candles(conn, ["1m"], days=5)
    assert list(got) == [sym]
    candles = got[sym]
    assert [c.close for c in candles] == [11.0, 12.0, 13.0] and all(c.final and c.timeframe == "1m" for c in candles)
    t0 = int(start.timestamp()) * 10**9
    assert [(c.open_time - t0, c.ts_event - c.open_time) for c in candles] == [
        (k * 60 * 10**9, 60 * 10**9) for k in range(3)
    ]


def test_live_commands_act_at_market_time_and_stale_ones_are_refused() -> None:
    """Commands are stamped with the issuer's wall clock; the desk runs on market time (on the
    simulator, another day's 09:15 perhaps). Live, a command is aged by the wall clock, refused
    past the signal age limit (except a halt), and otherwise re-stamped to market time."""
    from datetime import timedelta

    from flows.pipeline import MarketClock
    from flows.trading import DeskLogic
    from operators.desk import TradingDesk
    from schemas.control import Halt, Resume
    from schemas.risk import RiskRejected

    wall = 1_800_000_000 * 10**9
    market = wall - 6 * 3600 * 10**9  # the simulated session is hours behind the wall clock
    clock = MarketClock(timedelta(0), wall=lambda: wall)
    universe = {i.instrument: i for i in build_universe(DAY, 10)}
    desk = TradingDesk("paper", universe)
    logic = DeskLogic(desk, lambda account: desk, clock, recovery=False)
    common = {"account": "paper", "issued_by": "test", "reason": "r"}

    out: list = []
    fresh = logic._live_command(desk, Resume(command_id="r1", ts_event=wall - 10**9, ts_init=0, **common), market, out)
    assert fresh is not None and fresh.ts_event == market and out == []
    assert logic._live_command(desk, Resume(command_id="r2", ts_event=wall - 60 * 10**9, ts_init=0, **common),
                               market, out) is None  # fmt: skip
    (refused,) = out
    assert type(refused) is RiskRejected and refused.reason_code == "STALE_SIGNAL" and "r2" in refused.detail
    old_halt = logic._live_command(desk, Halt(command_id="h1", ts_event=wall - 3600 * 10**9, ts_init=0, **common),
                                   market, out)  # fmt: skip
    assert old_halt is not None and old_halt.ts_event == market and len(out) == 1  # a halt always applies


def test_the_desk_is_built_right_after_the_instrument_step() -> None:
    """A worker runs its operators in the order they were added, so the desk must come before
    the steps that only publish (option chains, summary, encoding): added after them, it saw
    a wave of bar closes' decisions only once they had run (decision latency p50 28-31 ms
    against 15-17 ms on the latency bench)."""
    universe = build_universe(DAY, 20)
    stocks = [i.instrument for i in universe if i.instrument_type is InstrumentType.EQ][:4]
    params = REGISTRY.params("ema_crossover", {"fast": 3, "slow": 8, "timeframe": "5s", "qty": 1, "instruments": stocks})
    pipeline = PipelineConfig(strategies=StrategySetup(deployments=(Deployment("ema", "ema_crossover", params),)))
    kafka = KafkaClientConfig(bootstrap="127.0.0.1:9", tansu=True)  # building a flow connects to nothing
    flow = live.build(kafka, load_catalog(), universe, pipeline, tail=False, trading=TradingSetup())
    steps = [s.step_id.removeprefix("live.") for s in flow.substeps]
    between = steps[steps.index("instrument") + 1 : steps.index("desk")]
    assert set(between) <= {"decisions", "to_desk", "desk_commands", "desk_in"}, between
    assert {"chain", "summary", "encode"} <= set(steps[steps.index("desk") :])
