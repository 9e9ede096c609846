"""Ingest -> real broker -> persist -> real PostgreSQL, with bad ticks on the way."""

from __future__ import annotations

from collections import Counter
from datetime import date

import psycopg
from bytewax.testing import run_main

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, cluster_id, read_all
from connectors.postgres.instruments import upsert_instruments
from connectors.postgres.migrate import migrate, status
from connectors.postgres.sinks import stored_offsets
from flows import ingest, persist
from schemas.codec import codec_for
from schemas.market import RejectedEvent, Tick
from schemas.topics import TopicCatalog
from tests.stubs import simulated

DAY = date(2026, 11, 23)


def _ingest(kafka: KafkaClientConfig, catalog: TopicCatalog, steps: int, bad_rate: float) -> ingest.SimConfig:
    u = tuple(build_universe(DAY, 100))
    cfg = ingest.SimConfig(universe=u, seed=11, groups=2, day=DAY, speed=0, bad_tick_rate=bad_rate, max_steps=steps)
    run_main(ingest.build(ingest.SimulatorSource(cfg), u, catalog, kafka.producer()))
    return cfg


def _expected(cfg: ingest.SimConfig) -> tuple[list[Tick], Counter]:
    """What the simulator generated, straight from the source partitions."""
    ticks, bad = [], Counter()
    for ev in simulated(cfg):
        if type(ev) is Tick:
            ticks.append(ev)
        elif type(ev) is tuple:  # a bad tick: (defect, raw payload)
            bad[ev[0]] += 1
    return ticks, bad


def test_bad_ticks_reach_dlq_with_reasons_and_no_valid_tick_is_lost(kafka, catalog) -> None:
    cfg = _ingest(kafka, catalog, steps=40, bad_rate=0.01)
    expected_ticks, expected_bad = _expected(cfg)
    assert sum(expected_bad.values()) >= 20

    got = [codec_for(Tick).decode(v) for v in read_all(kafka, catalog.name("md.ticks"))]
    assert sorted(got, key=lambda t: (t.instrument, t.seq)) == sorted(expected_ticks, key=lambda t: (t.instrument, t.seq))

    dlq = [codec_for(RejectedEvent).decode(v) for v in read_all(kafka, catalog.name("md.dlq"))]
    assert Counter(r.reason.value for r in dlq) == expected_bad  # every defect caught, with the right reason
    assert all(r.detail and r.payload and r.source_topic == catalog.name("md.ticks") for r in dlq)


def test_persist_writes_every_tick_once_and_replay_changes_nothing(kafka, catalog, database_url) -> None:
    cfg = _ingest(kafka, catalog, steps=20, bad_rate=0.0)
    expected, _ = _expected(cfg)
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, cfg.universe)

    def run(consumer: str) -> None:
        run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=5000, max_age_s=0.2, consumer=consumer))

    run("persist")
    with psycopg.connect(database_url) as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT (instrument_id, seq)) FROM tick_data").fetchone()
        depth = conn.execute("SELECT count(*) FROM order_book_snapshots").fetchone()[0]
        offsets = conn.execute(
            "SELECT sum(next_offset) FROM kafka_offsets WHERE consumer='persist' AND topic = %s", (catalog.name("md.ticks"),)
        ).fetchone()[0]
        row = conn.execute(
            "SELECT t.price, t.volume FROM tick_data t JOIN instruments i ON i.id = t.instrument_id "
            "WHERE i.symbol = %s AND t.seq = %s",
            (expected[0].instrument, expected[0].seq),
        ).fetchone()
    assert n == distinct == len(expected)
    assert depth > 0
    assert offsets == len(expected)
    assert float(row[0]) == expected[0].ltp and row[1] == expected[0].volume

    # A consumer with no committed offsets replays everything: upserts change nothing.
    run("persist-replay")
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM tick_data").fetchone()[0] == len(expected)


def test_offsets_of_an_earlier_broker_incarnation_never_skip_records(kafka, catalog, database_url) -> None:
    """The embedded broker keeps topics in memory: after its restart offsets start again at 0
    under a new cluster id. Offsets committed against the old incarnation - further along -
    must not survive into the new one, or a later restart of the flow skips what the new
    topic holds below them."""
    cfg = _ingest(kafka, catalog, steps=5, bad_rate=0.0)
    expected, _ = _expected(cfg)
    topic = catalog.name("md.ticks")
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, cfg.universe)
        conn.execute(
            "INSERT INTO kafka_offsets (consumer, topic, partition, cluster_id, next_offset, updated_at) "
            "SELECT 'persist', %s, p, 'an-earlier-incarnation', 10000000, NOW() FROM generate_series(0, %s) p",
            (topic, catalog["md.ticks"].partitions - 1),
        )
    run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=5000, max_age_s=0.2))
    stored = stored_offsets(database_url, "persist", cluster_id(kafka.admin()))
    assert sum(o for (t, _p), o in stored.items() if t == topic) == len(expected)


def test_migrations_are_recorded_and_idempotent(database_url) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        before = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall()
        assert migrate(conn) == []
        after = conn.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall()
        assert before == after and len(after) >= 2
        assert all(s.applied_at and s.checksum_ok for s in status(conn))
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {
        "instruments",
        "tick_data",
        "ohlc_candles",
        "order_book_snapshots",
        "orders",
        "order_history",
        "positions",
        "strategies",
        "broker_credentials",
        "fills",
        "risk_events",
        "audit_log",
        "users",
        "backtest_runs",
        "backtest_trades",
    } <= tables


def test_persist_dead_letters_unknown_instruments_and_undecodable_records(kafka, catalog, database_url) -> None:
    from confluent_kafka import Producer

    from schemas.codec import encode

    u = build_universe(DAY, 20)
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, u)
    ts = 1_763_610_300 * 10**9
    known = Tick(
        instrument=u[0].instrument,
        ts_event=ts,
        ts_init=ts,
        seq=1,
        ltp=100.0,
        last_qty=1,
        volume=1,
        oi=0,
        bid=99.9,
        ask=100.1,
        bid_qty=1,
        ask_qty=1,
    )
    ghost = Tick(
        instrument="NSE:GHOST",
        ts_event=ts,
        ts_init=ts,
        seq=1,
        ltp=50.0,
        last_qty=1,
        volume=1,
        oi=0,
        bid=49.9,
        ask=50.1,
        bid_qty=1,
        ask_qty=1,
    )
    p = Producer(kafka.producer())
    topic = catalog.name("md.ticks")
    p.produce(topic, encode(known), known.instrument, partition=0)
    p.produce(topic, encode(ghost), ghost.instrument, partition=0)
    p.produce(topic, b'{"type":"Tick","instrument":"NSE:INFY"', b"NSE:INFY", partition=1)  # truncated JSON
    assert p.flush(10) == 0

    run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=100, max_age_s=0.2))

    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM tick_data").fetchone()[0] == 1
        committed = conn.execute(
            "SELECT partition, next_offset FROM kafka_offsets WHERE topic = %s ORDER BY 1", (topic,)
        ).fetchall()
    assert committed == [(0, 2), (1, 1)]  # every record accounted for: stored or dead-lettered
    dlq = [codec_for(RejectedEvent).decode(v) for v in read_all(kafka, catalog.name("md.dlq"))]
    by_reason = {r.reason.value: r for r in dlq}
    assert set(by_reason) == {"unknown_instrument", "malformed"}
    assert by_reason["unknown_instrument"].instrument == "NSE:GHOST"
    assert codec_for(Tick).decode(by_reason["unknown_instrument"].payload) == ghost
    assert f"{topic}[1]@0" in by_reason["malformed"].detail
