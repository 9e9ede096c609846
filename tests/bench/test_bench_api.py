"""API latency at 500 requests/s (issue 6): /health, /api/positions, /api/market-data/{i}/candles.

The API runs as its own uvicorn process against the real PostgreSQL and broker; a second
process sends an open-loop load (a request every 2 ms, whatever the answers do) for each
endpoint in turn and reports every latency. Figures: p50 and p99 per endpoint (median of 5
runs); baseline: the same load on the process's ``/metrics`` route, which touches no database
(the cost of the HTTP stack itself).

The load client is deliberately lean (raw asyncio streams, HTTP/1.1 keep-alive, no HTTP
library): a general-purpose async client costs more CPU per request than the server does,
and on a small machine it measured its own queueing instead of the API. Each request's
latency runs from its *scheduled* send time, so a request that waited for a free connection
or for a late client still counts its wait (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest

from api.security import create_user
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig
from connectors.postgres.instruments import upsert_instruments
from connectors.processes import free_port
from schemas.topics import TopicCatalog
from tests.bench.harness import BenchResult, cpu_clock, machine, stolen_since

pytestmark = pytest.mark.timeout(1800)
RATE = 500  # requests per second
RUNS = 5  # per endpoint, interleaved; the figure is their median (a neighbour's burst on the host spoils single runs)
SECONDS = float(os.environ.get("TICKTAPE_BENCH_API_SECONDS", "4"))
CONNECTIONS = 32  # keep-alive connections; far more than 500 rps x 10 ms needs
WARMUP_S = 0.5  # sent at the same rate before the measured requests, not recorded (pools fill, caches warm)
REQUEST_TIMEOUT_S = 10.0


# ----------------------------------------------------------------------------- the load client (second process)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one HTTP/1.1 response; its status and whether the server closes the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked, close = 0, False, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if not chunked:
        await reader.readexactly(length)
        return status, close
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        await reader.readexactly(size + 2)
    await reader.readuntil(b"\r\n")  # the empty trailer
    return status, close


async def _connection(host: str, port: int, request: bytes, due: asyncio.Queue[float | None],
                      latencies: list[tuple[float, float]], errors: Counter[str]) -> None:  # fmt: skip
    """One keep-alive connection: take the next scheduled request, send it, read the answer."""
    reader, writer = await asyncio.open_connection(host, port)
    while (scheduled := await due.get()) is not None:
        try:
            writer.write(request)
            status, close = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors[type(exc).__name__] += 1
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
            continue
        latencies.append((scheduled, time.perf_counter() - scheduled))
        if status >= 400:
            errors[str(status)] += 1
        if close:
            writer.close()
            reader, writer = await asyncio.open_connection(host, port)
    writer.close()


async def _load(url: str, token: str, rate: float, seconds: float) -> dict[str, object]:
    """Open loop: request k is due at start + k / rate whatever the earlier answers did."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {token}\r\n"
               "Accept: application/json\r\n\r\n").encode()  # fmt: skip
    due: asyncio.Queue[float | None] = asyncio.Queue()
    latencies: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    workers = [asyncio.create_task(_connection(parts.hostname or "127.0.0.1", parts.port or 80, request, due, latencies,
                                               errors)) for _ in range(CONNECTIONS)]  # fmt: skip
    await asyncio.sleep(0.2)  # connections open before the clock starts
    first = time.perf_counter()
    start = first + WARMUP_S
    loop = asyncio.get_running_loop()

    def pace() -> None:
        # A thread keeps the schedule: time.sleep wakes within microseconds, while the event
        # loop's timers round up to the next millisecond (epoll), which would add up to 1 ms
        # of the client's own lateness to every latency.
        for k in range(int(rate * (WARMUP_S + seconds))):
            scheduled = first + k / rate
            if (delay := scheduled - time.perf_counter()) > 0:
                time.sleep(delay)
            loop.call_soon_threadsafe(due.put_nowait, scheduled)
        for _ in workers:
            loop.call_soon_threadsafe(due.put_nowait, None)

    await asyncio.to_thread(pace)
    await asyncio.gather(*workers)
    measured = [lat for scheduled, lat in latencies if scheduled >= start]
    errors_measured = sum(errors.values())  # (counted over warm-up too: an error is never hidden)
    elapsed = max((s + lat for s, lat in latencies if s >= start), default=start) - start
    return {"latencies": measured, "errors": errors_measured, "error_kinds": dict(errors),
            "achieved_rps": len(measured) / elapsed if elapsed > 0 else 0.0}  # fmt: skip


