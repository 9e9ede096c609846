"""What the strategies table says of a deployment before any flow runs it."""

from __future__ import annotations

from datetime import date

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
FUTURES = [i.instrument for i in UNIVERSE if i.instrument_type.value == "FUT"]
INDICES = [i.instrument for i in UNIVERSE if i.instrument_type.value == "INDEX"]


@pytest.mark.parametrize(
    "config",
    [
        {"qty": 1},  # every instrument: the F&O lots and the indices
        {"qty": 50},  # some lots fit, some do not
        {"qty": 10_000},  # every lot fits; only the indices remain
        {"qty": 1, "instruments": STOCKS[:3]},  # nothing to say
        {"qty": 1, "instruments": [*STOCKS[:2], FUTURES[0]]},  # one future
        {"qty": 1, "instruments": [*FUTURES[:3], INDICES[0], "NSE:NOT_IN_MASTER"]},
    ],
)
def test_the_table_check_says_what_live_start_says(database_url: str, config: dict) -> None:
    """The API and `strategies list` count the master in SQL; live start walks the loaded
    master (:meth:`Deployment.untradable`). The sentence must be the same."""
    config = {"timeframe": "1m", **config}
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, UNIVERSE)
        master = load_instruments(conn)
        said = deployment_warning(conn, REGISTRY, "ema_crossover", config, True)
        parked = deployment_warning(conn, REGISTRY, "ema_crossover", config, False)
    live = Deployment("d", "ema_crossover", REGISTRY.params("ema_crossover", config)).untradable(master)
    assert said == live
    assert parked is None  # a disabled deployment trades nothing anyway
    if config.get("instruments") == STOCKS[:3]:
        assert said is None
    else:
        assert said is not None and said.endswith("; its signals there are rejected")


def test_params_live_start_would_refuse_are_named(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        bad = deployment_warning(conn, REGISTRY, "ema_crossover", {"fast": "nine"}, False)
        unknown = deployment_warning(conn, REGISTRY, "no_such_strategy", {}, True)
    assert bad is not None and "fast" in bad and "live start refuses" in bad
    assert unknown is not None and "no_such_strategy" in unknown and "live start refuses" in unknown
