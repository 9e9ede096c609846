"""`ticktape strategies list` shows what live start would say about each deployment."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg

import strategies.builtin  # noqa: F401
from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig
from connectors.postgres.instruments import load_instruments, upsert_instruments
from connectors.postgres.strategies import save_deployments
from operators.strategy_host import Deployment
from strategies.registry import REGISTRY


def _list(kafka: KafkaClientConfig, database_url: str, home: Path) -> str:
    env = {**os.environ, "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap, "TICKTAPE_DATABASE_URL": database_url,
           "TICKTAPE_HOME": str(home), "COLUMNS": "300"}  # fmt: skip
    exe = Path(sys.executable).parent / "ticktape"
    done = subprocess.run([str(exe), "strategies", "list"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_list_names_deployments_that_cannot_trade_and_params_live_start_refuses(
    kafka: KafkaClientConfig, database_url: str, tmp_path: Path
) -> None:
    universe = build_universe(date(2026, 11, 20), size=40)
    stocks = [i.instrument for i in universe if i.instrument_type.value == "EQ"][:3]
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, universe)
        save_deployments(conn, [
            ("stocks", "ema_crossover", {"timeframe": "1m", "qty": 10, "instruments": stocks}, True, ""),
            ("everything", "ema_crossover", {"timeframe": "1m", "qty": 1}, True, ""),
            ("parked", "ema_crossover", {"timeframe": "1m", "qty": 1}, False, ""),
            ("broken", "ema_crossover", {"timeframe": "1m", "fast": "nine"}, True, ""),
        ])  # fmt: skip
    out = _list(kafka, database_url, tmp_path / "home")
    notes = {line.split(":", 1)[0]: line for line in out.splitlines() if ": " in line and "│" not in line}
    assert all(sid in out for sid in ("stocks", "everything", "parked", "broken")), out
    assert set(notes) == {"everything", "broken"}, out  # tradable and disabled deployments say nothing
    with psycopg.connect(database_url, autocommit=True) as conn:
        master = load_instruments(conn)
    live = Deployment("everything", "ema_crossover", REGISTRY.params("ema_crossover", {"qty": 1})).untradable(master)
    assert notes["everything"] == f"everything: {live}"  # what live start logs
    assert "are indices" in notes["everything"] and "above its qty 1" in notes["everything"]
    assert "fast" in notes["broken"] and "live start refuses" in notes["broken"]
