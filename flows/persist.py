"""Persistence flow: market data (ticks, depth, closed candles) and the trading record (orders,
order history, fills, positions, risk events, control commands) into PostgreSQL, exactly once.

    python -m bytewax.run flows.persist

Offsets are committed in PostgreSQL with the rows (see connectors.postgres.sinks), so the
flow resumes after the last committed batch without Bytewax recovery, and a batch that is
replayed changes nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.kafka import KafkaClientConfig, RecordSource, cluster_id
from connectors.postgres.sinks import MARKET_TABLES, CopySink, stored_offsets
from connectors.postgres.trading import TRADING_TABLES
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.persist")
CONSUMER = "persist"


def build(
    client: KafkaClientConfig,
    catalog: TopicCatalog,
    database_url: str,
    *,
    tail: bool = True,
    max_rows: int = 20_000,
    max_age_s: float = 0.5,
    consumer: str = CONSUMER,
) -> Dataflow:
    tables = {catalog.name(base): spec for base, spec in (MARKET_TABLES | TRADING_TABLES).items()}
    cid = cluster_id(client.admin())
    start = stored_offsets(database_url, consumer, cid)
    if start:
        log.info("resuming from committed offsets", extra={"partitions": len(start)})
    flow = Dataflow("persist")
    source = RecordSource(client, list(tables), start=start, tail=tail, heartbeat=timedelta(seconds=max_age_s))
    records = op.input("md", flow, source)
    sink: Any = CopySink(
        database_url,
        consumer=consumer,
        cluster_id=cid,
        tables=tables,
        dlq_topic=catalog.name("md.dlq"),
        producer_conf=client.producer(),
        max_rows=max_rows,
        max_age_s=max_age_s,
    )
    op.output("postgres", records, sink)
    return flow


def _flow_from_env() -> Dataflow:
    from flows.runtime import flow_context

    ctx = flow_context("persist")
    s = ctx.settings
    return build(
        ctx.kafka,
        ctx.catalog,
        ctx.endpoints.database_url,
        max_rows=s.persist_batch_rows,
        max_age_s=s.persist_batch_ms / 1000,
    )


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return _flow_from_env()
    raise AttributeError(name)
