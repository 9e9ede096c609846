"""Kill -9 of flows.live in the middle of a trading burst, restart from Bytewax recovery.

The live flow runs as its own process (``python -m bytewax.run flows.live``, as ``ticktape
up`` runs it) with recovery on, while the simulator pours a session's first 15 minutes into
md.ticks unpaced. Once fills are flowing it is killed with SIGKILL and started again on the
same recovery store; afterwards the topics are persisted and the record is checked: every
order and fill once, fills re-emitted after the crash identical to the originals (nothing
re-traded differently, nothing lost), positions equal to the sum of their fills.

The snapshot the flow resumes from is up to a second older than its last outputs, and the
catch-up cannot decide as the crashed run did (signal age is judged by the wall clock). So the
desk first takes back what it had published (TradingDesk.restore) and builds on that.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import msgspec
import psycopg
import pytest
from bytewax.recovery import init_db_dir
from bytewax.testing import run_main
from confluent_kafka import Consumer, TopicPartition

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, read_all
from connectors.postgres.instruments import upsert_instruments
from connectors.postgres.strategies import save_deployments
from flows import ingest, persist
from schemas.codec import codec_for
from schemas.market import InstrumentType
from schemas.orders import Fill
from schemas.risk import RiskEvent
from schemas.topics import TopicCatalog

pytestmark = pytest.mark.slow
DAY = date(2026, 11, 23)


def _count(kafka: KafkaClientConfig, topic: str) -> int:
    c = Consumer(kafka.consumer())
    try:
        return int(c.get_watermark_offsets(TopicPartition(topic, 0), 5)[1])
    finally:
        c.close()


def _reasons(kafka: KafkaClientConfig, catalog: TopicCatalog) -> dict[str, int]:
    events = (codec_for(RiskEvent).decode(v) for v in read_all(kafka, catalog.name("risk.events")))
    return dict(collections.Counter(getattr(e, "reason_code", type(e).__name__) for e in events))


def _history(kafka: KafkaClientConfig, catalog: TopicCatalog, coid: str, at_kill: dict[str, int]) -> list[str]:
    """An order's published record in log order per topic, marked before/after the kill (failure detail)."""
    out = []
    for topic in ("ord.intents", "ord.updates", "ord.fills"):
        for offset, raw in enumerate(read_all(kafka, catalog.name(topic))):
            e = msgspec.json.decode(raw)
            if e.get("client_order_id") == coid:
                when = "after" if offset >= at_kill[topic] else "before"
                out.append(f"{topic}@{offset} {when} kill: {e.get('type')} {e.get('status', e.get('order_type', ''))} "
                           f"qty={e.get('qty')} filled={e.get('filled_qty', '')} ts_event={e.get('ts_event')} "
                           f"ts_init={e.get('ts_init')}")  # fmt: skip
    return out


def _trail(
    kafka: KafkaClientConfig, catalog: TopicCatalog, strategy: str, symbol: str, at_kill: dict[str, int]
) -> list[str]:
    """One strategy's record in one instrument (failure detail): intents, fills, positions."""
    out = []
    for topic in ("ord.intents", "ord.fills", "pf.positions"):
        for offset, raw in enumerate(read_all(kafka, catalog.name(topic))):
            e = msgspec.json.decode(raw)
            if e.get("strategy") == strategy and e.get("instrument") == symbol:
                when = "after" if offset >= at_kill.get(topic, 0) else "before"
                what = f"{e.get('type')} {e.get('client_order_id', '')} {e.get('purpose', '')} {e.get('side', '')}"
                out.append(f"{topic}@{offset} {when}: {what} qty={e.get('qty')} ts_event={e.get('ts_event')}")
    return out


def _start_live(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "flows.live"], env=env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _wait_quiet(kafka: KafkaClientConfig, topics: list[str], quiet_s: float, limit_s: float) -> None:
    deadline, last, since = time.monotonic() + limit_s, None, time.monotonic()
    while time.monotonic() < deadline:
        now = tuple(_count(kafka, t) for t in topics)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)
    pytest.fail(f"outputs still growing after {limit_s}s")


