"""End to end through the CLI: `ticktape up` reaches ready, ticks reach PostgreSQL, and
SIGINT stops everything gracefully (exit 0, no orphan process)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from connectors import embedded
from connectors.postgres.migrate import discover
from connectors.processes import free_port, pid_alive, port_free
from connectors.supervision import read_flow_status
from schemas.topics import load_catalog

pytestmark = pytest.mark.slow


def test_up_runs_the_stack_and_stops_cleanly() -> None:
    home = Path(tempfile.mkdtemp(prefix="ticktape-up-"))
    os.chmod(home, 0o755)
    port = free_port()
    # The flows serve metrics on base, base+1, base+2: below the kernel's ephemeral range
    # (32768+), so no client connection of the stack can hold one of them by then.
    metrics_base = next(
        b for b in iter(lambda: random.randrange(20_000, 32_000), None) if all(port_free(b + k) for k in range(3))
    )
    env = {
        **os.environ,
        "TICKTAPE_HOME": str(home),
        "TICKTAPE_API_PORT": str(port),
        "TICKTAPE_SIM_INSTRUMENTS": "100",
        "TICKTAPE_METRICS_PORT_BASE": str(metrics_base),
    }
    env.pop("TICKTAPE_KAFKA_BOOTSTRAP", None)
    env.pop("TICKTAPE_DATABASE_URL", None)
    cli = Path(sys.executable).with_name("ticktape")
    proc = subprocess.Popen([str(cli), "up", "--demo"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "ticktape ready" in line or proc.poll() is not None:
                break
        assert any("ticktape ready" in ln for ln in lines), "".join(lines)
        state = embedded.read_state(home)
        assert state.broker and state.postgres
        rows = 0
        while time.monotonic() < deadline and rows == 0:
            time.sleep(1)
            with psycopg.connect(state.postgres.url) as conn:
                rows = conn.execute("SELECT count(*) FROM tick_data").fetchone()[0]
        assert rows > 0, "no tick reached tick_data"
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200, health.text
        flows = health.json()["flows"]
        assert {name: f["status"] for name, f in flows.items()} == {"ingest": "ok", "persist": "ok", "live": "ok"}

        # Every flow serves Prometheus metrics; persist reports its lag behind the market. A
        # flow is "ok" once its process runs, which can be before it has imported its way to
        # serving them on a loaded machine: each is asked until it answers.
        def metrics(flow: str, needle: str) -> str:
            text = ""
            while time.monotonic() < deadline and needle not in text:
                with contextlib.suppress(httpx.ConnectError):  # not serving yet
                    text = httpx.get(flows[flow]["metrics_url"], timeout=5).text
                if needle not in text:
                    time.sleep(0.3)
            return text

        assert 'ticktape_persist_lag_seconds{table="tick_data"}' in metrics("persist", "ticktape_persist_lag_seconds{")
        assert "ticktape_candles_closed_total" in metrics("live", "ticktape_candles_closed_total")
        assert "ticktape_ticks_out_total" in metrics("ingest", "ticktape_ticks_out_total")
        again = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["flows"]
        assert {name: f["restarts"] for name, f in again.items()} == dict.fromkeys(flows, 0)  # none crashed meanwhile
        pids = [state.broker.pid, state.postgres.pid] + [fs.pid for fs in read_flow_status(home).values() if fs.pid]
        assert len(pids) == 6  # broker, postgres, persist, live, ingest, api
        candles = 0
        while time.monotonic() < deadline and candles == 0:
            time.sleep(0.5)
            with psycopg.connect(state.postgres.url) as conn:
                candles = conn.execute("SELECT count(*) FROM ohlc_candles").fetchone()[0]
        assert candles > 0, "no candle reached ohlc_candles"

        # The operator commands work against the running stack.
        def cli_run(*args: str) -> str:
            r = subprocess.run([str(cli), *args], env=env, capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            return r.stdout

        listed = cli_run("topics", "list")
        assert all(spec.name in listed for spec in load_catalog().values()), listed
        applied = cli_run("db", "status")
        assert all(f"{m.version:04d}" in applied and m.name in applied for m in discover()), applied
        assert "pending" not in applied.lower()
        assert "applied 0 migration(s) (up to date)" in cli_run("db", "migrate")
        services = cli_run("services", "status")
        assert state.broker.bootstrap in services and f":{state.postgres.port}/" in services

        # Paper trading runs the demo deployments; the kill switch reaches the desk and is persisted.
        assert "ema_fast_1m" in cli_run("strategies", "list")
        assert "HALT sent" in cli_run("halt", "--reason", "test of the kill switch")
        halted = None
        while time.monotonic() < deadline + 30 and halted != "HALTED":
            time.sleep(0.5)
            with psycopg.connect(state.postgres.url) as conn:
                row = conn.execute("SELECT state FROM trading_state WHERE account = 'paper'").fetchone()
                halted = row[0] if row else None
        assert halted == "HALTED"
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).json()["trading"] == {"paper": "HALTED"}
        live_metrics = httpx.get(flows["live"]["metrics_url"], timeout=5).text
        assert 'ticktape_trading_state{account="paper"} 2.0' in live_metrics
        # Resume is stamped with the wall clock, the simulated market runs on its own: it still applies.
        cli_run("resume", "--reason", "test over")
        while time.monotonic() < deadline + 60 and halted != "ACTIVE":
            time.sleep(0.5)
            with psycopg.connect(state.postgres.url) as conn:
                halted = conn.execute("SELECT state FROM trading_state WHERE account = 'paper'").fetchone()[0]
        assert halted == "ACTIVE"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
        print(out[-20_000:])  # the stack's log, shown by pytest if the test fails
    assert proc.returncode == 0, out
    assert all(f"stopped {name}" in out for name in ("ingest", "persist", "live", "api")), out
    assert {name: fs.state for name, fs in read_flow_status(home).items()} == {
        "ingest": "stopped",
        "persist": "stopped",
        "live": "stopped",
        "api": "stopped",
    }
    time.sleep(0.5)
    assert [p for p in pids if pid_alive(p)] == []
    shutil.rmtree(home, ignore_errors=True)
