"""ProducerSink on the real broker: what a flow writes arrives, and a finished flow lets go of
its producer (and the librdkafka threads behind it) without waiting for the garbage collector."""

from __future__ import annotations

import gc
from pathlib import Path

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from connectors.kafka import KafkaClientConfig, ProducerSink, read_all
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
    assert [v for _p, v in read_all(kafka, topic)] == [b"warm-up", b"v0", b"v1", b"v2"]
    assert after <= before + 2, f"{after - before} more threads after 3 flows (a leaked producer holds 3)"