def run_load() -> None:
    """Entry point of the load process: ``URL TOKEN RATE SECONDS``; prints one JSON object."""
    url, token, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(asyncio.run(_load(url, token, rate, seconds))))


# ----------------------------------------------------------------------------- the benchmark


def _seed(url: str) -> None:
    t0 = datetime(2026, 11, 23, 3, 45, tzinfo=UTC)
    with psycopg.connect(url, autocommit=True) as conn:
        upsert_instruments(conn, build_universe(t0.date(), 500))
        # A realistic table, not one instrument's rows: every instrument's 1m bars for the
        # asked day and the day before (375k rows), vacuumed and analyzed as a production table
        # would be (autovacuum would otherwise work through the fresh rows during the
        # measurement), so the query must find its 375 rows through the (instrument,
        # timeframe, time) index as it would in production.
        ids = [r[0] for r in conn.execute("SELECT id FROM instruments ORDER BY id").fetchall()]
        with conn.cursor().copy("COPY ohlc_candles (time, instrument_id, timeframe, open_price, high_price, low_price, "
                                "close_price, volume, trade_count, vwap, oi) FROM STDIN") as cp:  # fmt: skip
            for day in (t0 - timedelta(days=1), t0):
                for iid in ids:
                    for k in range(375):
                        cp.write_row((day + timedelta(minutes=k), iid, "1m", 100, 101, 99, 100.5, 1000, 10, 100.2, 0))
        conn.execute("VACUUM (ANALYZE) ohlc_candles")
        conn.execute("CHECKPOINT")
        ids = ids[:40]
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
            code = "from tests.bench.test_bench_api import run_load; run_load()"
            out = subprocess.run([sys.executable, "-c", code, base + path, token, str(RATE), str(SECONDS)],
                                 capture_output=True, text=True, timeout=SECONDS * 20 + 120, check=True,
                                 cwd=Path(__file__).resolve().parents[2])  # fmt: skip
            return json.loads(out.stdout)

        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(RUNS):
            for name, path in targets.items():
                clock = cpu_clock()
                r = load(path)
                steal = stolen_since(clock)
                lat = r["latencies"]
                runs[name].append({"p50_ms": _quantile(lat, 0.5) * 1e3, "p99_ms": _quantile(lat, 0.99) * 1e3,
                                   "errors": r["errors"], "error_kinds": r["error_kinds"],
                                   "achieved_rps": r["achieved_rps"], "n": len(lat), "steal": steal})  # fmt: skip
                print(f"[bench] {name}: p50 {runs[name][-1]['p50_ms']:.2f} ms, p99 {runs[name][-1]['p99_ms']:.2f} ms, "
                      f"{r['achieved_rps']:.0f} rps, errors {r['error_kinds']}, {steal:.1%} of the CPU stolen")  # fmt: skip
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
                "warmup_s": WARMUP_S,
                "path": targets[name],
                "server": "uvicorn, 1 process",
                "client": f"raw asyncio HTTP/1.1, {CONNECTIONS} keep-alive connections, open loop, separate process",
            },
            baseline={
                "name": "/metrics (no database)",
                "figure": base_p99,
                "p50_ms": med("baseline_metrics", "p50_ms"),
                "runs": [x["p99_ms"] for x in runs["baseline_metrics"]],
                "ratio": p99 / base_p99 if base_p99 else None,
            },
            target={"value": 10.0, "better": "lower", "met": p99 <= 10.0},
            extra={
                "p50_ms": med(name, "p50_ms"),
                "errors": [x["errors"] for x in runs[name]],
                "error_kinds": [x["error_kinds"] for x in runs[name]],
                "achieved_rps": [round(x["achieved_rps"], 1) for x in runs[name]],
                # The hypervisor's share of the machine's CPU during each run: a run's tail
                # tracks it (one bench run, same code: positions p99 22 ms at 12% stolen,
                # 1.8 ms at none).
                "steal_share": [x["steal"] for x in runs[name]],
            },
            machine=machine(),
        )
        result.write()
        assert all(x["n"] > 0 and x["errors"] == 0 for x in runs[name]), runs[name]
