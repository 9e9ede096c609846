"""Live analytics flow: ``md.ticks`` into candles, indicators, patterns and OI analytics.

    python -m bytewax.run flows.live

Reads md.ticks from the start of the retained topic (so indicators are warm after a restart;
candles re-emitted for bars already stored change nothing downstream, every sink upserts),
runs the shared pipeline (flows.pipeline) with a live clock - bars of instruments that stop
ticking close at bar end + ``TICKTAPE_CANDLE_GRACE_MS`` - and publishes to md.candles,
md.analytics and md.dlq (late ticks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.kafka import KafkaClientConfig, ProducerSink, RecordSource
from flows.pipeline import MarketClock, PipelineConfig, build_market
from operators.analytics import AnalyticsConfig
from schemas.market import Instrument
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.live")


def analytics_config(settings: Any) -> AnalyticsConfig:
    tfs = tuple(t.strip() for t in settings.candle_timeframes.split(",") if t.strip())
    return AnalyticsConfig(
        timeframes=tfs,
        indicators=tuple(x.strip() for x in settings.indicators.split(";") if x.strip()),
        publish_timeframes=tuple(t for t in ("1m", "5m", "15m", "1h", "1d") if t in tfs),
        partial_every_ns=settings.candle_partial_ms * 1_000_000 if "1m" in tfs else 0,
        partial_timeframes=("1m",) if "1m" in tfs else (),
    )


def build(
    client: KafkaClientConfig,
    catalog: TopicCatalog,
    universe: Iterable[Instrument],
    cfg: PipelineConfig,
    *,
    tail: bool = True,
    start: dict[tuple[str, int], int] | None = None,
) -> Dataflow:
    flow = Dataflow("live")
    ticks = op.input("md", flow, RecordSource(client, [catalog.name("md.ticks")], start=start or {}, tail=tail))
    streams = build_market(ticks, universe, catalog, cfg)
    op.output("publish", streams.records, ProducerSink(client.producer()))
    return flow


def _flow_from_env() -> Dataflow:
    from connectors.postgres import connect
    from connectors.postgres.instruments import load_instruments
    from flows.runtime import flow_context

    ctx = flow_context("live")
    with connect(ctx.endpoints.database_url, autocommit=True) as conn:
        universe = load_instruments(conn)
    cfg = PipelineConfig(
        analytics=analytics_config(ctx.settings),
        clock=MarketClock(timedelta(milliseconds=ctx.settings.candle_grace_ms)),
    )
    log.info("analytics for %d instruments, timeframes %s", len(universe), ",".join(cfg.analytics.timeframes))
    return build(ctx.kafka, ctx.catalog, universe, cfg)


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return _flow_from_env()
    raise AttributeError(name)