def test_kill_9_mid_burst_then_resume_from_recovery(
    kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, broker
) -> None:
    universe = tuple(build_universe(DAY, 40))
    stocks = [i.instrument for i in universe if i.instrument_type is InstrumentType.EQ][:12]
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, universe)
        save_deployments(conn, [
            ("ema", "ema_crossover", {"fast": 3, "slow": 8, "timeframe": "5s", "qty": 10, "instruments": stocks[:6],
                                      "allow_short": True}, True, ""),
            ("st", "supertrend_trend", {"period": 5, "multiplier": 1.5, "timeframe": "5s", "qty": 5,
                                        "instruments": stocks[6:], "allow_short": True}, True, ""),
        ])  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix="ticktape-rec-"))
    rec = home / "recovery"
    rec.mkdir()
    init_db_dir(rec, 1)
    env = {
        **os.environ,
        "TICKTAPE_HOME": str(home),
        "TICKTAPE_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TICKTAPE_KAFKA_PROFILE": "tansu",
        "TICKTAPE_DATABASE_URL": database_url,
        "TICKTAPE_TOPIC_PREFIX": catalog.prefix,
        "TICKTAPE_CANDLE_TIMEFRAMES": "1s,5s,1m",
        "TICKTAPE_STRATEGY_WARMUP_DAYS": "0",
        "BYTEWAX_RECOVERY_DIRECTORY": str(rec),
        "BYTEWAX_SNAPSHOT_INTERVAL": "1",
        "BYTEWAX_RECOVERY_BACKUP_INTERVAL": "0",
    }
    log = home / "live.log"
    fills_topic, intents_topic = catalog.name("ord.fills"), catalog.name("ord.intents")
    live = _start_live(env, log)
    try:
        time.sleep(4)  # started on an empty md.ticks: everything that arrives may trade
        assert live.poll() is None, log.read_text()
        cfg = ingest.SimConfig(universe=universe, seed=5, groups=2, day=DAY, speed=0, max_steps=900)
        run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, kafka.producer()))
        deadline = time.monotonic() + 60
        while _count(kafka, fills_topic) < 40 and time.monotonic() < deadline:
            time.sleep(0.2)
        before = _count(kafka, fills_topic)
        if before < 40:
            pytest.fail(
                f"{before} fills; {_count(kafka, intents_topic)} intents; risk {_reasons(kafka, catalog)}; "
                f"{_count(kafka, catalog.name('sig.signals'))} signals\n{log.read_text()[-3000:]}"
            )
        at_kill = {t: _count(kafka, catalog.name(t)) for t in ("ord.intents", "ord.updates", "ord.fills", "pf.positions")}
        os.killpg(live.pid, signal.SIGKILL)  # mid-burst: the flow is still working through md.ticks
        live.wait(10)
        live = _start_live(env, log)
        _wait_quiet(kafka, [fills_topic, intents_topic, catalog.name("md.candles")], quiet_s=6, limit_s=180)
        assert live.poll() is None, log.read_text()[-3000:]
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGTERM)
            live.wait(30)

    # At-least-once output: a fill re-emitted after the restart must be the same fill.
    fills = [codec_for(Fill).decode(v) for v in read_all(kafka, fills_topic)]
    by_trade: dict[tuple[str, str], set[tuple[object, ...]]] = defaultdict(set)
    for f in fills:
        by_trade[f.venue, f.trade_id].add((f.client_order_id, f.side, f.qty, f.price, f.ts_event))
    diverged = {k: sorted(v, key=str) for k, v in by_trade.items() if len(v) > 1}
    assert not diverged, "\n".join(f"{k}: {v}" for k, v in list(diverged.items())[:3])
    replayed = len(fills) - len(by_trade)

    run_main(persist.build(kafka, catalog, database_url, tail=False, max_rows=5000, max_age_s=0.2))
    with psycopg.connect(database_url, autocommit=True) as conn:
        stored = conn.execute("SELECT venue, trade_id FROM fills").fetchall()
        assert sorted(stored) == sorted(by_trade)  # every fill once, none lost
        per_order = dict(conn.execute(
            "SELECT o.client_order_id, o.filled_quantity - COALESCE(SUM(f.quantity), 0) FROM orders o "
            "LEFT JOIN fills f ON f.client_order_id = o.client_order_id GROUP BY o.client_order_id, o.filled_quantity"
        ).fetchall())  # fmt: skip
        off = {coid: d for coid, d in per_order.items() if d != 0}
        detail = [
            (coid, d, conn.execute("SELECT current_status, quantity, filled_quantity, purpose FROM orders WHERE "
                                   "client_order_id = %s", (coid,)).fetchone())
            for coid, d in list(off.items())[:5]
        ]  # fmt: skip
        history = {coid: _history(kafka, catalog, coid, at_kill) for coid in list(off)[:2]}
        assert per_order and not off, f"orders whose filled quantity differs from their fills: {detail}\n{history}"
        mismatched = conn.execute(
            """SELECT p.strategy_id, p.instrument_id, p.quantity, COALESCE(SUM(CASE WHEN f.side = 'BUY'
                      THEN f.quantity ELSE -f.quantity END), 0) AS filled
               FROM positions p LEFT JOIN fills f ON f.strategy_id = p.strategy_id
                    AND f.instrument_id = p.instrument_id AND f.account = p.account
               GROUP BY p.strategy_id, p.instrument_id, p.quantity HAVING p.quantity <> COALESCE(SUM(
                      CASE WHEN f.side = 'BUY' THEN f.quantity ELSE -f.quantity END), 0)"""
        ).fetchall()
        trail = {}
        for strategy, iid, *_ in mismatched[:2]:
            symbol = conn.execute("SELECT symbol FROM instruments WHERE id = %s", (iid,)).fetchone()[0]
            trail[strategy, symbol] = _trail(kafka, catalog, strategy, symbol, at_kill)
        assert mismatched == [], "\n".join(f"{k}:\n  " + "\n  ".join(v) for k, v in trail.items())
        strategies = {r[0] for r in conn.execute("SELECT DISTINCT strategy_id FROM fills").fetchall()}
        assert strategies == {"ema", "st"}
    risk = _reasons(kafka, catalog)
    print(
        f"fills before the kill {before}, total {len(by_trade)}, re-emitted after restart {replayed}; "
        f"signals {_count(kafka, catalog.name('sig.signals'))}, risk events {risk}"
    )
