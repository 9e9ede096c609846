"""OrderedSource: partitions merged by event time, late records kept in log order, resumable."""

from __future__ import annotations

import json

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from connectors.kafka import KafkaClientConfig, OrderedSource
from schemas.topics import TopicCatalog


def _ts(value: bytes) -> int:
    return int(json.loads(value)["ts"])


def _parse(value: bytes, partition: int, offset: int) -> tuple[int, tuple[int, int, int]]:
    """The source's ``parse``: the time to merge by, and the item emitted for the record."""
    ts = int(json.loads(value)["ts"])
    return ts, (partition, offset, ts)


def _run(kafka: KafkaClientConfig, topic: str, start: dict[tuple[str, int], int] | None = None) -> list[tuple]:
    out: list[tuple] = []
    flow = Dataflow("ordered")
    recs = op.input("in", flow, OrderedSource(kafka, topic, _parse, start=start, batch_size=3))
    op.output("out", recs, TestingSink(out))
    run_main(flow)
    return out


def test_partitions_merge_by_event_time_and_late_records_stay_in_place(
    kafka: KafkaClientConfig, catalog: TopicCatalog
) -> None:
    topic = catalog.name("md.ticks")  # 4 partitions
    logs = {
        0: [10, 20, 30, 40],
        1: [15, 25, 12, 35],  # 12 is late: it must stay right after 25
        2: [5, 50],
        3: [],
    }
    p = Producer(kafka.producer())
    for part, times in logs.items():
        for t in times:
            p.produce(topic, json.dumps({"ts": t}).encode(), partition=part)
    assert p.flush(10) == 0

    got = _run(kafka, topic)
    assert [t for _, _, t in got] == [5, 10, 15, 20, 25, 12, 30, 35, 40, 50]
    for part, times in logs.items():  # every partition's records in log order, each exactly once
        assert [o for p_, o, _ in got if p_ == part] == list(range(len(times)))

    # Resuming from offsets gives the rest, in the same order; and a second run is identical.
    assert _run(kafka, topic) == got
    rest = _run(kafka, topic, start={(topic, 0): 2, (topic, 1): 3, (topic, 2): 1})
    assert [t for _, _, t in rest] == [30, 35, 40, 50]


def test_a_resume_from_recovery_keeps_a_late_record_late(kafka: KafkaClientConfig, catalog: TopicCatalog, tmp_path) -> None:
    from bytewax.recovery import RecoveryConfig, init_db_dir

    topic = catalog.name("md.ticks")
    p = Producer(kafka.producer())

    def produce(logs: dict[int, list[int]]) -> None:
        for part, times in logs.items():
            for t in times:
                p.produce(topic, json.dumps({"ts": t}).encode(), partition=part)
        assert p.flush(10) == 0

    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))

    def run() -> list[int]:
        out: list[tuple] = []
        flow = Dataflow("ordered_rec")
        recs = op.input("in", flow, OrderedSource(kafka, topic, _parse, batch_size=3))
        op.output("out", op.map("v", recs, lambda r: r[2]), TestingSink(out))
        run_main(flow, recovery_config=recovery)
        return out

    produce({0: [10, 20], 1: [15, 30]})
    assert run() == [10, 15, 20, 30]
    produce({0: [5], 1: [40], 2: [18]})  # partition 0's 5 is late (after its 20)
    assert run() == [18, 5, 40]  # merged at 20, its partition's running maximum, not at 5


def test_end_offsets_and_last_values_read_the_log_not_the_batch_watermark(
    kafka: KafkaClientConfig, catalog: TopicCatalog
) -> None:
    """On the embedded broker the high watermark is the newest batch's base offset + 1; the
    helpers the live flow starts from (ctl.commands end, newest tick) must not trust it."""
    from connectors.kafka import end_offsets, last_values

    topic = catalog.name("md.ticks")
    p = Producer(kafka.producer(**{"linger.ms": 200}))  # one batch of 25 records
    for t in range(25):
        p.produce(topic, json.dumps({"ts": t}).encode(), partition=0)
    assert p.flush(10) == 0
    assert end_offsets(kafka, topic) == {(topic, 0): 25, (topic, 1): 0, (topic, 2): 0, (topic, 3): 0}
    assert [_ts(v) for v in last_values(kafka, topic)] == [24]


