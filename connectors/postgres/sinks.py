"""Idempotent, exactly-once COPY sinks: topics into tables, offsets committed with the rows.

Each topic has a :class:`TableSpec`: how to turn its event into a staged row and how to
merge the stage into the target. Rows are buffered and written in one transaction per batch
(size- or time-bounded): COPY into temporary staging tables, ``INSERT ... SELECT ... ON
CONFLICT DO NOTHING`` into the targets (natural keys), and the consumed Kafka offsets upserted
into ``kafka_offsets`` - all or nothing. A replayed batch therefore changes nothing, and a
restart resumes after the last commit. When PostgreSQL is down the sink blocks and retries
with backoff, keeping its buffer.

Nothing is dropped silently: a record that does not decode, or whose instrument is missing
from ``instruments``, is published to the dead-letter topic with its payload and a reason
before the batch commits.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer
from prometheus_client import Counter, Gauge

from connectors.kafka import HEARTBEAT, Record
from connectors.postgres import connect
from schemas.codec import DecodeError, codec_for, encode
from schemas.market import Candle, DepthSnapshot, RejectReason, Tick, rejected

log = logging.getLogger("ticktape.persist")

ROWS = Counter("ticktape_persist_rows_total", "Rows staged and merged into PostgreSQL", ["table"])
LAG = Gauge("ticktape_persist_lag_seconds", "Wall clock minus event time of the newest persisted row", ["table"])
FAILURES = Counter("ticktape_persist_failures_total", "Batch commits that failed and were retried")
REJECTED = Counter("ticktape_persist_rejected_total", "Records sent to the dead-letter topic", ["reason"])
BATCH_SECONDS = Gauge("ticktape_persist_last_batch_seconds", "Duration of the last committed batch")


def _ts(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


@dataclass(frozen=True)
class TableSpec:
    """How one topic's events land in one table (via a staging table keyed by symbol)."""

    table: str
    value_type: Any
    # Column definitions of stage_<table>; the second column is `symbol text`. The sink appends
    # `stage_seq bigint` (stream order), so merges can keep the newest of same-key rows.
    stage_columns: str
    merge_sql: str  # INSERT INTO <table> ... SELECT ... FROM stage_<table> s JOIN instruments i ...
    row: Callable[[Any], tuple[Any, ...] | None]  # event -> (time, symbol, ...) or None to skip it
    # False when the symbol column may name no instrument (risk events, control commands):
    # rows are then not checked against the instruments table.
    has_instrument: bool = True

    @property
    def stage(self) -> str:
        return f"stage_{self.table}"


def _tick_row(t: Tick) -> tuple[Any, ...]:
    return (_ts(t.ts_event), t.instrument, t.seq, t.ltp, t.last_qty, t.volume, t.oi, t.bid, t.ask, t.bid_qty, t.ask_qty)


def _depth_row(d: DepthSnapshot) -> tuple[Any, ...]:
    return (
        _ts(d.ts_event),
        d.instrument,
        [lv.price for lv in d.bids],
        [lv.qty for lv in d.bids],
        [lv.orders for lv in d.bids],
        [lv.price for lv in d.asks],
        [lv.qty for lv in d.asks],
        [lv.orders for lv in d.asks],
        d.total_bid_qty,
        d.total_ask_qty,
    )


def _candle_row(c: Candle) -> tuple[Any, ...] | None:
    if not c.final:  # in-progress updates are for the UI; the table holds closed bars
        return None
    return (
        _ts(c.open_time),
        c.instrument,
        c.timeframe,
        c.open,
        c.high,
        c.low,
        c.close,
        c.volume,
        c.trade_count,
        c.vwap,
        c.oi,
    )


TICKS = TableSpec(
    table="tick_data",
    value_type=Tick,
    stage_columns="time timestamptz, symbol text, seq bigint, price float8, quantity int, volume bigint, oi bigint, "
    "bid float8, ask float8, bid_qty int, ask_qty int",
    merge_sql="""INSERT INTO tick_data (time, instrument_id, seq, price, quantity, volume, oi, bid, ask, bid_qty,
    ask_qty, exchange)
SELECT s.time, i.id, s.seq, s.price, s.quantity, s.volume, s.oi, s.bid, s.ask, s.bid_qty, s.ask_qty, i.exchange
FROM stage_tick_data s JOIN instruments i ON i.symbol = s.symbol
ON CONFLICT DO NOTHING""",
    row=_tick_row,
)

