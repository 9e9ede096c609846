"""Ticks topic → candles (7 timeframes) → 10 indicators per timeframe → candles topic (issue 3).

One Bytewax process replays a filled md.ticks (500 instruments, unpaced simulator) through
the shared pipeline builder in replay mode and publishes to md.candles / md.analytics on the
embedded broker. Two configurations are measured:

* ``spec``: exactly the chain of the issue - candles of 1s,5s,1m,5m,15m,1h,1d and the ten
  default indicators on every timeframe; no patterns, OI, option chains or market summary;
* ``full``: the live default - also candlestick patterns, OI buildup, option chains and
  market summaries.

The baseline, measured in the same run, is the I/O floor: the same topic read, decoded,
re-encoded and produced with no analytics. Figures are ticks/s from flow start to end of
input (Bytewax start-up and per-instrument state creation included).
"""

from __future__ import annotations

import time
import uuid
from datetime import date

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, ProducerSink, RecordSource, create_topics, delete_topics
from flows import ingest, live
from flows.pipeline import PipelineConfig, market_parser
from operators.analytics import AnalyticsConfig
from schemas.codec import encode
from schemas.market import Tick
from schemas.topics import TopicCatalog, load_catalog
from tests.bench.harness import measure

INSTRUMENTS = 500
SECONDS = 300  # market seconds of ticks: ~430k ticks
DAY = date(2026, 11, 20)
RUNS = 3

CONFIGS = {
    "spec": PipelineConfig(
        analytics=AnalyticsConfig(patterns=False, publish_timeframes=()),
        open_interest=False,
        summary_timeframes=(),
    ),
    "full": PipelineConfig(),
}


@pytest.fixture(scope="module")
def filled(kafka: KafkaClientConfig) -> tuple[TopicCatalog, tuple, int]:
    catalog = load_catalog().scoped(f"bl{uuid.uuid4().hex[:8]}")
    create_topics(kafka.admin(), catalog)
    universe = tuple(build_universe(DAY, INSTRUMENTS))
    cfg = ingest.SimConfig(universe=universe, seed=7, groups=4, day=DAY, speed=0, max_steps=SECONDS)
    before = ingest.TICKS_OUT._value.get()
    run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, kafka.producer()))
    return catalog, universe, int(ingest.TICKS_OUT._value.get() - before)


def _reset_outputs(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    admin = kafka.admin()
    delete_topics(admin, [catalog.name(t) for t in ("md.candles", "md.analytics", "md.dlq")])
    create_topics(admin, catalog)


def _passthrough(kafka: KafkaClientConfig, catalog: TopicCatalog) -> Dataflow:
    flow = Dataflow("io_floor")
    recs = op.input("md", flow, RecordSource(kafka, [catalog.name("md.ticks")], tail=False))
    # The flow's OrderedSource decodes as it reads; here the floor pays the same parse per record.
    parse = market_parser(Tick, catalog.name("md.ticks"))
    ticks = op.flat_map_batch(
        "decode", recs, lambda rs: [parse(r.value or b"", r.partition, r.offset)[1] for r in rs if r.partition >= 0]
    )
    out_topic = catalog.name("md.candles")
    records = op.map("encode", ticks, lambda kv: (out_topic, kv[0], encode(kv[1])))
    op.output("publish", records, ProducerSink(kafka.producer()))
    return flow


@pytest.mark.parametrize("name", list(CONFIGS))
def test_pipeline_throughput(kafka: KafkaClientConfig, filled: tuple, name: str) -> None:
    catalog, universe, n_ticks = filled

    def timed(build) -> float:
        _reset_outputs(kafka, catalog)
        t0 = time.perf_counter()
        run_main(build())
        return n_ticks / (time.perf_counter() - t0)

    result = measure(
        f"pipeline_ticks_per_s_{name}",
        unit="ticks/s",
        fn=lambda: timed(lambda: live.build(kafka, catalog, universe, CONFIGS[name], tail=False)),
        baseline=lambda: timed(lambda: _passthrough(kafka, catalog)),
        baseline_name="I/O floor: read, decode, encode, produce (no analytics)",
        runs=RUNS,
        warmup=0,
        target=100_000,
        params={
            "config": name,
            "instruments": INSTRUMENTS,
            "ticks": n_ticks,
            "timeframes": list(CONFIGS[name].analytics.timeframes),
            "indicators": list(CONFIGS[name].analytics.indicators),
            "patterns": CONFIGS[name].analytics.patterns,
            "open_interest": CONFIGS[name].open_interest,
            "processes": 1,
            "broker": "tansu (embedded)",
        },
    )
    result.write()
    assert n_ticks > 100_000 and result.figure > 0
