"""The embedded broker carries a whole trading session without the fetch stall.

Tansu lists every stored batch of a partition on each Fetch and returns nothing once that
takes longer than ``fetch.wait.max.ms`` (research/tansu-compat.md §5, ~0.5 ms per 1,000
batches). A session is 6h15m; at our producer linger a partition receives at most one
batch per linger interval, so the worst case is ``22,500 s × 1000 / linger`` batches per
partition. This test writes exactly that many batches into one partition and reads them
all back from offset 0 with the production consumer settings, then checks a fresh record
still arrives promptly at the tail. A control consumer with a small fetch wait shows the
stall is real on this data, so the test would fail if our settings were wrong.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from connectors import embedded
from connectors.kafka import KafkaClientConfig
from connectors.settings import TANSU_FETCH_WAIT_MS, TANSU_LINGER_MS

SESSION_S = 6 * 3600 + 15 * 60
SESSION_BATCHES = math.ceil(SESSION_S * 1000 / TANSU_LINGER_MS)
RECORDS_PER_BATCH = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_broker() -> Iterator[KafkaClientConfig]:
    # A broker of its own: the stall control pins a broker core, which must not slow other tests.
    home = Path(tempfile.mkdtemp(prefix="ticktape-tansu-"))
    os.chmod(home, 0o755)
    state = embedded.start_broker(home, owned=True)
    yield KafkaClientConfig(bootstrap=state.bootstrap, tansu=True)
    embedded.stop_broker(home)
    shutil.rmtree(home, ignore_errors=True)


def _fill(cfg: KafkaClientConfig, topic: str, batches: int) -> int:
    admin = cfg.admin()  # keep a reference: the futures die with the client
    for fut in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        fut.result(timeout=15)
    # linger 0 with a tiny batch cap forces one stored batch per RECORDS_PER_BATCH records:
    # the compressed equivalent of a session of lingered batches.
    producer = Producer(cfg.producer(**{"linger.ms": 0, "batch.num.messages": RECORDS_PER_BATCH}))
    payload = b'{"ltp":1500.5,"volume":123456}' * 4
    total = batches * RECORDS_PER_BATCH
    for i in range(total):
        while True:
            try:
                producer.produce(topic, payload, partition=0)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 2000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    return total


def _read_all(conf: dict, topic: str, expect: int, budget_s: float) -> tuple[int, float]:
    consumer = Consumer(conf)
    consumer.assign([TopicPartition(topic, 0, 0)])
    n, t0 = 0, time.perf_counter()
    try:
        while n < expect and time.perf_counter() - t0 < budget_s:
            for msg in consumer.consume(10_000, 0.5):
                err = msg.error()
                if err is None:
                    n += 1
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise AssertionError(f"consumer error: {err}")
    finally:
        consumer.close()
    return n, time.perf_counter() - t0


def test_session_of_batches_is_consumed_without_stall(own_broker: KafkaClientConfig) -> None:
    cfg = own_broker
    total = _fill(cfg, "session", SESSION_BATCHES)
    assert SESSION_BATCHES >= 112_500  # 6h15m at a 200 ms linger; fails loudly if the linger grows

    got, took = _read_all(cfg.consumer(), "session", total, budget_s=60)
    assert got == total, f"production consumer read {got}/{total} in {took:.1f}s (fetch.wait {TANSU_FETCH_WAIT_MS} ms)"

    # The tail still moves: a record produced now arrives within a few fetch waits.
    consumer = Consumer(cfg.consumer())
    consumer.assign([TopicPartition("session", 0, total)])
    producer = Producer(cfg.producer())
    t0 = time.perf_counter()
    producer.produce("session", b"tail", partition=0)
    producer.flush(10)
    seen = None
    while time.perf_counter() - t0 < 10 and seen is None:
        for msg in consumer.consume(100, 0.2):
            if msg.error() is None:
                seen = time.perf_counter() - t0
    consumer.close()
    assert seen is not None and seen < 3.0, f"tail record took {seen}s"

    # Control: the same partition stalls a consumer whose fetch wait is too small for it.
    stalled, _ = _read_all(cfg.consumer(**{"fetch.wait.max.ms": 20}), "session", total, budget_s=8)
    assert stalled < total // 10, "expected the documented stall at fetch.wait.max.ms=20"
