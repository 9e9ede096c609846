"""Idempotent, exactly-once COPY sinks for market data.

Rows are buffered and written in one transaction per batch (size- or time-bounded):
COPY into a temporary staging table, ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` into
the target, and the consumed Kafka offsets upserted into ``kafka_offsets`` - all or nothing.
A replayed batch therefore changes nothing, and a restart resumes after the last commit.
When PostgreSQL is down the sink blocks and retries with backoff, keeping its buffer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime

import psycopg
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge

from connectors.kafka import HEARTBEAT, Record
from connectors.postgres import connect
from schemas.codec import DecodeError, codec_for
from schemas.market import DepthSnapshot, Tick

log = logging.getLogger("ticktape.persist")

ROWS = Counter("ticktape_persist_rows_total", "Rows written to PostgreSQL", ["table"])
LAG = Gauge("ticktape_persist_lag_seconds", "Event time of the newest persisted tick behind wall clock")
FAILURES = Counter("ticktape_persist_failures_total", "Batch commits that failed and were retried")
SKIPPED = Counter("ticktape_persist_skipped_total", "Records not persisted, by reason", ["reason"])

_TICK_STAGE = """CREATE TEMP TABLE IF NOT EXISTS stage_ticks (
    time timestamptz, symbol text, seq bigint, price float8, quantity int, volume bigint, oi bigint,
    bid float8, ask float8, bid_qty int, ask_qty int) ON COMMIT DELETE ROWS"""
_TICK_MERGE = """INSERT INTO tick_data (time, instrument_id, seq, price, quantity, volume, oi, bid, ask,
    bid_qty, ask_qty, exchange)
SELECT s.time, i.id, s.seq, s.price, s.quantity, s.volume, s.oi, s.bid, s.ask, s.bid_qty, s.ask_qty, i.exchange
FROM stage_ticks s JOIN instruments i ON i.symbol = s.symbol
ON CONFLICT DO NOTHING"""
_DEPTH_STAGE = """CREATE TEMP TABLE IF NOT EXISTS stage_depth (
    time timestamptz, symbol text, bid_prices float8[], bid_quantities int[], bid_orders int[],
    ask_prices float8[], ask_quantities int[], ask_orders int[], total_bid bigint, total_ask bigint)
    ON COMMIT DELETE ROWS"""
_DEPTH_MERGE = """INSERT INTO order_book_snapshots (time, instrument_id, bid_prices, bid_quantities, bid_orders,
    ask_prices, ask_quantities, ask_orders, total_bid_quantity, total_ask_quantity)
SELECT s.time, i.id, s.bid_prices, s.bid_quantities, s.bid_orders, s.ask_prices, s.ask_quantities, s.ask_orders,
       s.total_bid, s.total_ask
