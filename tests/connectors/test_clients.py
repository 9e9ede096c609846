"""Kafka clients on the real broker, as short-lived as a backtest makes them: a new client
answers its first request promptly, a finished flow lets go of its producer (and the
librdkafka threads behind it) without waiting for the garbage collector, and a finished run's
output is read back in one pass."""

from __future__ import annotations

import gc
import time
import uuid
from pathlib import Path

import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from connectors.kafka import KafkaClientConfig, KafkaUnavailable, ProducerSink, delete_topics, read_all, read_topics
from schemas.topics import TopicCatalog


def _threads() -> int:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("Threads:"))
    return int(line.split()[1])


def _write(kafka: KafkaClientConfig, topic: str, values: list[bytes]) -> None:
    flow = Dataflow("sink")
    items = op.input("in", flow, TestingSource(values))
    op.output("out", op.map("rec", items, lambda v: (topic, b"k", v)), ProducerSink(kafka.producer()))
    run_main(flow)


def test_a_finished_flow_frees_its_producer_without_a_collection(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    """The flows run with a tuned collector (frozen start-up, rare full collections), so a
    producer kept alive by a reference cycle outlived its flow with its threads: 2,000 of them
    were alive at the end of a benchmark session, 3 threads each."""
    topic = catalog.name("sig.signals")
    _write(kafka, topic, [b"warm-up"])  # the first run may start threads that stay (none expected)
    gc.collect()
    gc.disable()
    try:
        before = _threads()
        for n in range(3):
            _write(kafka, topic, [f"v{n}".encode()])
        after = _threads()
    finally:
        gc.enable()
    assert read_all(kafka, topic) == [b"warm-up", b"v0", b"v1", b"v2"]
    assert after <= before + 2, f"{after - before} more threads after 3 flows (a leaked producer holds 3)"


def test_a_new_client_answers_its_first_request_promptly(kafka: KafkaClientConfig) -> None:
    """A backtest makes several admin clients, consumers and producers. With librdkafka's
    default reconnect backoff (100 ms) a new client's first request waited ~50 ms for its
    connection more often than not (53 ms, against 2-3 ms otherwise); RECONNECT_BACKOFF_MS
    brings the wait to ~15 ms at most."""
    took = []
    for _ in range(15):
        t0 = time.perf_counter()
        kafka.admin().list_topics(timeout=10)
        took.append(time.perf_counter() - t0)
    slow = [round(t * 1e3, 1) for t in took if t >= 0.04]
    assert len(slow) <= 1, f"{len(slow)} of 15 new clients took 40 ms or more: {slow} ms"


def test_read_all_gives_every_partition_in_log_order_without_waiting_per_partition(kafka: KafkaClientConfig) -> None:
    """A finished run's output is read back whole: partition by partition, each in log order,
    empty partitions included - in one pass, not one consume timeout per partition (reading a
    backtest's three outputs took 1.7 s that way, a fifth of a 200k-bar candle replay)."""
    topic = f"t{uuid.uuid4().hex[:10]}.readall"
    admin = kafka.admin()
    for fut in admin.create_topics([NewTopic(topic, 8, 1)]).values():
        fut.result(15)
    try:
        p = Producer(kafka.producer())
        written: dict[int, list[int]] = {0: list(range(30)), 3: [100, 101], 7: [200]}
        for batch in range(3):  # partition 0 in three batches
            for part, values in written.items():
                for v in values[batch * 10 : (batch + 1) * 10]:
                    p.produce(topic, str(v).encode(), partition=part)
            assert p.flush(10) == 0
        t0 = time.monotonic()
        got = read_all(kafka, topic)
        took = time.monotonic() - t0
        assert got == [str(v).encode() for _part, vs in sorted(written.items()) for v in vs]  # partition 0, 3, 7
        # One consume timeout per partition (the old reader) is at least 8 x 0.5 s.
        assert took < 2.0, f"read 33 records of 8 partitions in {took:.2f} s"
        # Several topics with one consumer, each as read_all gives it; a missing one is named.
        other = f"{topic}.other"
        for fut in admin.create_topics([NewTopic(other, 1, 1)]).values():
            fut.result(15)
        p.produce(other, b"x", partition=0)
        assert p.flush(10) == 0
        assert read_topics(kafka, [other, topic]) == {other: [b"x"], topic: got}
        with pytest.raises(KafkaUnavailable, match=r"topic nope\.1, nope\.2 does not exist"):
            read_topics(kafka, [topic, "nope.1", "nope.2"])
    finally:
        delete_topics(admin, [topic, f"{topic}.other"])
