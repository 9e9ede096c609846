"""Control round trip through the running stack: `ticktape up` (simulator at market speed, the
live flow, persistence, the API), commanded over HTTP.

* Disabling a strategy through the API stops its signals within 1 s (the flow stamps every
  signal with the wall clock in ``ts_init``), while the other strategy keeps signalling - so
  the flow was alive and a late signal would have been seen.
* The emergency stop halts the account within 1 s: a ``TradingStateChanged`` to HALTED
  reaches ``risk.events`` (timed by a consumer watching the topic from before the request:
  the desk stamps its events with market time, not wall time), and no entry order is sent
  after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from api.security import create_user
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, existing_topics, read_all
from connectors.postgres.strategies import save_deployments
from connectors.processes import free_port
from schemas.codec import codec_for
from schemas.market import InstrumentType
from schemas.orders import OrderIntent, OrderPurpose, TargetPosition, VenueRequest
from schemas.risk import RiskEvent, TradingState, TradingStateChanged
from schemas.topics import TopicCatalog

pytestmark = pytest.mark.slow
PASSWORD = "round trip password"
S = 10**9


def _signals(kafka: KafkaClientConfig, catalog: TopicCatalog) -> list[TargetPosition]:
    codec = codec_for(TargetPosition)
    return [codec.decode(v) for v in read_all(kafka, catalog.name("sig.signals"))]


class _Watch:
    """Reads a topic from its current end; ``until`` returns when a decoded record matches."""

    def __init__(self, kafka: KafkaClientConfig, topic: str, value_type: object) -> None:
        self.codec = codec_for(value_type)
        self.consumer = Consumer(kafka.consumer())
        parts = existing_topics(kafka.admin())[topic]
        ends = [self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(parts)]
        self.consumer.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends)])

    def until(self, pred, timeout: float) -> int:  # type: ignore[no-untyped-def]
        """Wall time (ns) at which a matching record was read."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                for m in self.consumer.consume(100, 0.05):
                    if m.error() is None and pred(self.codec.decode(m.value())):
                        return time.time_ns()
        finally:
            self.consumer.close()
        msg = f"no matching record within {timeout} s"
        raise AssertionError(msg)


def _wait(what: str, pred, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_disable_and_emergency_stop_act_within_a_second(
    kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, tmp_path: Path
) -> None:
    stocks = [i.instrument for i in build_universe(date(2026, 11, 23), 40) if i.instrument_type is InstrumentType.EQ][:10]
    with psycopg.connect(database_url, autocommit=True) as conn:
        save_deployments(conn, [  # 1 s bars and short averages: a crossover somewhere every few seconds
            ("fast_a", "ema_crossover", {"fast": 2, "slow": 4, "timeframe": "1s", "qty": 1, "instruments": stocks[:5],
                                         "allow_short": True}, True, ""),
            ("fast_b", "ema_crossover", {"fast": 2, "slow": 4, "timeframe": "1s", "qty": 1, "instruments": stocks[5:],
                                         "allow_short": True}, True, ""),
        ])  # fmt: skip
        create_user(conn, "operator", PASSWORD)
    port = free_port()
    env = {**os.environ, "TICKTAPE_HOME": str(tmp_path), "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "TICKTAPE_DATABASE_URL": database_url, "TICKTAPE_TOPIC_PREFIX": catalog.prefix,
           "TICKTAPE_SIM_INSTRUMENTS": "40", "TICKTAPE_API_PORT": str(port),
           "TICKTAPE_METRICS_PORT_BASE": str(free_port()), "TICKTAPE_STRATEGY_WARMUP_DAYS": "0"}  # fmt: skip
    cli = Path(sys.executable).with_name("ticktape")
    up = subprocess.Popen([str(cli), "up", "--speed", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}"
        _wait("the API", lambda: _up(api), 90)
        token = httpx.post(f"{api}/api/auth/login", json={"username": "operator", "password": PASSWORD},
                           timeout=10).json()["access_token"]  # fmt: skip
        auth = {"Authorization": f"Bearer {token}"}

        def signalled(strategy: str, n: int) -> bool:
            return sum(s.strategy == strategy for s in _signals(kafka, catalog)) >= n

        _wait("signals of both strategies", lambda: signalled("fast_a", 3) and signalled("fast_b", 3), 90)
        disabled_at = time.time_ns()  # the 1 s budget starts with the request
        r = httpx.post(f"{api}/api/strategies/fast_a/disable", headers=auth, timeout=10)
        assert r.status_code == 202, r.text
        before = sum(s.strategy == "fast_b" for s in _signals(kafka, catalog))
        _wait("fast_b to keep signalling", lambda: signalled("fast_b", before + 3), 60)
        time.sleep(2)

        watch = _Watch(kafka, catalog.name("risk.events"), RiskEvent)
        sent_at = time.time_ns()
        r = httpx.post(f"{api}/api/risk/emergency-stop", headers=auth, json={"reason": "round trip test"}, timeout=10)
        assert r.status_code == 202, r.text
        seen_at = watch.until(lambda e: type(e) is TradingStateChanged and e.current is TradingState.HALTED, 30)
        time.sleep(3)
        signals = _signals(kafka, catalog)
        events = [codec_for(RiskEvent).decode(v) for v in read_all(kafka, catalog.name("risk.events"))]
        requests = [codec_for(VenueRequest).decode(v) for v in read_all(kafka, catalog.name("ord.intents"))]
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out[-3000:]

    a_times = [s.ts_init for s in signals if s.strategy == "fast_a"]
    print(
        f"\n[roundtrip] fast_a signals {len(a_times)}, last {(max(a_times) - disabled_at) / S:+.2f} s from the disable; "
        f"fast_b after: {sum(s.strategy == 'fast_b' and s.ts_init > disabled_at for s in signals)}"
    )
    assert all(abs(s.ts_init - disabled_at) < 300 * S for s in signals)  # stamped by the wall clock
    late_a = [s for s in signals if s.strategy == "fast_a" and s.ts_init > disabled_at + S]
    assert late_a == [], f"fast_a still signalled {(late_a[0].ts_init - disabled_at) / S:.2f} s after the disable"
    assert any(s.strategy == "fast_b" and s.ts_init > disabled_at + 2 * S for s in signals)

    print(f"[roundtrip] HALTED on risk.events {(seen_at - sent_at) / S:.3f} s after the emergency stop was sent")
    assert seen_at - sent_at < S, f"halted {(seen_at - sent_at) / S:.2f} s after the emergency stop"
    [halt] = [i for i, e in enumerate(events) if type(e) is TradingStateChanged and e.current is TradingState.HALTED]
    halt_ts = events[halt].ts_event  # market time, like the desk's orders
    entries = [o.ts_init for o in requests if type(o) is OrderIntent and o.purpose is OrderPurpose.ENTRY]
    assert any(t <= halt_ts for t in entries), "the account never traded before the stop: nothing was tested"
    assert [t for t in entries if t > halt_ts] == []
    assert any(s.strategy == "fast_b" and s.ts_init > seen_at for s in signals)  # still deciding, not trading


def _up(api: str) -> bool:
    try:
        return httpx.get(f"{api}/metrics", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
