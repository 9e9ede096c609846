"""Strategy deployments and trading state in PostgreSQL.

The ``strategies`` table is the source of truth for what runs: one row per deployment
(``id`` = strategy id, ``class_name`` = registry name, ``config`` = params JSON, including
``instruments`` and ``timeframe``). The flows read it at start; run-time changes arrive as
control commands, which the persistence flow writes back, so a restart runs what was last
configured. ``trading_state`` keeps each account's ACTIVE/REDUCING/HALTED state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from operators.strategy_host import Deployment
from strategies.registry import ParamsError, StrategyRegistry, UnknownStrategy


class DeploymentError(ValueError):
    """A stored deployment cannot run; the message names the strategy id."""


def load_deployments(conn: psycopg.Connection, registry: StrategyRegistry) -> tuple[Deployment, ...]:
    """Every stored deployment, validated; a bad row stops start-up naming the strategy."""
    rows = conn.execute("SELECT id, class_name, config, is_enabled, account FROM strategies ORDER BY id").fetchall()
    out = []
    for sid, kind, config, enabled, account in rows:
        try:
            params = registry.params(kind, config)
        except (ParamsError, UnknownStrategy) as exc:
            msg = f"strategy {sid!r} in the strategies table: {exc}"
            raise DeploymentError(msg) from None
        out.append(Deployment(sid, kind, params, account, bool(enabled)))
    return tuple(out)


def save_deployments(conn: psycopg.Connection, deployments: Iterable[tuple[str, str, dict[str, Any], bool, str]]) -> int:
    """Insert ``(id, kind, config, enabled, description)`` rows that do not exist yet."""
    n = 0
    for sid, kind, config, enabled, description in deployments:
        cur = conn.execute(
            "INSERT INTO strategies (id, name, description, class_name, config, is_enabled) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
            (sid, sid, description, kind, Jsonb(config), enabled),
        )
        n += cur.rowcount
    return n


def demo_deployments(symbols: Sequence[str]) -> list[tuple[str, str, dict[str, Any], bool, str]]:
    """What the demo trades on paper: a few built-ins on 1-minute bars of liquid stocks."""
    stocks = list(symbols)
    half = max(1, len(stocks) // 2)
    return [
        ("ema_fast_1m", "ema_crossover", {"fast": 5, "slow": 13, "timeframe": "1m", "qty": 10,
                                          "instruments": stocks[:half]}, True, "EMA 5/13 crossover, long only"),
        ("supertrend_1m", "supertrend_trend", {"timeframe": "1m", "qty": 10, "instruments": stocks[half:],
                                               "allow_short": True}, True, "SuperTrend 10,3 both ways"),
        ("rsi_1m", "rsi_reversion", {"timeframe": "1m", "qty": 10, "instruments": stocks}, True,
         "RSI 14 mean reversion"),
    ]  # fmt: skip


def halted_accounts(conn: psycopg.Connection) -> frozenset[str]:
    rows = conn.execute("SELECT account FROM trading_state WHERE state = 'HALTED'").fetchall()
    return frozenset(r[0] for r in rows)
