"""The trading record lands in PostgreSQL consistently, whatever order the topics are read in."""

from __future__ import annotations

from datetime import date

import psycopg
from bytewax.testing import run_main
from confluent_kafka import Producer

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig
from connectors.postgres.instruments import upsert_instruments
from flows import persist
from schemas.codec import encode
from schemas.control import ConfigureStrategy, DisableStrategy, Halt
from schemas.orders import (
    CancelOrder,
    Fill,
    OrderIntent,
    OrderPurpose,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Position,
    Product,
    Side,
)
from schemas.risk import RiskRejected, TradingState, TradingStateChanged
from schemas.topics import TopicCatalog

DAY = date(2026, 11, 23)
T0 = 1_763_870_000_000_000_000
SYM = "NSE:INFY"


def _intent(coid: str, qty: int, side: Side = Side.BUY) -> OrderIntent:
    return OrderIntent(
        client_order_id=coid,
        account="paper",
        strategy="ema1",
        instrument=SYM,
        side=side,
        qty=qty,
        order_type=OrderType.MARKET,
        product=Product.MIS,
        ts_event=T0,
        ts_init=T0,
        signal_id=f"ema1|{SYM}|1m|{T0}",
        purpose=OrderPurpose.ENTRY,
        stop_loss=1480.0,
    )


def _update(coid: str, status: OrderStatus, filled: int, ts: int, qty: int = 10) -> OrderUpdate:
    return OrderUpdate(
        client_order_id=coid,
        venue="sim",
        venue_order_id=f"SIM-{coid}",
        account="paper",
        instrument=SYM,
        side=Side.BUY,
        status=status,
        qty=qty,
        filled_qty=filled,
        ts_event=ts,
        ts_init=ts,
        avg_price=1500.0 if filled else None,
        strategy="ema1",
    )


def _fill(trade: str, coid: str, qty: int, price: float, side: Side, ts: int) -> Fill:
    return Fill(
        venue="sim",
        trade_id=trade,
        client_order_id=coid,
        venue_order_id=f"SIM-{coid}",
        account="paper",
        strategy="ema1",
        instrument=SYM,
        side=side,
        qty=qty,
        price=price,
        ts_event=ts,
        ts_init=ts,
        charges=3.5,
    )


def _position(qty: int, realized: float, ts: int) -> Position:
    return Position(
        account="paper",
        strategy="ema1",
        instrument=SYM,
        qty=qty,
        avg_price=1500.0 if qty else 0.0,
        realized_pnl=realized,
        unrealized_pnl=0.0,
        last_price=1510.0,
        ts_event=ts,
        ts_init=ts,
    )


def _produce(kafka: KafkaClientConfig, topic: str, events: list) -> None:
    p = Producer(kafka.producer())
    for ev in events:
        p.produce(topic, encode(ev), b"paper")
    assert p.flush(10) == 0


