"""API latency at 500 requests/s (issue 6): /health, /api/positions, /api/market-data/{i}/candles.

The API runs as its own uvicorn process against the real PostgreSQL and broker; a second
process sends an open-loop load (a request every 2 ms, whatever the answers do) for each
endpoint in turn and reports every latency. Figures: p50 and p99 per endpoint (median of 3
runs); baseline: the same load on the process's ``/metrics`` route, which touches no database
(the cost of the HTTP stack itself).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from api.security import create_user
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig
from connectors.postgres.instruments import upsert_instruments
from connectors.processes import free_port
from schemas.topics import TopicCatalog
from tests.bench.harness import BenchResult, machine

pytestmark = pytest.mark.timeout(1800)
RATE = 500  # requests per second
SECONDS = float(os.environ.get("TICKTAPE_BENCH_API_SECONDS", "4"))

LOAD = r"""
import asyncio, json, sys, time
import httpx

async def main(url, token, rate, seconds):
    lat, errors = [], 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=10) as c:
        async def one():
            nonlocal errors
            t = time.perf_counter()
            try:
                r = await c.get(url)
                errors += r.status_code >= 400
            except httpx.HTTPError:
                errors += 1
            lat.append(time.perf_counter() - t)
        tasks, start, n = [], time.perf_counter(), int(rate * seconds)
        for k in range(n):
            delay = start + k / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        achieved = n / (time.perf_counter() - start)
    print(json.dumps({"latencies": lat, "errors": errors, "achieved_rps": achieved}))

asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])))
"""


def _seed(url: str) -> None:
    t0 = datetime(2026, 11, 23, 3, 45, tzinfo=UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        upsert_instruments(conn, build_universe(t0.date(), 500))
        iid = conn.execute("SELECT id FROM instruments WHERE symbol = 'NSE:INFY'").fetchone()[0]
        with conn.cursor().copy("COPY ohlc_candles (time, instrument_id, timeframe, open_price, high_price, low_price, "
                                "close_price, volume, trade_count, vwap, oi) FROM STDIN") as cp:  # fmt: skip
            for k in range(375):
                cp.write_row((t0 + timedelta(minutes=k), iid, "1m", 100, 101, 99, 100.5, 1000, 10, 100.2, 0))
        ids = [r[0] for r in conn.execute("SELECT id FROM instruments ORDER BY id LIMIT 40").fetchall()]
        for k, i in enumerate(ids):
            conn.execute(
                "INSERT INTO positions (account, strategy_id, instrument_id, quantity, average_entry_price, current_price,"
                " unrealized_pnl, realized_pnl) VALUES ('paper', %s, %s, %s, 100, 101, 10, 0)",
                (f"s{k % 5}", i, 10 + k),
            )


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def test_api_latency_at_500_rps(kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, tmp_path: Path) -> None:
    _seed(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        create_user(conn, "bench", "bench password 123")
    port = free_port()
    env = {**os.environ, "TICKTAPE_HOME": str(tmp_path), "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "TICKTAPE_DATABASE_URL": database_url, "TICKTAPE_TOPIC_PREFIX": catalog.prefix,
           "TICKTAPE_API_RATE_LIMIT_PER_MIN": "10000000"}  # fmt: skip
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
                            "--log-level", "warning"], env=env, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/metrics", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        token = httpx.post(f"{base}/api/auth/login", json={"username": "bench", "password": "bench password 123"},
                           timeout=10).json()["access_token"]  # fmt: skip
        day = "from=2026-11-23T09:15:00%2B05:30&to=2026-11-23T15:30:00%2B05:30&timeframe=1m&limit=375"
        targets = {"health": "/health", "positions": "/api/positions", "candles": f"/api/market-data/NSE:INFY/candles?{day}",
                   "baseline_metrics": "/metrics"}  # fmt: skip

        def load(path: str) -> dict:
            out = subprocess.run([sys.executable, "-c", LOAD, base + path, token, str(RATE), str(SECONDS)],
                                 capture_output=True, text=True, timeout=SECONDS * 100 + 120, check=True)  # fmt: skip
            return json.loads(out.stdout)

        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(3):
            for name, path in targets.items():
                r = load(path)
                lat = r["latencies"]
                runs[name].append({"p50_ms": _quantile(lat, 0.5) * 1e3, "p99_ms": _quantile(lat, 0.99) * 1e3,
                                   "errors": r["errors"], "achieved_rps": r["achieved_rps"], "n": len(lat)})  # fmt: skip
    finally:
        os.killpg(api.pid, signal.SIGTERM)
        api.wait(30)

    def med(name: str, key: str) -> float:
        vals = sorted(x[key] for x in runs[name])
        return vals[len(vals) // 2]

    base_p99 = med("baseline_metrics", "p99_ms")
    for name in ("health", "positions", "candles"):
        p99 = med(name, "p99_ms")
        result = BenchResult(
            name=f"api_{name}_latency_500rps",
            figure=p99,
            unit="ms p99",
            runs=[x["p99_ms"] for x in runs[name]],
            params={
                "rate_rps": RATE,
                "seconds": SECONDS,
                "path": targets[name],
                "server": "uvicorn, 1 process",
                "client": "httpx async, open loop, separate process",
            },
            baseline={
                "name": "/metrics (no database)",
                "figure": base_p99,
                "runs": [x["p99_ms"] for x in runs["baseline_metrics"]],
                "ratio": p99 / base_p99 if base_p99 else None,
            },
            target={"value": 10.0, "better": "lower", "met": p99 <= 10.0},
            extra={
                "p50_ms": med(name, "p50_ms"),
                "errors": [x["errors"] for x in runs[name]],
                "achieved_rps": [round(x["achieved_rps"], 1) for x in runs[name]],
            },
            machine=machine(),
        )
        result.write()
        assert all(x["n"] > 0 for x in runs[name]), runs[name]
