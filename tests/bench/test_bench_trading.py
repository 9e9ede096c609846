"""The whole trading path in one process: ticks -> candles -> indicators -> 40 strategies ->
risk gate -> stop-loss manager -> paper venue -> order, fill and position topics (issue 4).

500 instruments; 40 deployments (8 of each built-in, different params, 1m and 5m bars), each
subscribed to every tradable instrument: 20,000 strategy instances. The flow replays a filled
md.ticks (unpaced simulator) in event-time order, as a backtest does. Figures: ticks/s from
flow start to end of input (start-up included), median of 3 runs, and the peak RSS of the
process. The baseline, measured in the same run, is the same pipeline without strategies
and desk (candles and indicators only), so the ratio is what trading costs on top.
"""

from __future__ import annotations

import resource
import time
import uuid
from datetime import date

import pytest
from bytewax.testing import run_main

import strategies.builtin  # noqa: F401
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, ProducerSink, create_topics, delete_topics
from flows import ingest, live
from flows.pipeline import PipelineConfig, StrategySetup
from flows.trading import TradingSetup
from operators.analytics import AnalyticsConfig
from operators.strategy_host import Deployment
from schemas.topics import TopicCatalog, load_catalog
from strategies.registry import REGISTRY
from tests.bench.harness import measure

INSTRUMENTS = 500
SECONDS = int(__import__("os").environ.get("BENCH_SECONDS", "600"))
DAY = date(2026, 11, 20)
ANALYTICS = AnalyticsConfig(timeframes=("1s", "5s", "1m", "5m", "15m", "1h", "1d"), patterns=False,
                            publish_timeframes=())  # fmt: skip


def deployments() -> tuple[Deployment, ...]:
    out = []
    for k in range(8):
        tf = "1m" if k % 2 == 0 else "5m"
        kinds = {
            "ema_crossover": {"fast": 3 + k, "slow": 12 + 2 * k},
            "rsi_reversion": {"period": 7 + k, "oversold": 25 + k, "overbought": 75 - k},
            "supertrend_trend": {"period": 5 + k, "multiplier": 1.5 + 0.25 * k},
            "vwap_reversion": {"band": 0.2 + 0.05 * k},
            "opening_range_breakout": {"range_minutes": 15 if tf == "5m" else 5 + k},
        }
        for kind, params in kinds.items():
            p = REGISTRY.params(kind, {**params, "timeframe": tf, "qty": 1, "allow_short": k % 3 == 0})
            out.append(Deployment(f"{kind[:6]}_{k}", kind, p))
    return tuple(out)


@pytest.fixture(scope="module")
def filled(kafka: KafkaClientConfig) -> tuple[TopicCatalog, tuple, int]:
    catalog = load_catalog().scoped(f"bt{uuid.uuid4().hex[:8]}")
    create_topics(kafka.admin(), catalog)
    universe = tuple(build_universe(DAY, INSTRUMENTS))
    cfg = ingest.SimConfig(universe=universe, seed=3, groups=4, day=DAY, speed=0, max_steps=SECONDS)
    before = ingest.TICKS_OUT._value.get()
    run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, ProducerSink(kafka.producer())))
    return catalog, universe, int(ingest.TICKS_OUT._value.get() - before)


def test_trading_path_throughput(kafka: KafkaClientConfig, filled: tuple) -> None:
    catalog, universe, n_ticks = filled
    deps = deployments()
    assert len(deps) == 40
    outputs = [catalog.name(t) for t in ("md.candles", "md.analytics", "md.dlq", "sig.signals", "ord.intents",
                                          "ord.updates", "ord.fills", "pf.positions", "risk.events")]  # fmt: skip

    def timed(trading: bool) -> float:
        admin = kafka.admin()
        delete_topics(admin, outputs)
        create_topics(admin, catalog)
        cfg = PipelineConfig(analytics=ANALYTICS, open_interest=False, summary_timeframes=(),
                             strategies=StrategySetup(deployments=deps) if trading else None)  # fmt: skip
        t0 = time.perf_counter()
        run_main(live.build(kafka, catalog, universe, cfg, tail=False, trading=TradingSetup() if trading else None))
        return n_ticks / (time.perf_counter() - t0)

    result = measure(
        "trading_path_ticks_per_s",
        unit="ticks/s",
        fn=lambda: timed(True),
        baseline=lambda: timed(False),
        baseline_name="same replay without strategies and desk (candles + indicators only)",
        runs=3,
        warmup=0,
        target=50_000,
        params={
            "instruments": INSTRUMENTS,
            "deployments": len(deps),
            "strategy_instances": sum(1 for d in deps for i in universe if d.subscribes(i.instrument)),
            "ticks": n_ticks,
            "timeframes": list(ANALYTICS.timeframes),
            "processes": 1,
            "broker": "tansu (embedded)",
        },
    )
    # Peak RSS of this process (broker and PostgreSQL run separately): fill + runs.
    result.extra["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result.extra["rss_target_mib"] = 1024
    result.write()
    assert n_ticks > 100_000 and result.figure > 0