def test_orders_fills_positions_and_commands_are_recorded_once(kafka, catalog: TopicCatalog, database_url) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, build_universe(DAY, 20))
        conn.execute(
            "INSERT INTO strategies (id, name, class_name, config, is_enabled) VALUES ('ema1', 'EMA', 'ema_crossover', "
            "'{\"fast\": 9}', true)"
        )
    # Updates are produced (and so likely consumed) before their intents: the order must come
    # out whole anyway, with the intent's fields and the newest status.
    _produce(
        kafka,
        catalog.name("ord.updates"),
        [
            _update("A1", OrderStatus.OPEN, 0, T0 + 1),
            _update("A1", OrderStatus.COMPLETE, 10, T0 + 2),
            _update("A1", OrderStatus.OPEN, 0, T0 + 1),  # a duplicate, late
            _update("B1", OrderStatus.OPEN, 0, T0 + 5),
            _update("B1", OrderStatus.CANCELLED, 0, T0 + 6),
            # Replayed after a restart from an older snapshot, an order's events can go back in
            # time: a working state stamped later than its fill. Filled and final still win.
            _update("C1", OrderStatus.TRIGGER_PENDING, 0, T0 + 50_000),
            _update("C1", OrderStatus.COMPLETE, 10, T0 + 20_000),
            _update("C1", OrderStatus.TRIGGER_PENDING, 0, T0 + 60_000),
        ],
    )
    _produce(
        kafka,
        catalog.name("ord.intents"),
        [
            _intent("A1", 10),
            _intent("B1", 10),
            _intent("C1", 10),
            CancelOrder(client_order_id="B1", account="paper", instrument=SYM, ts_event=T0 + 6, ts_init=T0 + 6),
        ],
    )
    _produce(
        kafka,
        catalog.name("ord.fills"),
        [
            _fill("T1", "A1", 4, 1500.0, Side.BUY, T0 + 2),
            _fill("T2", "A1", 6, 1500.0, Side.BUY, T0 + 2),
            _fill("T1", "A1", 4, 1500.0, Side.BUY, T0 + 2),  # a duplicate
        ],
    )
    _produce(
        kafka,
        catalog.name("pf.positions"),
        [_position(4, 0.0, T0 + 2), _position(10, 0.0, T0 + 2), _position(0, 100.0, T0 + 9)],
    )
    _produce(
        kafka,
        catalog.name("risk.events"),
        [
            RiskRejected(
                account="paper",
                strategy="ema1",
                instrument=SYM,
                reason_code="STALE_SIGNAL",
                detail="signal is 9 s old",
                ts_event=T0,
                ts_init=T0,
            ),
            TradingStateChanged(
                account="paper",
                previous=TradingState.ACTIVE,
                current=TradingState.HALTED,
                reason="operator",
                ts_event=T0 + 7,
                ts_init=T0 + 7,
            ),
        ],
    )
    cmd = {"account": "paper", "issued_by": "test", "ts_event": T0, "ts_init": T0}
    _produce(
        kafka,
        catalog.name("ctl.commands"),
        [
            ConfigureStrategy(command_id="c1", strategy="ema1", params={"fast": 5, "slow": 13}, **cmd),
            DisableStrategy(command_id="c2", strategy="ema1", **cmd),
            Halt(command_id="c3", reason="operator", **cmd),
            Halt(command_id="c3", reason="operator", **cmd),  # delivered twice
        ],
    )

    for _ in range(2):  # the second run replays everything from scratch: nothing may change
        run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=3, max_age_s=0.1, consumer="p"))
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM kafka_offsets")
            orders = conn.execute(
                "SELECT client_order_id, current_status, filled_quantity, purpose, stop_loss, signal_id, quantity "
                "FROM orders ORDER BY client_order_id"
            ).fetchall()
            assert [(o[0], o[1], o[2], o[3], float(o[4]), o[6]) for o in orders] == [
                ("A1", "COMPLETE", 10, "ENTRY", 1480.0, 10),
                ("B1", "CANCELLED", 0, "ENTRY", 1480.0, 10),
                ("C1", "COMPLETE", 10, "ENTRY", 1480.0, 10),
            ]
            assert all(o[5].startswith("ema1|") for o in orders)
            history = conn.execute(
                "SELECT o.client_order_id, h.status, h.filled_quantity FROM order_history h JOIN orders o "
                "ON o.id = h.order_id ORDER BY h.timestamp, o.client_order_id, h.filled_quantity, h.status DESC"
            ).fetchall()
            assert history == [
                ("A1", "OPEN", 0),
                ("A1", "COMPLETE", 10),
                ("B1", "OPEN", 0),
                ("B1", "CANCELLED", 0),
                ("C1", "COMPLETE", 10),
                ("C1", "TRIGGER PENDING", 0),
                ("C1", "TRIGGER PENDING", 0),
            ]
            fills = conn.execute("SELECT trade_id, quantity FROM fills ORDER BY trade_id").fetchall()
            assert fills == [("T1", 4), ("T2", 6)]
            pos = conn.execute("SELECT quantity, realized_pnl, status FROM positions").fetchall()
            assert [(q, float(r), s) for q, r, s in pos] == [(0, 100.0, "CLOSED")]
            kinds = conn.execute("SELECT kind, reason_code FROM risk_events ORDER BY time").fetchall()
            assert kinds == [("RiskRejected", "STALE_SIGNAL"), ("TradingStateChanged", "HALTED")]
            assert conn.execute("SELECT state FROM trading_state WHERE account = 'paper'").fetchone() == ("HALTED",)
            commands = conn.execute("SELECT command_id, kind FROM control_commands ORDER BY command_id").fetchall()
            assert commands == [("c1", "ConfigureStrategy"), ("c2", "DisableStrategy"), ("c3", "Halt")]
            enabled, config = conn.execute("SELECT is_enabled, config FROM strategies WHERE id = 'ema1'").fetchone()
            assert enabled is False and config == {"fast": 5, "slow": 13}


def test_a_later_stamped_working_update_does_not_undo_a_fill(kafka, catalog: TopicCatalog, database_url) -> None:
    """Across two persistence runs (two merges): an order partly filled, then a working update
    stamped later but behind the fill, as a replay after a restart can publish. The fill stays."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, build_universe(DAY, 20))
    _produce(kafka, catalog.name("ord.intents"), [_intent("D1", 10)])
    _produce(kafka, catalog.name("ord.updates"), [_update("D1", OrderStatus.PARTIALLY_FILLED, 4, T0 + 20_000)])
    run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=3, max_age_s=0.1, consumer="p"))
    _produce(kafka, catalog.name("ord.updates"), [_update("D1", OrderStatus.OPEN, 0, T0 + 50_000)])
    run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=3, max_age_s=0.1, consumer="p"))
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT current_status, filled_quantity FROM orders WHERE client_order_id = 'D1'").fetchone()
        assert row == ("PARTIALLY_FILLED", 4)
        history = conn.execute("SELECT count(*) FROM order_history").fetchone()
        assert history == (2,)  # both updates are in the history all the same