DEPTH = TableSpec(
    table="order_book_snapshots",
    value_type=DepthSnapshot,
    stage_columns="time timestamptz, symbol text, bid_prices float8[], bid_quantities int[], bid_orders int[], "
    "ask_prices float8[], ask_quantities int[], ask_orders int[], total_bid bigint, total_ask bigint",
    merge_sql="""INSERT INTO order_book_snapshots (time, instrument_id, bid_prices, bid_quantities, bid_orders,
    ask_prices, ask_quantities, ask_orders, total_bid_quantity, total_ask_quantity)
SELECT s.time, i.id, s.bid_prices, s.bid_quantities, s.bid_orders, s.ask_prices, s.ask_quantities, s.ask_orders,
       s.total_bid, s.total_ask
FROM stage_order_book_snapshots s JOIN instruments i ON i.symbol = s.symbol
ON CONFLICT DO NOTHING""",
    row=_depth_row,
)

CANDLES = TableSpec(
    table="ohlc_candles",
    value_type=Candle,
    stage_columns="time timestamptz, symbol text, timeframe text, open float8, high float8, low float8, close float8, "
    "volume bigint, trade_count int, vwap float8, oi bigint",
    merge_sql="""INSERT INTO ohlc_candles (time, instrument_id, timeframe, open_price, high_price, low_price,
    close_price, volume, trade_count, vwap, oi)
SELECT s.time, i.id, s.timeframe, s.open, s.high, s.low, s.close, s.volume, s.trade_count, s.vwap, s.oi
FROM stage_ohlc_candles s JOIN instruments i ON i.symbol = s.symbol
ON CONFLICT DO NOTHING""",
    row=_candle_row,
)

# Topic (base name) -> table, for the market-data part of flows.persist.
MARKET_TABLES: dict[str, TableSpec] = {"md.ticks": TICKS, "md.depth": DEPTH, "md.candles": CANDLES}

_UNKNOWN = "SELECT DISTINCT s.symbol FROM {stage} s LEFT JOIN instruments i ON i.symbol = s.symbol WHERE i.id IS NULL"
_OFFSETS = """INSERT INTO kafka_offsets (consumer, topic, partition, cluster_id, next_offset, updated_at)
VALUES (%s, %s, %s, %s, %s, NOW())
ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = CASE WHEN kafka_offsets.cluster_id = EXCLUDED.cluster_id
                       THEN GREATEST(kafka_offsets.next_offset, EXCLUDED.next_offset)
                       ELSE EXCLUDED.next_offset END,  -- a new broker incarnation starts again at 0
    cluster_id = EXCLUDED.cluster_id, updated_at = NOW()"""


def stored_offsets(url: str, consumer: str, cluster_id: str) -> dict[tuple[str, int], int]:
    """Offsets committed with the rows, if they belong to this broker incarnation."""
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT topic, partition, next_offset FROM kafka_offsets WHERE consumer = %s AND cluster_id = %s",
            (consumer, cluster_id),
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


class _Buffer:
    """Rows of one table waiting for the next commit, with their source records for the DLQ."""

    __slots__ = ("newest_ns", "raws", "rows", "spec")

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.rows: list[tuple[Any, ...]] = []
        self.raws: list[bytes] = []
        self.newest_ns = 0


