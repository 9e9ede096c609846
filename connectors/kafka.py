"""Kafka I/O: client settings per broker profile, admin, a batching producer sink and a
record source with explicit offsets.

The embedded broker (Tansu) has known gaps (research/tansu-compat.md): end offsets from
ListOffsets are wrong, OFFSET_END replays old data, and fetches stall once a partition
holds too many batches for ``fetch.wait.max.ms``. So this module never uses OFFSET_END or
watermarks for correctness; it starts from explicit offsets, detects the end of a
partition by partition-EOF events, and sizes producer batching for a whole session.
"""

from __future__ import annotations

import itertools
import logging
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter, Gauge, Histogram

from connectors.settings import (
    FETCH_QUEUE_BACKOFF_MS,
    KAFKA_FETCH_WAIT_MS,
    KAFKA_LINGER_MS,
    RECONNECT_BACKOFF_MS,
    TANSU_FETCH_WAIT_MS,
    TANSU_LINGER_MS,
    Settings,
)
from connectors.shutdown import STOP
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.kafka")

DELIVERY_TIMEOUT_S = 30.0  # a snapshot waits this long for the broker's acknowledgements
PRODUCED = Counter("ticktape_kafka_produced_total", "Records handed to the Kafka producer", ["topic"])
CONSUMED = Counter("ticktape_kafka_consumed_total", "Records read from Kafka", ["topic"])
LAG = Gauge(
    "ticktape_kafka_consumer_lag",
    "Records between a flow's read position and the partition's high watermark, from the consumer's "
    "cached fetch metadata once a second (on the embedded Tansu broker the mark trails by up to one batch)",
    ["topic", "partition"],
)
LAG_EVERY_S = 1.0
SOURCE_WAIT = Histogram(
    "ticktape_source_wait_seconds",
    "Live: how long the oldest record of each batch waited in the ordered source, merged but not yet in the flow "
    "(the flow is busy with earlier batches; on the embedded broker records arrive in bursts)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
SOURCE_FETCH = Histogram(
    "ticktape_source_fetch_records",
    "Live: records the ordered source took from the client per non-empty read - how bursty the broker's "
    "delivery is (the embedded broker hands over a producer's whole lingered batch at once)",
    buckets=(1, 5, 20, 50, 100, 250, 500, 1000, 2000, 5000),
)


def _report_lag(consumer: Consumer, topic: str, positions: dict[int, int]) -> None:
    """Set the lag gauge of each partition (no network: the watermark is the last fetch's)."""
    for p, pos in positions.items():
        _lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
        if hi is not None and hi >= 0:
            LAG.labels(topic, str(p)).set(max(0, hi - pos))


class KafkaUnavailable(RuntimeError):
    """The broker cannot be reached (transient: retry with backoff)."""


@dataclass(frozen=True)
class KafkaClientConfig:
    """Everything a Kafka client needs, derived once from :class:`Settings`."""

    bootstrap: str
    tansu: bool

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str) -> KafkaClientConfig:
        return cls(bootstrap=bootstrap, tansu=settings.broker_is_tansu)

    def producer(self, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "reconnect.backoff.ms": RECONNECT_BACKOFF_MS,
            "linger.ms": TANSU_LINGER_MS if self.tansu else KAFKA_LINGER_MS,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "compression.type": "lz4",  # also shrinks what the memory-only broker holds
            "acks": "all",
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.timeout.ms": 30_000,  # a dead broker surfaces as an error, not a silent queue
        }
        conf.update(overrides)
        return conf

    def consumer(self, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "reconnect.backoff.ms": RECONNECT_BACKOFF_MS,
            "group.id": "ticktape-assign-only",  # required by librdkafka; we assign() and never commit
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": TANSU_FETCH_WAIT_MS if self.tansu else KAFKA_FETCH_WAIT_MS,
            # Once the client holds queued.min.messages (100k) prefetched records, it stops
            # fetching and, by default, looks again only after 1 s: a replay that drains the
            # queue faster than that then waits for the broker. Reading a filled 8-partition
            # topic of 422k ticks took 2.5 s, about 2 s of it in such waits; 10 ms: 0.53 s.
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "isolation.level": "read_uncommitted",
            "enable.partition.eof": True,
        }
        conf.update(overrides)
        return conf

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap, "reconnect.backoff.ms": RECONNECT_BACKOFF_MS})