def test_a_tailing_source_reports_its_consumer_lag(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    import time

    from prometheus_client import REGISTRY

    from connectors.kafka import LAG_EVERY_S, RecordSource

    topic = catalog.name("md.ticks")
    p = Producer(kafka.producer(**{"linger.ms": 0}))
    for k in range(30):  # one batch each: the embedded broker's high watermark is per batch
        p.produce(topic, json.dumps({"ts": k}).encode(), partition=1)
        assert p.flush(10) == 0
    part = RecordSource(kafka, [topic], batch_size=10, tail=True).build_part("in", f"1@{topic}", None)
    try:
        read = 0
        deadline = time.monotonic() + 30
        while read < 10 and time.monotonic() < deadline:
            read += len(part.next_batch())
        assert read == 10
        time.sleep(LAG_EVERY_S + 0.1)
        part.next_batch()  # reports the lag at the position before this batch
        lag = REGISTRY.get_sample_value("ticktape_kafka_consumer_lag", {"topic": topic, "partition": "1"})
        assert lag == 30 - read, lag
    finally:
        part.close()


def _drain(part, limit: float = 30.0) -> list[list]:
    """Batches from a source partition until it ends (replay) or ``limit`` seconds pass."""
    import time

    batches: list[list] = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            b = part.next_batch()
        except StopIteration:
            break
        if b:
            batches.append(b)
    return batches


def test_batches_are_slices_of_the_merge_and_a_snapshot_resumes_after_the_last_emitted(
    kafka: KafkaClientConfig, catalog: TopicCatalog
) -> None:
    """What is read per fetch and what is emitted per batch are independent: every batch holds
    at most ``batch_size`` records, all batches together are the merge a large batch gives,
    and a snapshot taken between batches names exactly what was emitted - records merged but
    not yet emitted are read again after a resume, never lost or doubled."""
    topic = catalog.name("md.ticks")
    p = Producer(kafka.producer())
    for k in range(200):
        p.produce(topic, json.dumps({"ts": (k * 7919) % 997}).encode(), partition=k % 4)
    assert p.flush(10) == 0

    def key(r) -> tuple[int, int]:
        return r[0], r[1]

    whole = OrderedSource(kafka, topic, _parse, batch_size=5000)
    part = whole.build_part("in", whole.list_parts()[0], None)
    try:
        reference = [key(r) for b in _drain(part) for r in b]
    finally:
        part.close()
    assert len(reference) == 200

    src = OrderedSource(kafka, topic, _parse, batch_size=7)
    part = src.build_part("in", src.list_parts()[0], None)
    try:
        first: list[list] = []
        while len(first) < 5:
            b = part.next_batch()
            if b:
                first.append(b)
        state = part.snapshot()
        batches = [*first, *_drain(part)]
    finally:
        part.close()
    assert all(len(b) <= 7 for b in batches)
    assert [key(r) for b in batches for r in b] == reference

    # Stop after the first batches, resume from the snapshot: the rest, in the same order.
    resumed = src.build_part("in", src.list_parts()[0], state)
    try:
        rest = [key(r) for b in _drain(resumed) for r in b]
    finally:
        resumed.close()
    done = sum(len(b) for b in first)
    assert rest == reference[done:]


def test_a_live_source_whose_records_wait_takes_all_that_waits(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    """Live, small batches keep latency low while the flow keeps up; a record that has waited
    BUSY_WAIT_S means the flow is busy, and a batch takes all there is (up to CATCHUP_BATCH)."""
    topic = catalog.name("md.ticks")
    p = Producer(kafka.producer())
    for k in range(4000):
        p.produce(topic, json.dumps({"ts": k}).encode(), partition=k % 4)
    assert p.flush(10) == 0

    def sizes(busy_s: float) -> list[int]:
        src = OrderedSource(kafka, topic, _parse, batch_size=10, tail=True)
        part = src.build_part("in", src.list_parts()[0], None)
        part.BUSY_WAIT_S, part.CATCHUP_BATCH = busy_s, 1500
        try:
            got = [len(b) for b in _drain(part, limit=3.0)]
        finally:
            part.close()
        assert sum(got) >= 3990  # the newest records of each partition wait for the idle bound
        return got

    fetched = REGISTRY.get_sample_value("ticktape_source_fetch_records_sum") or 0.0
    assert max(sizes(60.0)) == 10  # keeping up (here: nothing waits long enough)
    # Every record read is counted once in the delivery histogram (partition-EOF events are not).
    assert (REGISTRY.get_sample_value("ticktape_source_fetch_records_sum") or 0.0) - fetched == 4000
    busy = sizes(0.0)
    assert 100 < max(busy) <= 1500
