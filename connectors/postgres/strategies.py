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

from operators.strategy_host import Deployment, LotFit
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


# The active master by (is an index, lot) - LotFit.groups in SQL, for a deployment of every
# instrument - and the rows of the instruments a deployment lists. Lots as load_instruments
# reads them (none or 0 is 1); first symbols in code point order, as Python's min().
_GROUPS = """SELECT instrument_type = 'INDEX', coalesce(nullif(lot_size, 0), 1), count(*), min(symbol COLLATE "C")
             FROM instruments WHERE is_active GROUP BY 1, 2"""
_LISTED = """SELECT symbol, instrument_type = 'INDEX', coalesce(nullif(lot_size, 0), 1)
             FROM instruments WHERE is_active AND symbol = ANY(%s)"""


def deployment_warning(
    conn: psycopg.Connection,
    registry: StrategyRegistry,
    kind: str,
    config: dict[str, Any],
    enabled: bool,
    counted: dict[tuple[str, ...], tuple[list[Any], list[str]]] | None = None,
) -> str | None:
    """What live start would say of a stored deployment, or None: params it refuses, or (when
    enabled) instruments it can never trade (:meth:`Deployment.untradable`, the same sentence,
    counted here in SQL so the master is not loaded). ``counted`` keeps the counts per
    instrument list across calls, so listing many deployments of the whole master counts it
    once."""
    try:
        params = registry.params(kind, config)
    except (ParamsError, UnknownStrategy) as exc:
        return f"{exc}; live start refuses the strategies table until it is fixed"
    if not enabled:
        return None
    symbols = tuple(params.instruments)
    found = None if counted is None else counted.get(symbols)
    if found is None:
        if symbols:
            rows = conn.execute(_LISTED, (list(symbols),)).fetchall()
            have = {r[0] for r in rows}
            found = LotFit.groups(rows), sorted(s for s in set(symbols) if s not in have)
        else:
            found = conn.execute(_GROUPS).fetchall(), []
        if counted is not None:
            counted[symbols] = found
    groups, missing = found
    return LotFit.tally(groups, params.qty, missing).untradable()


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


def record_session(
    conn: psycopg.Connection,
    topic_prefix: str,
    strat: Any,
    trading: Any,
    analytics: Any,
    warmup_days: int,
    recovery: bool,
) -> int:
    """Write a ``live_sessions`` row for a start of flows.live; returns its id."""
    from schemas.codec import to_builtins

    deployments = [
        {"id": d.strategy_id, "kind": d.kind, "params": to_builtins(d.params), "account": d.account, "enabled": d.enabled}
        for d in strat.deployments
    ]
    row = conn.execute(
        """INSERT INTO live_sessions (topic_prefix, trade_from, deployments, accounts, halted, timeframes, indicators,
                                      warmup_days, recovery)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        (
            topic_prefix,
            strat.trade_from,
            Jsonb(deployments),
            list(trading.accounts),
            sorted(trading.halted),
            list(analytics.timeframes),
            list(analytics.indicators),
            warmup_days,
            recovery,
        ),
    ).fetchone()
    return int(row[0])


def load_session(conn: psycopg.Connection, registry: StrategyRegistry, session_id: int | None = None) -> dict[str, Any]:
    """A ``live_sessions`` row (the newest when ``session_id`` is None) with its deployments rebuilt."""
    row = conn.execute(
        """SELECT id, started_at, topic_prefix, trade_from, deployments, accounts, halted, timeframes, indicators,
                  warmup_days, recovery FROM live_sessions WHERE %(id)s::int IS NULL OR id = %(id)s
           ORDER BY id DESC LIMIT 1""",
        {"id": session_id},
    ).fetchone()
    if row is None:
        msg = "no recorded live session" + (f" with id {session_id}" if session_id is not None else "")
        raise DeploymentError(msg)
    keys = ("id", "started_at", "topic_prefix", "trade_from", "deployments", "accounts", "halted", "timeframes",
            "indicators", "warmup_days", "recovery")  # fmt: skip
    out = dict(zip(keys, row, strict=True))
    out["deployments"] = tuple(
        Deployment(d["id"], d["kind"], registry.params(d["kind"], d["params"]), d["account"], d["enabled"])
        for d in out["deployments"]
    )
    return out
