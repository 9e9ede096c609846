"""Simulator + ingest throughput into md.ticks (issue 2), on the real embedded broker.

Runs the production entry point ``python -m bytewax.run flows.ingest`` unpaced for a fixed
span of market time over 500 instruments, as one Bytewax process and as a two-process
set of independent shard processes (``TICKTAPE_INGEST_PROCESSES``; the GIL makes threads useless
and groups share no state, so no Bytewax cluster is needed), then reads md.ticks back to prove every
tick arrived. The figure is ticks/s from launch to exit (start-up included, so it is a
floor). The baseline, measured in the same run, is the simulator alone in this process:
the ratio says how much of the generator's speed survives validation, encoding and Kafka.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import date
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.brokers.simulator import MarketSimulator
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, create_topics, delete_topics
from schemas.topics import load_catalog
from tests.bench.harness import measure

INSTRUMENTS = 500
SECONDS = 600  # market seconds per run: ~860k ticks, so start-up (~1 s) weighs little
DAY = date(2026, 11, 20)
RUNS = 3


def _count(kafka: KafkaClientConfig, topic: str, partitions: int) -> int:
    c = Consumer(kafka.consumer())
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    n, eof, idle = 0, set(), time.monotonic()
    while len(eof) < partitions and time.monotonic() - idle < 20:
        for m in c.consume(50_000, 0.5):
            err = m.error()
            if err is None:
                n += 1
                idle = time.monotonic()
            elif err.code() == KafkaError._PARTITION_EOF:
                eof.add(m.partition())
    c.close()
    return n


def _run_ingest(kafka: KafkaClientConfig, home: Path, processes: int) -> tuple[float, int]:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    catalog = load_catalog().scoped(prefix)
    admin = kafka.admin()
    create_topics(admin, catalog)
    env = {
        **os.environ,
        "TICKTAPE_HOME": str(home),
        "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "TICKTAPE_DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused",
        "TICKTAPE_TOPIC_PREFIX": prefix,
        "TICKTAPE_SIM_SPEED": "0",
        "TICKTAPE_SIM_SECONDS": str(SECONDS),
        "TICKTAPE_SIM_DATE": DAY.isoformat(),
        "TICKTAPE_SIM_INSTRUMENTS": str(INSTRUMENTS),
        "TICKTAPE_INGEST_PARTITIONS": "4",
        "TICKTAPE_LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "bytewax.run", "flows.ingest"]
    env["TICKTAPE_INGEST_PROCESSES"] = str(processes)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, env={**env, "TICKTAPE_INGEST_SHARD": str(i)}, stderr=subprocess.PIPE)
        for i in range(processes)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    elapsed = time.perf_counter() - t0
    for p, e in zip(procs, errs, strict=True):
        assert p.returncode == 0, e.decode()[-2000:]
    ticks = _count(kafka, catalog.name("md.ticks"), catalog["md.ticks"].partitions)
    delete_topics(admin, [s.name for s in catalog.values()])
    return elapsed, ticks


def _simulator_only() -> float:
    universe = build_universe(DAY, INSTRUMENTS)
    sims = [MarketSimulator(universe[g::4], all_instruments=universe, seed=42, group=g, day=DAY) for g in range(4)]
    t0, n = time.perf_counter(), 0
    for _ in range(SECONDS):
        for sim in sims:
            n += len(sim.step()[0])
    return n / (time.perf_counter() - t0)


@pytest.mark.parametrize("processes", [1, 2])
def test_ingest_throughput(kafka: KafkaClientConfig, tmp_path: Path, processes: int) -> None:
    counts: list[int] = []

    def one() -> float:
        elapsed, ticks = _run_ingest(kafka, tmp_path, processes)
        counts.append(ticks)
        return ticks / elapsed

    result = measure(
        f"ingest_ticks_per_s_{processes}p",
        unit="ticks/s",
        fn=one,
        runs=RUNS,
        warmup=0,
        baseline=_simulator_only,
        baseline_name="simulator alone, 1 process",
        target=100_000,
        params={
            "instruments": INSTRUMENTS,
            "market_seconds": SECONDS,
            "processes": processes,
            "partitions": 4,
            "broker": "tansu (embedded)",
        },
        extra={"ticks_per_run": counts},
    )
    result.write()
    # Same seed, same span: every run must publish the same, non-trivial number of ticks.
    assert len(set(counts)) == 1 and counts[0] > 100_000, counts