class _CopyPartition(StatelessSinkPartition[Record]):
    def __init__(
        self,
        url: str,
        consumer: str,
        cluster_id: str,
        tables: Mapping[str, TableSpec],
        dlq_topic: str,
        producer_conf: dict[str, Any],
        max_rows: int,
        max_age_s: float,
    ) -> None:
        self._url, self._consumer, self._cluster = url, consumer, cluster_id
        self._buffers = {topic: _Buffer(spec) for topic, spec in tables.items()}
        self._codecs = {topic: codec_for(spec.value_type) for topic, spec in tables.items()}
        self._dlq_topic = dlq_topic
        self._producer_conf = producer_conf
        self._producer: Producer | None = None
        self._max_rows, self._max_age = max_rows, max_age_s
        self._offsets: dict[tuple[str, int], int] = {}
        self._unknown_sent: set[tuple[str, str]] = set()  # (topic, symbol) dead-lettered in this batch
        self._pending = 0
        self._seq = 0  # appended to every staged row: merges order same-key rows by stream order
        self._oldest: float | None = None
        self._conn: psycopg.Connection | None = None

    # -------------------------------------------------------------- buffering

    def write_batch(self, items: list[Record]) -> None:
        for rec in items:
            if rec is HEARTBEAT or rec.partition < 0:
                continue
            self._add(rec)
        if self._oldest is not None and (
            self._pending >= self._max_rows or time.monotonic() - self._oldest >= self._max_age
        ):
            self.flush()

    def _add(self, rec: Record) -> None:
        key = (rec.topic, rec.partition)
        self._offsets[key] = max(self._offsets.get(key, 0), rec.offset + 1)
        if self._oldest is None:
            self._oldest = time.monotonic()
        buf = self._buffers[rec.topic]
        value = rec.value or b""
        try:
            ev = self._codecs[rec.topic].decode(value, topic=rec.topic, partition=rec.partition, offset=rec.offset)
        except DecodeError as exc:
            # Ingest validated every record, so this is a bug upstream: keep the evidence.
            log.error("%s", exc, extra={"topic": rec.topic})
            self._dead_letter(rec.topic, None, RejectReason.MALFORMED, str(exc), value)
            return
        row = buf.spec.row(ev)
        if row is None:
            return
        self._seq += 1
        buf.rows.append((*row, self._seq))
        buf.raws.append(value)
        self._pending += 1
        ts = getattr(ev, "ts_event", 0)
        buf.newest_ns = max(buf.newest_ns, ts)

    def _dead_letter(self, topic: str, instrument: str | None, reason: RejectReason, detail: str, value: bytes) -> None:
        if self._producer is None:
            self._producer = Producer(self._producer_conf)
        ev = rejected(topic, instrument, reason, detail, value, time.time_ns())
        self._producer.produce(self._dlq_topic, encode(ev), instrument or "")
        REJECTED.labels(reason.value).inc()

    # -------------------------------------------------------------- committing

    def flush(self) -> None:
        if self._oldest is None:
            return
        delay = 0.2
        t0 = time.perf_counter()
        while True:
            try:
                self._commit()
                break
            except psycopg.OperationalError as exc:  # connection lost, server restarting, ...
                FAILURES.inc()
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("PostgreSQL unavailable (%s); retrying batch of %d rows in %.1fs", first, self._pending, delay)
                self._close_conn()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        BATCH_SECONDS.set(time.perf_counter() - t0)
        now = time.time()
        for buf in self._buffers.values():
            if buf.rows:
                ROWS.labels(buf.spec.table).inc(len(buf.rows))
                LAG.labels(buf.spec.table).set(max(0.0, now - buf.newest_ns / 1e9))
            buf.rows, buf.raws = [], []
        self._offsets, self._oldest, self._pending = {}, None, 0
        self._unknown_sent.clear()

    def _commit(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url)
            for buf in self._buffers.values():
                self._conn.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS {buf.spec.stage} ({buf.spec.stage_columns}, stage_seq bigint) "
                    "ON COMMIT DELETE ROWS"
                )
            self._conn.commit()
        conn = self._conn
        with conn.transaction():
            for topic, buf in self._buffers.items():
                if not buf.rows:
                    continue
                with conn.cursor().copy(f"COPY {buf.spec.stage} FROM STDIN") as cp:  # type: ignore[arg-type]
                    for row in buf.rows:
                        cp.write_row(row)
                self._reject_unknown(conn, topic, buf)
                conn.execute(buf.spec.merge_sql)  # type: ignore[arg-type]
            conn.cursor().executemany(
                _OFFSETS, [(self._consumer, t, p, self._cluster, o) for (t, p), o in self._offsets.items()]
            )
            # Dead letters must be durable before the offsets that skip their records commit.
            if self._producer is not None and self._producer.flush(30):
                msg = "dead-letter records were not delivered"
                raise psycopg.OperationalError(msg)

    def _reject_unknown(self, conn: psycopg.Connection, topic: str, buf: _Buffer) -> None:
        if not buf.spec.has_instrument:
            return
        found = {r[0] for r in conn.execute(_UNKNOWN.format(stage=buf.spec.stage)).fetchall()}  # type: ignore[arg-type]
        missing = {sym for sym in found if (topic, sym) not in self._unknown_sent}  # not again on a retried commit
        if not missing:
            return
        self._unknown_sent.update((topic, sym) for sym in missing)
        log.error("instruments missing from the instruments table: %s", ", ".join(sorted(missing)))
        for row, raw in zip(buf.rows, buf.raws, strict=True):
            if row[1] in missing:
                self._dead_letter(
                    topic,
                    row[1],
                    RejectReason.UNKNOWN_INSTRUMENT,
                    f"instrument {row[1]!r} is not in the instruments table",
                    raw,
                )

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self.flush()
        self._close_conn()
        if self._producer is not None:
            self._producer.flush(30)


class CopySink(DynamicSink[Record]):
    """Writes records of the given topics to their tables, exactly once (see the module doc).

    ``tables`` maps full topic names to :class:`TableSpec`. Run it on one worker: the
    offsets it commits are per topic partition.
    """

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        cluster_id: str,
        tables: Mapping[str, TableSpec],
        dlq_topic: str,
        producer_conf: dict[str, Any],
        max_rows: int = 20_000,
        max_age_s: float = 0.5,
    ) -> None:
        self._args = (url, consumer, cluster_id, dict(tables), dlq_topic, producer_conf, max_rows, max_age_s)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CopyPartition:
        return _CopyPartition(*self._args)
