"""Kafka I/O: client settings per broker profile, admin, a batching producer sink and a
record source with explicit offsets.

The embedded broker (Tansu) has known gaps (research/tansu-compat.md): end offsets from
ListOffsets are wrong, OFFSET_END replays old data, and fetches stall once a partition
holds too many batches for ``fetch.wait.max.ms``. So this module never uses OFFSET_END or
watermarks for correctness; it starts from explicit offsets, detects the end of a
partition by partition-EOF events, and sizes producer batching for a whole session.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Counter

from connectors.settings import (
    KAFKA_FETCH_WAIT_MS,
    KAFKA_LINGER_MS,
    TANSU_FETCH_WAIT_MS,
    TANSU_LINGER_MS,
    Settings,
)
from connectors.shutdown import STOP
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.kafka")

PRODUCED = Counter("ticktape_kafka_produced_total", "Records handed to the Kafka producer", ["topic"])
CONSUMED = Counter("ticktape_kafka_consumed_total", "Records read from Kafka", ["topic"])


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
            "group.id": "ticktape-assign-only",  # required by librdkafka; we assign() and never commit
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": TANSU_FETCH_WAIT_MS if self.tansu else KAFKA_FETCH_WAIT_MS,
            "isolation.level": "read_uncommitted",
            "enable.partition.eof": True,
        }
        conf.update(overrides)
        return conf

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.bootstrap})


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


class _ProducerPartition(StatelessSinkPartition[OutRecord]):
    def __init__(self, conf: dict[str, Any]) -> None:
        # Delivery reports only for failures: a Python callback per delivered record would
        # cost about as much as producing it.
        self._producer = Producer({**conf, "on_delivery": self._on_delivery, "delivery.report.only.error": True})
        self._error: KafkaError | None = None
        self._counters: dict[str, Any] = {}

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is not None and self._error is None:
            self._error = err

    def write_batch(self, items: list[OutRecord]) -> None:
        produce = self._producer.produce
        counts: dict[str, int] = {}
        for topic, key, value in items:
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


class ProducerSink(DynamicSink[OutRecord]):
    """Produces ``OutRecord(topic, key, value)`` items.

    Unlike Bytewax's KafkaSink it does not flush after every batch: batching is left to
    ``linger.ms`` so the broker stores few, large batches (see the module doc). Records
    are flushed on close; a delivery error stops the flow on the next batch.
    """

    def __init__(self, conf: dict[str, Any]) -> None:
        self._conf = conf

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(dict(self._conf))


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

    def next_batch(self) -> list[Record]:
        if self._eof or STOP.is_set():
            raise StopIteration
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
            out.append(new(Record, (topic, partition, m.offset(), m.key(), m.value())))
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
