"""What the strategies table says of a deployment before any flow runs it."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pytest

import strategies.builtin  # noqa: F401
from connectors.brokers.universe import build_universe
from connectors.postgres.instruments import load_instruments, upsert_instruments
from connectors.postgres.strategies import deployment_warning
from operators.strategy_host import Deployment
from strategies.registry import REGISTRY

UNIVERSE = build_universe(date(2026, 11, 20), 500)
STOCKS = [i.instrument for i in UNIVERSE if i.instrument_type.value == "EQ"]
FUTURES = [i.instrument for i in UNIVERSE if i.instrument_type.value in ("FUT", "CE", "PE")]  # lots of 35 and 75
INDICES = [i.instrument for i in UNIVERSE if i.instrument_type.value == "INDEX"]


def _master(conn: psycopg.Connection) -> None:
    """The simulator's master, plus rows the flows read in their own way: a lot that is NULL
    or 0 (read as 1) and an inactive stock (not in the master the flows load)."""
    upsert_instruments(conn, UNIVERSE)
    conn.execute("UPDATE instruments SET lot_size = NULL WHERE symbol = %s", (FUTURES[0],))
    conn.execute("UPDATE instruments SET lot_size = 0 WHERE symbol = %s", (FUTURES[1],))
    conn.execute("UPDATE instruments SET is_active = FALSE WHERE symbol = %s", (STOCKS[5],))


@pytest.mark.parametrize(
    "config",
    [
        {"qty": 1},  # every instrument: the F&O lots and the indices
        {"qty": 50},  # some lots fit, some do not
        {"qty": 10_000},  # every lot fits; only the indices remain
        {"qty": 1, "instruments": STOCKS[:3]},  # nothing to say
        {"qty": 1, "instruments": [*STOCKS[:2], FUTURES[2]]},  # one future
        {"qty": 1, "instruments": FUTURES[:2]},  # lots of NULL and 0 are read as 1: nothing to say
        {"qty": 1, "instruments": [*FUTURES[2:5], INDICES[0], "NSE:NOT_IN_MASTER", STOCKS[5]]},  # and 2 missing
    ],
)
def test_the_table_check_says_what_live_start_says(database_url: str, config: dict[str, Any]) -> None:
    """The API and `strategies list` count the master in SQL; live start walks the loaded
    master (:meth:`Deployment.untradable`). The sentence must be the same."""
    config = {"timeframe": "1m", **config}
    with psycopg.connect(database_url, autocommit=True) as conn:
        _master(conn)
        master = load_instruments(conn)
        said = deployment_warning(conn, REGISTRY, "ema_crossover", config, True)
        parked = deployment_warning(conn, REGISTRY, "ema_crossover", config, False)
    live = Deployment("d", "ema_crossover", REGISTRY.params("ema_crossover", config)).untradable(master)
    assert said == live
    assert parked is None  # a disabled deployment trades nothing anyway
    if config.get("instruments") in (STOCKS[:3], FUTURES[:2]):
        assert said is None
    else:
        assert said is not None and said.endswith("; its signals there are rejected")
    if STOCKS[5] in config.get("instruments", ()):
        first = min("NSE:NOT_IN_MASTER", STOCKS[5])
        assert said is not None and f"2 (e.g. {first}) are not in the active instrument master" in said


def test_counts_are_shared_across_deployments_of_one_instrument_list(database_url: str) -> None:
    """The listing keeps the counts per instrument list; each deployment still applies its own qty."""
    counted: dict[tuple[str, ...], Any] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        _master(conn)
        master = load_instruments(conn)
        said = [deployment_warning(conn, REGISTRY, "ema_crossover", {"qty": q}, True, counted) for q in (1, 50, 10_000)]
    assert list(counted) == [()]  # the whole master, counted once
    live = [Deployment("d", "ema_crossover", REGISTRY.params("ema_crossover", {"qty": q})).untradable(master)
            for q in (1, 50, 10_000)]  # fmt: skip
    assert said == live and len(set(said)) == 3


def test_params_live_start_would_refuse_are_named(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        bad = deployment_warning(conn, REGISTRY, "ema_crossover", {"fast": "nine"}, False)
        unknown = deployment_warning(conn, REGISTRY, "no_such_strategy", {}, True)
    assert bad is not None and "fast" in bad and "live start refuses" in bad
    assert unknown is not None and unknown.startswith("unknown strategy 'no_such_strategy'; known strategies: ")
    assert "live start refuses" in unknown
