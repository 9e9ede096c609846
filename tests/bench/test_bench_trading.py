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

import os
import statistics
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main

import strategies.builtin  # noqa: F401
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, create_topics, delete_topics
from flows import ingest, live
from flows.pipeline import PipelineConfig, StrategySetup
from flows.trading import TradingSetup
from operators.analytics import AnalyticsConfig
from operators.strategy_host import Deployment
from schemas.topics import TopicCatalog, load_catalog
from strategies.registry import REGISTRY
from tests.bench.ceiling import framework_ceiling
from tests.bench.harness import measure

INSTRUMENTS = 500
SECONDS = int(os.environ.get("TICKTAPE_BENCH_SECONDS", "600"))  # market seconds replayed (shorter: profiling)
DAY = date(2026, 11, 20)
ANALYTICS = AnalyticsConfig(timeframes=("1s", "5s", "1m", "5m", "15m", "1h", "1d"), patterns=False,
                            publish_timeframes=())  # fmt: skip


def deployments(timeframes: tuple[str, str] = ("1m", "5m")) -> tuple[Deployment, ...]:
    out = []
    for k in range(8):
        tf = timeframes[k % 2]
        kinds = {
            "ema_crossover": {"fast": 3 + k, "slow": 12 + 2 * k},
            "rsi_reversion": {"period": 7 + k, "oversold": 25 + k, "overbought": 75 - k},
            "supertrend_trend": {"period": 5 + k, "multiplier": 1.5 + 0.25 * k},
            "vwap_reversion": {"band": 0.2 + 0.05 * k},
            "opening_range_breakout": {"range_minutes": 15 if k % 2 else 5 + k},
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
    run_main(ingest.build(ingest.SimulatorSource(cfg), universe, catalog, kafka.producer()))
    return catalog, universe, int(ingest.TICKS_OUT._value.get() - before)


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in MiB."""
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def test_trading_path_throughput(kafka: KafkaClientConfig, filled: tuple) -> None:
    catalog, universe, n_ticks = filled
    # The peak of these runs, not of the benchmarks before them in this process (``make bench``
    # runs the 1M-bar candle replay first): reset the high-water mark (Linux, 4.0+) and report
    # what the process already held beside the peak.
    Path("/proc/self/clear_refs").write_text("5")
    rss_before = _rss_mib("VmRSS")
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
    # Peak RSS of this process over the runs (broker and PostgreSQL run separately), and what it
    # held before them: memory earlier benchmarks left, which Python keeps and reuses. Under
    # `make bench` the 1M-bar candle replay leaves over 1 GiB here, so the RSS target is judged
    # on the live process of the latency benchmark, which runs this path alone.
    result.extra["peak_rss_mib"] = round(_rss_mib("VmHWM"), 1)
    result.extra["rss_before_runs_mib"] = round(rss_before, 1)
    result.extra["rss_judged_in"] = "trading_decision_latency_p99_ms.json: extra.peak_rss_mib_max (flows.live alone)"
    result.write()
    assert n_ticks > 100_000 and result.figure > 0


# ----------------------------------------------------------------------------- live latency

LIVE_SPEED = 7.0  # 500 instruments x ~2.8 ticks/s x 7 = ~10k ticks/s
LIVE_WALL_S = 40


def _histogram(metrics: str, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a Prometheus histogram, in bound order."""
    out = []
    for line in metrics.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def _quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Linear interpolation inside the bucket holding the q-quantile (Prometheus' rule)."""
    total = buckets[-1][1]
    rank, lo, below = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lo
            return lo + (le - lo) * ((rank - below) / max(count - below, 1e-9))
        lo, below = le, count
    return lo


def _metric(metrics: str, name: str) -> float:
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in metrics.splitlines() if ln.startswith(name) and " " in ln)


def _by_label(metrics: str, name: str, label: str) -> dict[str, float]:
    """A labelled counter's samples, ``{label value: count}``."""
    head = f'{name}{{{label}="'
    lines = [ln for ln in metrics.splitlines() if ln.startswith(head)]
    return {ln[len(head) :].split('"', 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines}


def test_trading_latency_at_10k_ticks_per_s(
    kafka: KafkaClientConfig, database_url: str, broker, tmp_path, filled: tuple
) -> None:
    """In-engine latency, live, at ~10k ticks/s: ``ticktape_decision_to_intent_seconds`` of a
    ``flows.live`` process (40 deployments, 500 instruments) fed by a paced ``flows.ingest``;
    p50/p99 from the histogram buckets, the live process's peak RSS from /proc. Beside it, the
    framework's ceiling on the filled md.ticks, from which the time a broker read takes to
    pass through a flow that does nothing with it follows."""
    import signal
    import subprocess
    import sys

    import httpx
    import psycopg

    from connectors.postgres.instruments import upsert_instruments
    from connectors.postgres.strategies import save_deployments
    from connectors.processes import free_port

    universe = tuple(build_universe(DAY, INSTRUMENTS))
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, universe)
        # 1s/5s bars, so 40 s at 7x (280 market seconds) is enough for every strategy to decide.
        rows = [(d.strategy_id, d.kind, msgspec_to_dict(d.params), True, "") for d in deployments(("1s", "5s"))]
        save_deployments(conn, rows)

    def one_run() -> tuple[float, dict[str, Any]]:
        catalog = load_catalog().scoped(f"lat{uuid.uuid4().hex[:8]}")
        create_topics(kafka.admin(), catalog)
        port = free_port()
        env = {**os.environ, "TICKTAPE_HOME": str(tmp_path), "TICKTAPE_KAFKA_BOOTSTRAP": broker.bootstrap,
               "TICKTAPE_KAFKA_PROFILE": "tansu", "TICKTAPE_DATABASE_URL": database_url,
               "TICKTAPE_TOPIC_PREFIX": catalog.prefix, "TICKTAPE_STRATEGY_WARMUP_DAYS": "0",
               "TICKTAPE_SIM_DATE": DAY.isoformat(),  # the master's day (unset: today, whose F&O symbols differ)
               "TICKTAPE_SIM_INSTRUMENTS": str(INSTRUMENTS), "TICKTAPE_SIM_SPEED": str(LIVE_SPEED),
               "TICKTAPE_SIM_SECONDS": str(int(LIVE_WALL_S * LIVE_SPEED)), "TICKTAPE_SIM_BAD_TICK_RATE": "0"}  # fmt: skip
        cmd = [sys.executable, "-m", "bytewax.run"]
        live_p = subprocess.Popen([*cmd, "flows.live"], env={**env, "TICKTAPE_METRICS_PORT": str(port)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            time.sleep(6)
            ingest_p = subprocess.run(
                [*cmd, "flows.ingest"], env=env, capture_output=True, timeout=LIVE_WALL_S + 120, check=False
            )
            assert ingest_p.returncode == 0, ingest_p.stderr[-2000:]
            time.sleep(3)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            status = Path(f"/proc/{live_p.pid}/status").read_text()
            rss_mib = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]) / 1024
        finally:
            os.killpg(live_p.pid, signal.SIGTERM)
            live_p.wait(30)
            delete_topics(kafka.admin(), [s.name for s in catalog.values()])
        buckets = _histogram(metrics, "ticktape_decision_to_intent_seconds")
        assert buckets and buckets[-1][1] > 50, "too few decisions to measure"
        consumed = _metric(metrics, "ticktape_kafka_consumed_total{")
        wait = _histogram(metrics, "ticktape_source_wait_seconds")
        fetch = _histogram(metrics, "ticktape_source_fetch_records")
        stats: dict[str, Any] = {"p50_ms": _quantile(buckets, 0.5) * 1e3, "p99_ms": _quantile(buckets, 0.99) * 1e3,
                 "decisions": buckets[-1][1], "rss_mib": rss_mib, "ticks_per_s": consumed / LIVE_WALL_S,
                 "source_wait_p50_ms": _quantile(wait, 0.5) * 1e3,
                 "source_wait_p99_ms": _quantile(wait, 0.99) * 1e3,
                 "fetch_records_p50": _quantile(fetch, 0.5), "fetch_records_p90": _quantile(fetch, 0.9),
                 # what the decisions came to: a scenario gone wrong (say, a master that does not
                 # hold the simulated symbols) shows here as a flood of one reject reason
                 "intents": _metric(metrics, 'ticktape_trading_events_total{kind="OrderIntent"}'),
                 "rejects": _by_label(metrics, "ticktape_risk_rejects_total", "reason")}  # fmt: skip
        runs_stats.append(stats)
        return stats["p99_ms"], stats

    runs_stats: list[dict[str, Any]] = []
    result = measure(
        "trading_decision_latency_p99_ms",
        unit="ms",
        fn=lambda: one_run()[0],
        runs=3,
        warmup=0,
        params={
            "instruments": INSTRUMENTS,
            "deployments": 40,
            "timeframes": ["1s", "5s"],
            "speed": LIVE_SPEED,
            "wall_s": LIVE_WALL_S,
            "measured": "candle-closing tick processed -> order intents emitted (ticktape_decision_to_intent_seconds)",
            "also_reported": "per run in extra.runs: the wait before processing, merged in the source but "
            "not yet in the flow (ticktape_source_wait_seconds, oldest record of each batch), and the records "
            "the broker delivered per read (ticktape_source_fetch_records, p50/p90)",
        },
    )
    result.extra["runs"] = runs_stats
    result.extra["p50_ms_median"] = statistics.median(s["p50_ms"] for s in runs_stats)
    # The target counts from the tick's consumption, and a consumed tick first waits in the
    # source while the flow works through earlier ones (on each 1 s bar boundary all 500
    # instruments close bars and 40 deployments decide: a wave of work the ticks behind it wait
    # for). So the target is judged on both parts, not on the processing part alone. The
    # embedded broker delivers the feed in bursts (a producer's lingered batch per read, see
    # extra.runs[].fetch_records_*), and a burst's last tick waits for the whole burst.
    result.extra["fetch_records_p50_median"] = statistics.median(s["fetch_records_p50"] for s in runs_stats)
    wait_p99 = statistics.median(s["source_wait_p99_ms"] for s in runs_stats)
    result.extra["source_wait_p99_ms_median"] = wait_p99
    result.target = {"value": 2.0, "better": "lower", "met": result.figure + wait_p99 <= 2.0,
                     "judged_on": "source wait p99 + processing p99 (tick consumed -> intent)"}  # fmt: skip
    # A read arrives at once and its ticks go through the flow one after another: even with no
    # candle, strategy or desk work, the last tick of a median read waits about this long (an
    # estimate: the median read times the per-tick cost of the ceiling, a replay in batches of
    # 20,000, where live batches are smaller and cost more per tick).
    catalog, _, n_ticks = filled
    ceilings = [framework_ceiling(kafka, catalog.name("md.ticks"), n_ticks) for _ in range(3)]
    us_per_tick = 1e6 / statistics.median(ceilings)
    result.extra["framework_ceiling"] = {
        "what": "the market source (read, decode, event-time merge) into a keyed step that does nothing",
        "ticks_per_s": statistics.median(ceilings),
        "runs": ceilings,
        "us_per_tick": us_per_tick,
        "median_read_through_empty_flow_ms_estimate": result.extra["fetch_records_p50_median"] * us_per_tick / 1e3,
    }
    result.extra["peak_rss_mib_max"] = max(s["rss_mib"] for s in runs_stats)  # VmHWM of flows.live: the RSS target
    result.extra["rss_target_mib"] = 1024
    result.extra["rss_target_met"] = result.extra["peak_rss_mib_max"] <= 1024
    result.write()
    assert result.figure > 0


def msgspec_to_dict(params: object) -> dict[str, object]:
    import msgspec

    return msgspec.to_builtins(params)  # type: ignore[no-any-return]