def cluster_id(admin: AdminClient, timeout: float = 10.0) -> str:
    try:
        return str(admin.describe_cluster(request_timeout=timeout).result(timeout=timeout).cluster_id)
    except KafkaException as exc:
        msg = f"cannot describe the Kafka cluster: {exc}"
        raise KafkaUnavailable(msg) from exc


def existing_topics(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    """Topic name -> partition count."""
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        msg = f"cannot list topics: {exc}"
        raise KafkaUnavailable(msg) from exc
    return {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}


def _tails(client: KafkaClientConfig, topic: str, timeout: float) -> dict[int, tuple[int, bytes | None]]:
    """Partition -> (end offset, newest value or None when empty), read from the log itself.

    ``get_watermark_offsets`` is not enough on the embedded broker: its high watermark is the
    base offset of the newest *batch* + 1 (research/tansu-compat.md §3). So each partition is
    read from just below that mark to its ``_PARTITION_EOF``, whose offset is exact everywhere.
    """
    parts = existing_topics(client.admin(), timeout).get(topic)
    if parts is None:
        msg = f"topic {topic} does not exist (run `ticktape topics create`)"
        raise KafkaUnavailable(msg)
    c = Consumer(client.consumer(**{"fetch.wait.max.ms": 10}))
    out: dict[int, tuple[int, bytes | None]] = {}
    try:
        for p in range(parts):
            lo, hi = (int(x) for x in c.get_watermark_offsets(TopicPartition(topic, p), timeout))
            c.assign([TopicPartition(topic, p, max(lo, hi - 1))])
            last: bytes | None = None
            deadline = time.monotonic() + timeout
            while True:
                if time.monotonic() > deadline:
                    msg = f"no end of partition from {topic}[{p}] within {timeout}s"
                    raise KafkaUnavailable(msg)
                m = c.poll(0.5)
                if m is None:
                    continue
                err = m.error()
                if err is None:
                    last = m.value() or b""
                elif err.code() == KafkaError._PARTITION_EOF:
                    out[p] = (int(m.offset() or 0), last)
                    break
                else:
                    msg = f"error reading the end of {topic}[{p}]: {err}"
                    raise KafkaUnavailable(msg)
    finally:
        c.close()
    return out


def read_all(client: KafkaClientConfig, topic: str, timeout: float = 30.0) -> list[bytes]:
    """Every value of ``topic``, partition by partition in log order, read to each partition's
    end-of-partition event (a bounded read of a finished run's output)."""
    return read_topics(client, [topic], timeout)[topic]


def read_topics(client: KafkaClientConfig, topics: Sequence[str], timeout: float = 30.0) -> dict[str, list[bytes]]:
    """:func:`read_all` of several topics with one consumer: ``topic -> values``.

    Every partition is read at once, each call taking what has arrived: ``consume(n, t)``
    waits the whole ``t`` for ``n`` records, and one partition at a time that wait came per
    partition and fetch (4.5 s for 200k records in 8 partitions; 0.55 s at once). One
    consumer and one metadata request for all the topics: a backtest's three outputs took
    0.2 s read one by one, 0.07 s together."""
    known = existing_topics(client.admin(), timeout)
    missing = [t for t in topics if t not in known]
    if missing:
        msg = f"topic {', '.join(missing)} does not exist"
        raise KafkaUnavailable(msg)
    c = Consumer(client.consumer(**{"fetch.wait.max.ms": 10}))
    got: dict[tuple[str, int], list[bytes]] = {(t, p): [] for t in topics for p in range(known[t])}
    pending = set(got)
    try:
        c.assign([TopicPartition(t, p, 0) for t, p in got])
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                msg = f"no end of partition from {sorted(pending)} within {timeout}s"
                raise KafkaUnavailable(msg)
            messages = c.consume(10_000, 0.02)
            for m in messages:
                err, where = m.error(), (m.topic() or "", m.partition() or 0)
                if err is None:
                    if where in pending:  # after its end: written since, not part of this read
                        got[where].append(m.value() or b"")
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(where)
                else:
                    msg = f"error reading {where[0]}[{where[1]}]: {err}"
                    raise KafkaUnavailable(msg)
            if messages:
                deadline = time.monotonic() + timeout
    finally:
        c.close()
    return {t: [v for p in range(known[t]) for v in got[(t, p)]] for t in topics}


def end_offsets(client: KafkaClientConfig, topic: str, timeout: float = 10.0) -> dict[tuple[str, int], int]:
    """``(topic, partition) -> end offset`` (the offset the next record will get)."""
    return {(topic, p): end for p, (end, _) in _tails(client, topic, timeout).items()}


def last_values(client: KafkaClientConfig, topic: str, timeout: float = 10.0) -> list[bytes]:
    """The newest record's value of every non-empty partition of ``topic``."""
    return [v for _, v in _tails(client, topic, timeout).values() if v is not None]


def create_topics(admin: AdminClient, catalog: TopicCatalog, timeout: float = 15.0) -> list[str]:
    """Create the catalog's topics that do not exist yet; returns the names created.

    A topic that exists with a different partition count is reported, not recreated.
    """
    have = existing_topics(admin, timeout)
    new = [
        NewTopic(spec.name, num_partitions=spec.partitions, replication_factor=1, config=spec.broker_config())
        for spec in catalog.values()
        if spec.name not in have
    ]
    created: list[str] = []
    if new:
        for name, fut in admin.create_topics(new, request_timeout=timeout).items():
            try:
                fut.result(timeout=timeout)
                created.append(name)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    for spec in catalog.values():
        if spec.name in have and have[spec.name] != spec.partitions:
            log.warning(
                "topic has %d partitions, catalog says %d", have[spec.name], spec.partitions, extra={"topic": spec.name}
            )
    return created


def delete_topics(admin: AdminClient, names: Iterable[str], timeout: float = 15.0) -> None:
    names = list(names)
    if not names:
        return
    for fut in admin.delete_topics(names, request_timeout=timeout).values():
        try:
            fut.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise


# --------------------------------------------------------------------------- sink


class OutRecord(NamedTuple):
    topic: str
    key: str
    value: bytes


class _ProducerPartition(StatelessSinkPartition[Any]):
    def __init__(self, conf: dict[str, Any], chunked: bool = False) -> None:
        self._chunked = chunked
        # The first delivery error, kept outside ``self``: a bound method as the callback would
        # make a cycle (partition -> producer -> callback -> partition), so a finished flow's
        # producer - and its librdkafka threads - lived until a full collection, which the
        # tuned collector rarely runs (an optimization leaked 3 threads per backtest).
        errors: list[KafkaError] = []

        def on_delivery(err: KafkaError | None, _msg: object) -> None:
            if err is not None and not errors:
                errors.append(err)

        # Delivery reports only for failures: a Python callback per delivered record would
        # cost about as much as producing it.
        self._producer = Producer({**conf, "on_delivery": on_delivery, "delivery.report.only.error": True})
        self._errors = errors
        self._counters: dict[str, Any] = {}

    @property
    def _error(self) -> KafkaError | None:
        return self._errors[0] if self._errors else None

    def write_batch(self, items: list[Any]) -> None:
        """``items``: OutRecords, or lists of them when ``chunked``."""
        produce = self._producer.produce
        counts: dict[str, int] = {}
        for topic, key, value in itertools.chain.from_iterable(items) if self._chunked else items:
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:  # local queue full: let librdkafka drain, then retry
                    self._producer.poll(0.05)
            counts[topic] = counts.get(topic, 0) + 1
        self._producer.poll(0)
        for topic, n in counts.items():
            c = self._counters.get(topic)
            if c is None:
                c = self._counters[topic] = PRODUCED.labels(topic)
            c.inc(n)
        if self._error is not None:
            msg = f"Kafka delivery failed: {self._error}"
            raise KafkaUnavailable(msg)

    def close(self) -> None:
        remaining = self._producer.flush(30)
        if remaining:
            log.error("%d records not delivered at shutdown", remaining)
        if self._error is not None:
            log.error("Kafka delivery failed: %s", self._error)

    def deliver(self, timeout_s: float) -> None:
        """Wait until the broker has every record handed over so far; raise if it has not."""
        remaining = self._producer.flush(timeout_s)
        if self._error is not None:
            msg = f"Kafka delivery failed: {self._error}"
            raise KafkaUnavailable(msg)
        if remaining:
            msg = f"{remaining} records not acknowledged by the broker within {timeout_s:g} s"
            raise KafkaUnavailable(msg)


class ProducerSink(DynamicSink[Any]):
    """Produces ``OutRecord(topic, key, value)`` items, or with ``chunked`` lists of them (a
    flow whose items are chunks pays Bytewax's per-item cost once per chunk).

    Unlike Bytewax's KafkaSink it does not flush after every batch: batching is left to
    ``linger.ms`` so the broker stores few, large batches (see the module doc). Records
    are flushed on close; a delivery error stops the flow on the next batch.
    """

    def __init__(self, conf: dict[str, Any], *, chunked: bool = False) -> None:
        self._conf, self._chunked = conf, chunked

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(dict(self._conf), self._chunked)


class _DeliveredPartition(StatefulSinkPartition[OutRecord, None]):
    def __init__(self, conf: dict[str, Any]) -> None:
        self._out = _ProducerPartition(conf)

    def write_batch(self, values: list[OutRecord]) -> None:
        self._out.write_batch(values)

    def snapshot(self) -> None:
        self._out.deliver(DELIVERY_TIMEOUT_S)

    def close(self) -> None:
        self._out.close()


class DeliveredProducerSink(FixedPartitionedSink[OutRecord, None]):
    """:class:`ProducerSink` for a flow under Bytewax recovery: takes ``("", OutRecord)`` and,
    when Bytewax snapshots the epoch, waits until the broker has acknowledged everything
    produced so far.

    Without that wait a kill -9 loses the records still queued in the client while the
    snapshot that already holds their effects survives, and the restarted flow believes the
    world saw outputs it never did (an order filled in the state, its final update missing
    from ord.updates). Waiting once per snapshot interval, not after every batch, keeps the
    broker's batches few and large (see the module doc).
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        self._conf = conf

    def list_parts(self) -> list[str]:
        return ["producer"]

    def part_fn(self, item_key: str) -> int:
        return 0

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DeliveredPartition:
        return _DeliveredPartition(dict(self._conf))


# --------------------------------------------------------------------------- source


class Record(NamedTuple):
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


HEARTBEAT = Record("", -1, -1, None, None)  # emitted while idle so time-bounded sinks can flush


class _RecordPartition(StatefulSourcePartition[Record, int]):
    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        tail: bool,
        batch_size: int,
        heartbeat: timedelta | None,
    ) -> None:
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic, self._partition, self._offset = topic, partition, offset
        self._tail, self._batch_size, self._heartbeat = tail, batch_size, heartbeat
        self._eof = False
        self._last_emit = time.monotonic()
        self._counter = CONSUMED.labels(topic)
        self._lag_due = 0.0

    def next_batch(self) -> list[Record]:
        if self._eof or STOP.is_set():
            raise StopIteration
        if self._tail and time.monotonic() >= self._lag_due:
            self._lag_due = time.monotonic() + LAG_EVERY_S
            _report_lag(self._consumer, self._topic, {self._partition: self._offset})
        msgs = self._consumer.consume(self._batch_size, 0.0)
        out: list[Record] = []
        # tuple.__new__ skips the NamedTuple's Python-level constructor (a third of the cost).
        new, topic, partition = tuple.__new__, self._topic, self._partition
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if not self._tail and m.offset() >= self._offset:
                        self._eof = True
                    continue
                msg = f"error consuming {self._topic}[{self._partition}]: {err}"
                raise KafkaUnavailable(msg)
            out.append(new(Record, (topic, partition, m.offset(), m.key(), m.value(), None)))
        if out:
            self._offset = out[-1].offset + 1
            self._counter.inc(len(out))
            self._last_emit = time.monotonic()
        elif self._heartbeat is not None and time.monotonic() - self._last_emit >= self._heartbeat.total_seconds():
            self._last_emit = time.monotonic()
            return [HEARTBEAT]
        return out

    def next_awake(self) -> datetime | None:
        return None if self._eof else datetime.now(UTC) + timedelta(milliseconds=5)

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class _MergeState(NamedTuple):
    offsets: dict[int, int]  # partition -> next offset
    highs: dict[int, int]  # partition -> running maximum of event time at that point


class _MergedPartition(StatefulSourcePartition[Any, _MergeState]):
    """Every partition of one topic, merged into event-time order (see :class:`OrderedSource`).

    Each partition's buffer holds its items in log order with two parallel lists: their merge
    times and their sources (``offset << 16 | partition``, for the resume state). The merge
    time is the partition's running maximum of event time, so every buffer is sorted by it.
    A merge takes each buffer's ready prefix (found by bisection) in partition order and
    sorts the lot stably by merge time alone: ties fall to partition, then offset. Items,
    times and sources stay in parallel lists, never paired in tuples: a tuple per record in
    flight is an object the collector walks (tens of thousands per young collection), while
    ints are not tracked. Merged items wait in ``_merged`` and leave at most ``batch_size``
    per batch, so the size of what the flow processes at once (which bounds live latency)
    does not limit how much is read per fetch (which bounds throughput).
    """

    FETCH_MAX = 5000  # most messages taken from the client per call
    LIVE_POLL_S = 0.002  # live and idle: look for new messages this often
    # Live, a record that has waited BUSY_WAIT_S in the source means the flow is busy (a wave
    # of bar closes, a burst, a restart's catch-up): the next batch takes every record there
    # is, up to CATCHUP_BATCH, so the per-batch costs are paid once for all of them instead of
    # once per ``batch_size`` while the queue grows. While the flow keeps up nothing waits
    # that long and batches stay small, which keeps decisions prompt. A wait of BEHIND_LOG_S
    # is logged (the flow is behind), and so is the return to an empty queue.
    BUSY_WAIT_S = 0.005
    BEHIND_LOG_S = 2.0
    CATCHUP_BATCH = 5000
    _PART_BITS = 16  # a source is offset << 16 | partition
    _PART_MASK = (1 << _PART_BITS) - 1

    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        offsets: dict[int, int],
        parse: Callable[[bytes, int, int], tuple[int, Any]],
        batch_size: int,
        tail: bool,
        idle_s: float,
        highs: dict[int, int],
    ) -> None:
        if offsets and max(offsets) > self._PART_MASK:
            msg = f"{topic}: partition {max(offsets)} is beyond what the merge can track ({self._PART_MASK})"
            raise ValueError(msg)
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])
        self._topic, self._offsets, self._parse, self._batch_size = topic, dict(offsets), parse, batch_size
        self._tail = tail
        self._buffers: dict[int, list[Any]] = {p: [] for p in sorted(offsets)}
        self._buffer_ts: dict[int, list[int]] = {p: [] for p in sorted(offsets)}  # merge times
        self._buffer_src: dict[int, list[int]] = {p: [] for p in sorted(offsets)}  # offset << 16 | partition
        self._merged: list[Any] = []  # merged, in emission order, from _next on
        self._merged_ts: list[int] = []
        self._merged_src: list[int] = []
        self._next = 0
        self._fetched: deque[tuple[int, float]] = deque()  # (end index in _merged, monotonic time merged)
        self._catching_up = False
        self._at_end: set[int] = set()  # caught up: nothing buffered and nothing more in the log (yet)
        self._highs: dict[int, int] = dict(highs)  # partition -> newest event time buffered so far
        self._emitted: dict[int, int] = dict(highs)  # partition -> merge time of the last record emitted
        self._end_since: dict[int, float] = {}  # partition -> monotonic time it caught up
        self._idle_s = idle_s
        self._counter = CONSUMED.labels(topic)
        self._lag_due = 0.0

    def next_batch(self) -> list[Any]:
        if STOP.is_set():
            raise StopIteration
        if self._tail and time.monotonic() >= self._lag_due:
            self._lag_due = time.monotonic() + LAG_EVERY_S
            _report_lag(self._consumer, self._topic, self._offsets)
        merged, first, size = self._merged, self._next, self._batch_size
        left = len(merged) - first
        fetched = self._fetched
        if self._tail and left:
            while fetched[0][0] <= first:  # merges already emitted: the oldest waiting is first
                fetched.popleft()
            waited = time.monotonic() - fetched[0][1]
            if waited >= self.BUSY_WAIT_S:
                size = max(size, self.CATCHUP_BATCH)
                if waited >= self.BEHIND_LOG_S and not self._catching_up:
                    self._catching_up = True
                    log.info("%s: records waited %.1f s: behind, catching up in batches of up to %d",
                             self._topic, waited, size)  # fmt: skip
        if left < size:
            # Live never blocks here (a blocking consume waits for a full FETCH_MAX, stalling
            # the whole worker): next_awake paces the polls. A replay with nothing merged
            # waits a little for the client's next fetch.
            self._fetch(0.0 if self._tail or left else 0.02)
            if not left and self._catching_up:
                self._catching_up = False
                log.info("%s: caught up, batches of %d again", self._topic, self._batch_size)
            left = len(merged) - first
        if not left:
            if not self._tail and len(self._at_end) == len(self._buffers) and not any(self._buffers.values()):
                raise StopIteration
            return []
        end = first + size
        chunk = merged[first:end]
        times = self._merged_ts[first:end]
        sources = self._merged_src[first:end]
        if self._tail:
            while fetched[0][0] <= first:
                fetched.popleft()
            SOURCE_WAIT.observe(time.monotonic() - fetched[0][1])
        if end >= len(merged):
            merged.clear()
            self._merged_ts.clear()
            self._merged_src.clear()
            self._fetched.clear()
            self._next = 0
        else:
            self._next = end
        # Resume state: each partition's last emitted record, found from the end of the batch
        # (the scan stops once every partition is placed, not after every record).
        offsets, emitted, placed, mask, bits = self._offsets, self._emitted, set(), self._PART_MASK, self._PART_BITS
        for i in range(len(sources) - 1, -1, -1):
            p = sources[i] & mask
            if p not in placed:
                placed.add(p)
                offsets[p] = (sources[i] >> bits) + 1
                emitted[p] = times[i]
                if len(placed) == len(offsets):
                    break
        self._counter.inc(len(chunk))
        return chunk

    def _fetch(self, timeout: float) -> None:
        """Read what the client has, parse and buffer it per partition and move every item
        that is safe to emit into ``_merged``."""
        buffers, buffer_ts, buffer_src = self._buffers, self._buffer_ts, self._buffer_src
        parse, at_end, highs, bits = self._parse, self._at_end, self._highs, self._PART_BITS
        messages = self._consumer.consume(self.FETCH_MAX, timeout)
        events = 0  # partition-EOF events among the messages
        for m in messages:
            err, p = m.error(), m.partition()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    events += 1
                    if int(m.offset() or 0) >= self._read_to(p) and p not in at_end:
                        at_end.add(p)
                        self._end_since[p] = time.monotonic()
                    continue
                msg = f"error consuming {self._topic}[{p}]: {err}"
                raise KafkaUnavailable(msg)
            off = m.offset()
            # Merge on the partition's running maximum of event time, so a record older than
            # one before it (a late tick) keeps its place in the log, right after that one.
            ts, item = parse(m.value() or b"", p, off)
            high = highs.get(p)
            if high is not None and ts < high:
                ts = high
            highs[p] = ts
            buffers[p].append(item)
            buffer_ts[p].append(ts)
            buffer_src[p].append(off << bits | p)
            at_end.discard(p)
        if self._tail and len(messages) > events:
            SOURCE_FETCH.observe(len(messages) - events)
        # Every record not newer than the newest record seen on each partition that may still
        # deliver something is safe to emit: whatever that partition delivers next is at least
        # that new. A partition at its end bounds nothing in a replay (it is finished); live it
        # bounds with the newest time it had until it has been idle for ``idle_s``, so live
        # processing follows event time like a replay does, and a replay after a crash sees
        # the order the crashed run saw. Within the batch: (time, partition, offset).
        bound = None
        now = time.monotonic() if self._tail else 0.0
        for p, tss in buffer_ts.items():
            if tss:
                last = tss[-1]
            elif p not in at_end:
                return
            elif not self._tail or p not in highs or now - self._end_since[p] >= self._idle_s:
                continue
            else:
                last = highs[p]
            if bound is None or last < bound:
                bound = last
        ready: list[Any] = []
        ready_ts: list[int] = []
        ready_src: list[int] = []
        for p, tss in buffer_ts.items():
            if not tss:
                continue
            cut = len(tss) if bound is None or tss[-1] <= bound else bisect_right(tss, bound)
            if cut:
                buf, src = buffers[p], buffer_src[p]
                ready += buf[:cut]
                ready_ts += tss[:cut]
                ready_src += src[:cut]
                del buf[:cut], tss[:cut], src[:cut]
        if ready:
            # Stable: equal times stay in (partition, offset) order. Positions are plain ints,
            # which the collector does not track.
            order = sorted(range(len(ready_ts)), key=ready_ts.__getitem__)
            self._merged += [ready[i] for i in order]
            self._merged_ts += [ready_ts[i] for i in order]
            self._merged_src += [ready_src[i] for i in order]
            self._fetched.append((len(self._merged), time.monotonic()))

    def _read_to(self, p: int) -> int:
        """The offset after the last record of partition ``p`` read so far (emitted or not)."""
        src = self._buffer_src[p]
        if src:
            return (src[-1] >> self._PART_BITS) + 1
        merged, mask = self._merged_src, self._PART_MASK
        for i in range(len(merged) - 1, self._next - 1, -1):
            if merged[i] & mask == p:
                return (merged[i] >> self._PART_BITS) + 1
        return self._offsets[p]

    def next_awake(self) -> datetime | None:
        if len(self._merged) > self._next or not self._tail:
            return None  # more to emit (or a replay, whose fetch waits in the client): at once
        return datetime.now(UTC) + timedelta(seconds=self.LIVE_POLL_S)

    def snapshot(self) -> _MergeState:
        # The running maximum goes with the offsets, so a late record right after the resume
        # point is placed as it was the first time.
        return _MergeState(dict(self._offsets), dict(self._emitted))

    def close(self) -> None:
        self._consumer.close()


class OrderedSource(FixedPartitionedSource[Any, _MergeState]):
    """One topic in event-time order, across all its partitions (one Bytewax partition).

    Independent partitions are read at independent speeds, so a plain consumer interleaves
    instruments by fetch timing - minutes apart when a backlog is read unpaced (a replay, the
    catch-up after a restart). This source merges the partitions by event time (ties by
    partition, then offset; a record older than one before it in its partition - a late
    tick - keeps its place in the log, so it is still late downstream) and only emits a
    record once every partition has shown one at least as new, so the flow sees the market
    in the order it happened and a replay gives the same order on every run. Live
    (``tail=True``) a caught-up partition holds the others back to its newest time for at
    most ``idle_s`` of wall time (then it is taken as idle), which keeps live processing in
    event-time order too - the order a replay after a crash reproduces. ``tail=False`` ends
    at the end of every partition. The resume state is the next offset and the running
    maximum of each partition, of what has been emitted.

    A batch holds at most ``batch_size`` records, whatever a fetch brought: small live batches
    keep decisions prompt. Live, once a record has waited a few milliseconds in the source
    (the flow is busy or behind), a batch takes every record there is, up to 5000 (or
    ``batch_size`` if larger), until the queue is empty again.

    ``parse(value, partition, offset)`` gives a record's event time and the item the source
    emits for it (for the market input: ``(instrument, tick)``, or a rejection saying why the
    record cannot be one). The merge needs every record's time, so the record is decoded
    here, once, and the flow gets its items without a :class:`Record` or a decode step
    between (measured on the source alone: 5.3 -> 4.6 µs of CPU per record).
    """

    def __init__(
        self,
        client: KafkaClientConfig,
        topic: str,
        parse: Callable[[bytes, int, int], tuple[int, Any]],
        *,
        start: Mapping[tuple[str, int], int] | None = None,
        tail: bool = False,
        batch_size: int = 5000,
        idle_s: float = 0.05,
    ) -> None:
        self._client, self._topic, self._parse, self._tail = client, topic, parse, tail
        self._start, self._batch_size, self._idle_s = dict(start or {}), batch_size, idle_s

    def list_parts(self) -> list[str]:
        if self._topic not in existing_topics(self._client.admin()):
            msg = f"topic does not exist: {self._topic} (run `ticktape topics create`)"
            raise KafkaUnavailable(msg)
        return [f"merged@{self._topic}"]

    def build_part(self, step_id: str, for_part: str, resume_state: _MergeState | None) -> _MergedPartition:
        n = existing_topics(self._client.admin())[self._topic]
        if resume_state is None:
            resume_state = _MergeState({p: self._start.get((self._topic, p), 0) for p in range(n)}, {})
        return _MergedPartition(
            self._client.consumer(),
            self._topic,
            resume_state.offsets,
            self._parse,
            self._batch_size,
            self._tail,
            self._idle_s,
            resume_state.highs,
        )


class RecordSource(FixedPartitionedSource[Record, int]):
    """Every partition of ``topics``, from explicit start offsets (default 0).

    ``tail=False`` ends each partition at its end (partition-EOF), for bounded replays.
    """

    def __init__(
        self,
        client: KafkaClientConfig,
        topics: list[str],
        *,
        start: Mapping[tuple[str, int], int] | None = None,
        tail: bool = True,
        batch_size: int = 5000,
        heartbeat: timedelta | None = None,
    ) -> None:
        self._client, self._topics, self._start = client, topics, dict(start or {})
        self._tail, self._batch_size, self._heartbeat = tail, batch_size, heartbeat

    def list_parts(self) -> list[str]:
        have = existing_topics(self._client.admin())
        missing = [t for t in self._topics if t not in have]
        if missing:
            msg = f"topics do not exist: {', '.join(missing)} (run `ticktape topics create`)"
            raise KafkaUnavailable(msg)
        return [f"{p}@{t}" for t in self._topics for p in range(have[t])]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RecordPartition:
        p, topic = for_part.split("@", 1)
        offset = resume_state if resume_state is not None else self._start.get((topic, int(p)), 0)
        return _RecordPartition(
            self._client.consumer(), topic, int(p), offset, self._tail, self._batch_size, self._heartbeat
        )
