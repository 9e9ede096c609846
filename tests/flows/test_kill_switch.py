"""The kill switch under load: ~10k ticks/s through flows.live, then ``Halt``.

No new entry may leave the desk more than 1 s after the command is published (measured by
the broker timestamps the producers stamp), working entries are cancelled, every position
is flattened, and entries keep being refused with reason HALTED until a resume.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import date
from pathlib import Path

import psycopg
import pytest
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig
from connectors.postgres.instruments import upsert_instruments
from connectors.postgres.strategies import save_deployments
from flows import ingest
from schemas.codec import codec_for, encode
from schemas.control import Halt
from schemas.market import InstrumentType
from schemas.orders import OrderIntent, OrderPurpose, Position
from schemas.risk import RiskEvent, RiskRejected, TradingState, TradingStateChanged
from schemas.topics import TopicCatalog
from tests.flows.test_live_recovery import _start_live

pytestmark = pytest.mark.slow
DAY = date(2026, 11, 23)
SPEED = 7.0  # 500 instruments tick ~2.8/s each: ~10k ticks/s


def _read(kafka: KafkaClientConfig, topic: str) -> list[tuple[int, bytes]]:
    """(broker timestamp in ms, value) of every record."""
    c = Consumer(kafka.consumer(**{"fetch.wait.max.ms": 50}))
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + 30
    done = False
    while not done:  # to the end of the partition; consume takes what has come (a long wait holds it all)
        assert time.monotonic() < deadline, f"no end of {topic} within 30 s"
        for m in c.consume(10_000, 0.05):
            if m.error():
                assert m.error().code() == KafkaError._PARTITION_EOF
                done = True
            else:
                out.append((m.timestamp()[1], m.value()))
    c.close()
    return out


def test_halt_under_load_stops_entries_within_a_second(
    kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, broker, tmp_path: Path
) -> None:
    universe = tuple(build_universe(DAY, 500))
    stocks = [i.instrument for i in universe if i.instrument_type is InstrumentType.EQ][:40]
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, universe)
        save_deployments(conn, [
            ("ema", "ema_crossover", {"fast": 2, "slow": 5, "timeframe": "1s", "qty": 10, "instruments": stocks[:20],
                                      "allow_short": True}, True, ""),
            ("st", "supertrend_trend", {"period": 3, "multiplier": 1.0, "timeframe": "1s", "qty": 5,
                                        "instruments": stocks[20:], "allow_short": True}, True, ""),
        ])  # fmt: skip
    env = {
        **os.environ,
        "TICKTAPE_HOME": str(tmp_path),
        "TICKTAPE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TICKTAPE_KAFKA_PROFILE": "tansu",
        "TICKTAPE_DATABASE_URL": database_url,
        "TICKTAPE_TOPIC_PREFIX": catalog.prefix,
        "TICKTAPE_CANDLE_TIMEFRAMES": "1s,5s,1m",
        "TICKTAPE_STRATEGY_WARMUP_DAYS": "0",
    }
    live = _start_live(env, tmp_path / "live.log")
    halted_at: list[float] = []

    def halt_later() -> None:
        time.sleep(12)
        now = time.time_ns()
        cmd = Halt(command_id="halt-under-load", account="paper", issued_by="test", ts_event=now, ts_init=now,
                   reason="kill switch test")  # fmt: skip
        p = Producer(kafka.producer(**{"linger.ms": 0}))
        halted_at.append(time.time())
        p.produce(catalog.name("ctl.commands"), encode(cmd), b"paper")
        assert p.flush(10) == 0

    try:
        time.sleep(4)
        assert live.poll() is None, (tmp_path / "live.log").read_text()
        threading.Thread(target=halt_later, daemon=True).start()
        cfg = ingest.SimConfig(universe=universe, seed=9, groups=4, day=DAY, speed=SPEED, max_steps=int(20 * SPEED))
        t0 = time.time()
        before = ingest.TICKS_OUT._value.get()
        run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, kafka.producer()))
        rate = (ingest.TICKS_OUT._value.get() - before) / (time.time() - t0)
        time.sleep(5)  # let the flatten finish
    finally:
        os.killpg(live.pid, signal.SIGTERM)
        live.wait(30)
    assert halted_at and rate > 8_000, rate

    halt_ms = halted_at[0] * 1000
    intents = [(ts, codec_for(OrderIntent).decode(v)) for ts, v in _read(kafka, catalog.name("ord.intents"))
               if b'"OrderIntent"' in v]  # fmt: skip
    entries = [(ts, i) for ts, i in intents if i.purpose in (OrderPurpose.ENTRY, OrderPurpose.MANUAL)]
    assert sum(ts < halt_ms for ts, _ in entries) >= 10, "the load produced no entries before the halt"
    late = [(ts - halt_ms, i.client_order_id) for ts, i in entries if ts > halt_ms + 1000]
    assert late == [], late[:5]

    risk = [(ts, codec_for(RiskEvent).decode(v)) for ts, v in _read(kafka, catalog.name("risk.events"))]
    changes = [(ts, e) for ts, e in risk if type(e) is TradingStateChanged and e.current is TradingState.HALTED]
    assert changes and changes[0][0] - halt_ms < 1000, changes[:1]
    refused = [e for ts, e in risk if type(e) is RiskRejected and ts > halt_ms + 1000]
    assert refused and all(e.reason_code == "HALTED" for e in refused if e.reason_code not in ("STALE_SIGNAL",))

    latest: dict[tuple[str, str], Position] = {}
    for _, v in _read(kafka, catalog.name("pf.positions")):
        p = codec_for(Position).decode(v)
        latest[p.strategy, p.instrument] = p
    assert latest and all(p.qty == 0 for p in latest.values()), {k: p.qty for k, p in latest.items() if p.qty}
    print(
        f"{rate:,.0f} ticks/s; {len(entries)} entries, the last "
        f"{(max(ts for ts, _ in entries) - halt_ms) / 1000:+.2f}s after the halt; {len(latest)} positions flat"
    )
