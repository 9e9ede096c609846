"""Live-replay parity through the CLI: a paper session run by `ticktape up` on the simulator,
replayed by `ticktape replay --from-recorded`, trades exactly the same orders and fills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psycopg
import pytest

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig
from connectors.postgres.strategies import save_deployments
from connectors.processes import free_port
from flows.parity import Diff, diff
from schemas.market import InstrumentType
from schemas.orders import Fill, Side
from schemas.topics import TopicCatalog
from tests import stubs

pytestmark = pytest.mark.slow


def test_a_recorded_paper_session_replays_to_an_empty_diff(
    kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, tmp_path: Path
) -> None:
    stocks = [i.instrument for i in build_universe(date(2026, 11, 23), 60) if i.instrument_type is InstrumentType.EQ][:10]
    with psycopg.connect(database_url, autocommit=True) as conn:
        save_deployments(conn, [
            ("ema_5s", "ema_crossover", {"fast": 3, "slow": 8, "timeframe": "5s", "qty": 10, "instruments": stocks[:5],
                                         "allow_short": True}, True, ""),
            ("st_5s", "supertrend_trend", {"period": 5, "multiplier": 1.5, "timeframe": "5s", "qty": 10,
                                           "instruments": stocks[5:], "allow_short": True}, True, ""),
        ])  # fmt: skip
    env = {**os.environ, "TICKTAPE_HOME": str(tmp_path), "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap,
           "TICKTAPE_DATABASE_URL": database_url, "TICKTAPE_TOPIC_PREFIX": catalog.prefix,
           "TICKTAPE_SIM_INSTRUMENTS": "60", "TICKTAPE_API_PORT": str(free_port()),
           "TICKTAPE_METRICS_PORT_BASE": str(free_port()), "TICKTAPE_STRATEGY_WARMUP_DAYS": "0"}  # fmt: skip
    cli = Path(sys.executable).with_name("ticktape")
    up = subprocess.Popen([str(cli), "up", "--speed", "3"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        fills = 0
        while time.monotonic() < deadline and fills < 12 and up.poll() is None:
            time.sleep(1)
            with psycopg.connect(database_url) as conn:
                fills = conn.execute("SELECT count(*) FROM fills").fetchone()[0]
        assert fills >= 12, f"the session made {fills} fills"
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=90)
    assert up.returncode == 0, out
    done = subprocess.run([str(cli), "replay", "--from-recorded"], env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "parity: the replay traded exactly what the session traded" in done.stdout
    compared = done.stdout.split("compared ", 1)[1]
    assert int(compared.split(" fills")[0].split()[-1]) >= 12, done.stdout


def _fill(trade_id: str, price: float, ts: int) -> Fill:
    return stubs.fill(Side.BUY, 1, price, ts=ts, trade_id=trade_id, client_order_id="C1", strategy="s",
                      instrument="NSE:A")  # fmt: skip


def test_the_diff_names_what_differs_and_ignores_only_time() -> None:
    session = [_fill("a", 10.0, 5), _fill("b", 11.0, 6), _fill("old", 1.0, 1)]
    replay = [_fill("a", 10.0, 7), _fill("b", 11.05, 6), _fill("c", 12.0, 8), _fill("late", 13.0, 99)]
    d: Diff = diff(session, replay, horizon=50, since=2)
    assert not d.empty and d.compared == {"fill": 3} and d.beyond_horizon == 1
    assert d.missing == [] and [x.split(":")[0] for x in d.extra] == ["fill c"]
    assert d.changed == ["fill b: price 11.0 != 11.05"]
    assert diff(session[:1], replay[:1], 50, 2).empty
