"""Backtest runs and trades in PostgreSQL (``backtest_runs``, ``backtest_trades``).

A run row is written when the run starts (RUNNING) and completed (COMPLETED, with the summary
in ``metrics``) or FAILED at the end; its trades are replaced as a whole, so storing the same
run twice leaves one copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb


def _ts(ns: int | None) -> datetime | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns // 10**9, tz=UTC).replace(microsecond=ns % 10**9 // 1000)


def start_run(conn: psycopg.Connection, run_id: str, spec: Mapping[str, Any], window: tuple[int | None, int | None]) -> None:
    """Record a run as RUNNING; ``spec`` is :meth:`BacktestSpec.facts`, ``window`` its [from, to) in ns."""
    strategies = spec["strategies"]
    conn.execute(
        """INSERT INTO backtest_runs (id, status, strategy, params, instruments, data_source, timeframe, from_time,
                                      to_time, spec, started_at)
           VALUES (%s, 'RUNNING', %s, %s, %s, %s, %s, %s, %s, %s, now())
           ON CONFLICT (id) DO UPDATE SET status = 'RUNNING', strategy = EXCLUDED.strategy, params = EXCLUDED.params,
               instruments = EXCLUDED.instruments, data_source = EXCLUDED.data_source, timeframe = EXCLUDED.timeframe,
               from_time = EXCLUDED.from_time, to_time = EXCLUDED.to_time, spec = EXCLUDED.spec, metrics = NULL,
               error = NULL, started_at = now(), finished_at = NULL""",
        (
            run_id,
            ",".join(s["id"] for s in strategies)[:100],
            Jsonb({s["id"]: s["params"] for s in strategies}),
            list(spec["instruments"]),
            spec["data"],
            spec["timeframe"],
            _ts(window[0]),
            _ts(window[1]),
            Jsonb(dict(spec)),
        ),
    )


def finish_run(
    conn: psycopg.Connection, run_id: str, summary: Mapping[str, Any], out_dir: str, trades: Iterable[Any]
) -> int:
    """Mark the run COMPLETED with its summary and replace its trades; returns the trade count."""
    rows = [
        (run_id, k, t.strategy, t.instrument, t.direction, t.qty, _ts(t.entry_time), t.entry_price, _ts(t.exit_time),
         t.exit_price, round(t.gross_pnl, 2), round(t.charges, 2), round(t.net_pnl, 2), t.closed)
        for k, t in enumerate(trades)
    ]  # fmt: skip
    with conn.transaction():
        conn.execute("DELETE FROM backtest_trades WHERE run_id = %s", (run_id,))
        with conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO backtest_trades (run_id, trade_no, strategy, instrument, side, quantity, entry_time,
                       entry_price, exit_time, exit_price, pnl_gross, charges, pnl_net, closed)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                rows,
            )
        conn.execute(
            "UPDATE backtest_runs SET status = 'COMPLETED', metrics = %s, out_dir = %s, finished_at = now() WHERE id = %s",
            (Jsonb(dict(summary)), out_dir, run_id),
        )
    return len(rows)


def fail_run(conn: psycopg.Connection, run_id: str, error: str) -> None:
    conn.execute(
        "UPDATE backtest_runs SET status = 'FAILED', error = %s, finished_at = now() WHERE id = %s",
        (error[:2000], run_id),
    )