FROM stage_depth s JOIN instruments i ON i.symbol = s.symbol
ON CONFLICT DO NOTHING"""
_UNKNOWN = "SELECT DISTINCT s.symbol FROM {stage} s LEFT JOIN instruments i ON i.symbol = s.symbol WHERE i.id IS NULL"
_OFFSETS = """INSERT INTO kafka_offsets (consumer, topic, partition, cluster_id, next_offset, updated_at)
VALUES (%s, %s, %s, %s, %s, NOW())
ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = GREATEST(kafka_offsets.next_offset, EXCLUDED.next_offset),
    cluster_id = EXCLUDED.cluster_id, updated_at = NOW()"""


def _ts(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC)


def stored_offsets(url: str, consumer: str, cluster_id: str) -> dict[tuple[str, int], int]:
    """Offsets committed with the rows, if they belong to this broker incarnation."""
    with connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT topic, partition, next_offset FROM kafka_offsets WHERE consumer = %s AND cluster_id = %s",
            (consumer, cluster_id),
        ).fetchall()
    return {(t, p): o for t, p, o in rows}


class _MarketDataPartition(StatelessSinkPartition[Record]):
    def __init__(
        self, url: str, consumer: str, cluster_id: str, ticks_topic: str, depth_topic: str, max_rows: int, max_age_s: float
    ) -> None:
        self._url, self._consumer, self._cluster = url, consumer, cluster_id
        self._ticks_topic, self._depth_topic = ticks_topic, depth_topic
        self._max_rows, self._max_age = max_rows, max_age_s
        self._tick_codec, self._depth_codec = codec_for(Tick), codec_for(DepthSnapshot)
        self._ticks: list[tuple] = []
        self._depth: list[tuple] = []
        self._offsets: dict[tuple[str, int], int] = {}
        self._oldest: float | None = None
        self._newest_ns = 0
        self._conn: psycopg.Connection | None = None

    def write_batch(self, items: list[Record]) -> None:
        for rec in items:
            if rec is HEARTBEAT or rec.partition < 0:
                continue
            self._add(rec)
        if self._oldest is not None and (
            len(self._ticks) + len(self._depth) >= self._max_rows or time.monotonic() - self._oldest >= self._max_age
        ):
            self.flush()

    def _add(self, rec: Record) -> None:
        key = (rec.topic, rec.partition)
        self._offsets[key] = max(self._offsets.get(key, 0), rec.offset + 1)
        if self._oldest is None:
            self._oldest = time.monotonic()
        try:
            if rec.topic == self._ticks_topic:
                t = self._tick_codec.decode(rec.value or b"", topic=rec.topic, partition=rec.partition, offset=rec.offset)
                self._ticks.append(
                    (
                        _ts(t.ts_event),
                        t.instrument,
                        t.seq,
                        t.ltp,
                        t.last_qty,
                        t.volume,
                        t.oi,
                        t.bid,
                        t.ask,
                        t.bid_qty,
                        t.ask_qty,
                    )
                )
                self._newest_ns = max(self._newest_ns, t.ts_event)
            else:
                d = self._depth_codec.decode(rec.value or b"", topic=rec.topic, partition=rec.partition, offset=rec.offset)
                self._depth.append(
                    (
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
                )
        except DecodeError as exc:
            # Ingest validated every record; a bad one here is a bug upstream. Counted and
            # logged with its coordinates; the record stays in the topic for inspection.
            SKIPPED.labels("decode_error").inc()
            log.error("%s", exc, extra={"topic": rec.topic})

    def flush(self) -> None:
        if self._oldest is None:
            return
        delay = 0.2
        while True:
            try:
                self._commit()
                break
            except psycopg.OperationalError as exc:  # connection lost, server restarting, ...
                FAILURES.inc()
                log.warning(
                    "PostgreSQL unavailable (%s); retrying batch of %d rows in %.1fs",
                    str(exc).strip().splitlines()[0] if str(exc) else type(exc).__name__,
                    len(self._ticks) + len(self._depth),
                    delay,
                )
                self._close_conn()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        ROWS.labels("tick_data").inc(len(self._ticks))
        ROWS.labels("order_book_snapshots").inc(len(self._depth))
        if self._newest_ns:
            LAG.set(max(0.0, time.time() - self._newest_ns / 1e9))
        self._ticks, self._depth, self._offsets, self._oldest = [], [], {}, None

    def _commit(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url)
            self._conn.execute(_TICK_STAGE)
            self._conn.execute(_DEPTH_STAGE)
            self._conn.commit()
        conn = self._conn
        with conn.transaction():
            for stage, rows, merge in (
                ("stage_ticks", self._ticks, _TICK_MERGE),
                ("stage_depth", self._depth, _DEPTH_MERGE),
            ):
                if not rows:
                    continue
                with conn.cursor().copy(f"COPY {stage} FROM STDIN") as cp:  # type: ignore[arg-type]
                    for row in rows:
                        cp.write_row(row)
                self._report_unknown(conn, stage)
                conn.execute(merge)
            conn.cursor().executemany(
                _OFFSETS, [(self._consumer, t, p, self._cluster, o) for (t, p), o in self._offsets.items()]
            )

    @staticmethod
    def _report_unknown(conn: psycopg.Connection, stage: str) -> None:
        rows = conn.execute(_UNKNOWN.format(stage=stage)).fetchall()  # type: ignore[arg-type]
        for (symbol,) in rows:
            SKIPPED.labels("unknown_instrument").inc()
            log.error("instrument missing from the instruments table; its rows are not stored", extra={"instrument": symbol})

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        self.flush()
        self._close_conn()


class MarketDataSink(DynamicSink[Record]):
    """Writes ``md.ticks`` and ``md.depth`` records to ``tick_data`` / ``order_book_snapshots``."""

    def __init__(
        self,
        url: str,
        *,
        consumer: str,
        cluster_id: str,
        ticks_topic: str,
        depth_topic: str,
        max_rows: int = 20_000,
        max_age_s: float = 0.5,
    ) -> None:
        self._args = (url, consumer, cluster_id, ticks_topic, depth_topic, max_rows, max_age_s)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MarketDataPartition:
        return _MarketDataPartition(*self._args)
