"""Persistence under faults: kill -9 of the persist flow mid-run, and of PostgreSQL mid-run.

Ticks, depth snapshots and candles are all on the topics before the flow starts.

The flow runs as the real entry point (``python -m bytewax.run flows.persist``) against the
session broker and a PostgreSQL of its own (so killing it disturbs no other test). Afterwards
every tick and depth snapshot is in its table exactly once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from bytewax.testing import run_main

from connectors import embedded
from connectors.kafka import read_all
from connectors.postgres.instruments import upsert_instruments
from connectors.postgres.migrate import migrate
from connectors.processes import pid_alive
from flows import live
from flows.pipeline import PipelineConfig
from operators.analytics import AnalyticsConfig
from schemas.codec import codec_for
from schemas.market import Candle
from tests.flows.test_ingest_persist import _expected, _ingest

pytestmark = pytest.mark.slow


def _counts(url: str) -> tuple[int, int, int, int]:
    """(ticks, distinct ticks, depth snapshots, candles)."""
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            n, distinct = conn.execute("SELECT count(*), count(DISTINCT (instrument_id, seq)) FROM tick_data").fetchone()
            depth = conn.execute("SELECT count(*) FROM order_book_snapshots").fetchone()[0]
            candles = conn.execute("SELECT count(*) FROM ohlc_candles").fetchone()[0]
            return n, distinct, depth, candles
    except psycopg.OperationalError:
        return -1, -1, -1, -1


_URL: list[str] = []


def _wait(
    pred: Callable[[], bool], timeout: float, what: str, logs: Path | None = None, proc: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        if pred():
            return
        time.sleep(0.05)
    tail = "".join(p.read_text()[-6000:] for p in sorted(logs.glob("persist-*.log"))) if logs else ""
    tail += f"\nrows now: {_counts(_URL[0])}, ticks expected: {_URL[1:]}" if _URL else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


def test_kill9_of_persist_and_of_postgres_loses_and_duplicates_nothing(kafka, catalog) -> None:
    home = Path(tempfile.mkdtemp(prefix="ticktape-faults-"))
    os.chmod(home, 0o755)
    # Durable settings (unlike the session's throw-away cluster): with synchronous_commit=off a
    # kill -9 loses the last acknowledged commits, and exactly-once cannot survive that.
    pg = embedded.start_postgres(home, owned=True, fast=False)
    _URL[:] = [pg.url]
    procs: list[subprocess.Popen] = []
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn)
        cfg = _ingest(kafka, catalog, steps=400, bad_rate=0.0)
        ticks, _ = _expected(cfg)
        _URL.append(str(len(ticks)))
        with psycopg.connect(pg.url, autocommit=True) as conn:
            upsert_instruments(conn, cfg.universe)
        # Candles from the analytics pipeline (replay), so md.candles holds a known set too.
        acfg = AnalyticsConfig(timeframes=("1s", "1m", "5m"), indicators=("ema:3",), publish_timeframes=())
        run_main(live.build(kafka, catalog, cfg.universe, PipelineConfig(analytics=acfg), tail=False))
        candle_codec = codec_for(Candle)
        finals = {
            (c.instrument, c.timeframe, c.open_time)
            for c in (candle_codec.decode(v) for v in read_all(kafka, catalog.name("md.candles")))
            if c.final
        }
        assert len(finals) > 10_000
        prefix = catalog.name("md.ticks").removesuffix(".md.ticks")
        env = {
            **os.environ,
            "TICKTAPE_HOME": str(home),
            "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap,
            "TICKTAPE_KAFKA_PROFILE": "tansu",
            "TICKTAPE_DATABASE_URL": pg.url,
            "TICKTAPE_TOPIC_PREFIX": prefix,
            "TICKTAPE_PERSIST_BATCH_ROWS": "200",
            "TICKTAPE_PERSIST_BATCH_MS": "50",
            "TICKTAPE_LOG_LEVEL": "WARNING",
        }
        argv = [sys.executable, "-m", "bytewax.run", "flows.persist"]

        def start() -> subprocess.Popen:
            log = (home / f"persist-{len(procs)}.log").open("wb")
            p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)
            procs.append(p)
            return p

        # 1. kill -9 the flow while it is writing.
        first = start()
        _wait(lambda: _counts(pg.url)[0] > 0, 60, "the first batch", home, first)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        after_kill = _counts(pg.url)[0]
        assert 0 < after_kill < len(ticks), "the kill must land mid-run"

        # 2. restart it; then kill -9 PostgreSQL while it writes, and bring it back.
        second = start()
        _wait(lambda: _counts(pg.url)[0] > after_kill, 60, "progress after the restart", home, second)
        os.kill(pg.pid, signal.SIGKILL)
        _wait(lambda: not pid_alive(pg.pid), 10, "PostgreSQL to die")
        time.sleep(1.0)  # the flow now fails its commits and retries with backoff
        embedded._update_state(home, postgres=None)
        _wait(lambda: _pg_children_gone(home), 15, "PostgreSQL backends to exit")
        restarted = embedded.start_postgres(home, port=pg.port, owned=True, fast=False)
        assert restarted.port == pg.port

        _wait(
            lambda: (c := _counts(pg.url))[0] >= len(ticks) and c[3] >= len(finals),
            90,
            "every tick and candle to be stored",
            home,
            second,
        )
        time.sleep(1.0)  # anything extra (a duplicate) would land now
        second.send_signal(signal.SIGTERM)
        log = (home / "persist-1.log").read_text()
        assert second.wait(30) == 0, log[-2000:]
        assert "PostgreSQL unavailable" in log and "retrying batch" in log  # the outage was felt and ridden out
        n, distinct, depth, candles = _counts(pg.url)
        assert n == distinct == len(ticks)
        assert depth > 0
        assert candles == len(finals)  # the primary key (time, instrument, timeframe) rules out duplicates
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        embedded.stop_postgres(home)
        shutil.rmtree(home, ignore_errors=True)


def _pg_children_gone(home: Path) -> bool:
    pidfile = home / "pg" / "postmaster.pid"
    if not pidfile.exists():
        return True
    # Backends of a killed postmaster exit on their own once they notice; the data directory's
    # shared memory is free when no process has it open any more.
    out = subprocess.run(["pgrep", "-f", str(home / "pg")], capture_output=True, text=True, check=False).stdout
    return not out.strip()
