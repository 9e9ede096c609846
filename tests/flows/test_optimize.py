"""Optimization: the search space, ranking, parallel evaluation that matches single backtests,
and walk-forward windows - on the real embedded broker."""

from __future__ import annotations

import csv
from datetime import date
from pathlib import Path

import pytest

import strategies.builtin  # noqa: F401  (registers the built-ins)
from connectors.kafka import KafkaClientConfig, existing_topics
from flows.backtest import BacktestError, BacktestSpec, load_input, run_backtest, universe_for
from flows.optimize import (
    OptimizeError,
    Point,
    evaluate_all,
    grid,
    parse_space,
    rank,
    sample,
    trading_days,
    walk_forward,
    write_results,
)
from operators.strategy_host import Deployment
from strategies.registry import REGISTRY
from tests.stubs import random_walk_candles, write_candles_csv

FIXED = {"timeframe": "1m", "qty": 10, "allow_short": True}
RISK = {"daily_loss_limit": None, "daily_loss_halt": None, "strategy_loss_limit": None, "require_stop_loss": False}
SYMBOLS = ["NSE:AAA", "NSE:BBB", "NSE:CCC"]


def test_grid_and_random_points() -> None:
    space = parse_space('{"fast": [3, 5], "slow": {"min": 10, "max": 20, "step": 5}, "band": {"min": 0.1, "max": 0.3}}')
    pts = grid({k: space[k] for k in ("fast", "slow")})
    assert len(pts) == 6 and pts[0] == {"fast": 3, "slow": 10} and pts[-1] == {"fast": 5, "slow": 20}
    assert grid({"band": {"min": 0.1, "max": 0.3, "step": 0.1}}) == [{"band": 0.1}, {"band": 0.2}, {"band": 0.3}]
    drawn = sample(space, 20, seed=7)
    assert drawn == sample(space, 20, seed=7) and len(drawn) == 20
    assert all(p["fast"] in (3, 5) and 10 <= p["slow"] <= 20 and isinstance(p["slow"], int) for p in drawn)
    assert all(0.1 <= p["band"] <= 0.3 for p in drawn)
    for bad in ('{"fast": []}', '{"fast": {"min": 5, "max": 1}}', "{}", '{"fast": {"min": 1, "max": 5, "step": 0}}'):
        with pytest.raises(OptimizeError):
            parse_space(bad)


def test_ranking_puts_missing_values_last_and_drawdown_lowest_first() -> None:
    pts = [
        Point({"a": 1}, {"sharpe": None, "max_drawdown": 5.0}, 0),
        Point({"a": 2}, {"sharpe": 1.5, "max_drawdown": 9.0}, 0),
        Point({"a": 3}, {"sharpe": -0.5, "max_drawdown": 1.0}, 0),
    ]
    assert [p.params["a"] for p in rank(pts, "sharpe")] == [2, 3, 1]
    assert [p.params["a"] for p in rank(pts, "max_drawdown")] == [3, 1, 2]
    with pytest.raises(OptimizeError, match="metric 'luck'"):
        rank(pts, "luck")


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("opt") / "bars.csv"
    write_candles_csv(path, random_walk_candles(SYMBOLS, date(2026, 11, 23), 3 * 375, seed=12))  # 3 sessions
    spec = BacktestSpec(
        deployments=(Deployment("ema", "ema_crossover", REGISTRY.params("ema_crossover", {**FIXED, "fast": 3, "slow": 8}),
                                account="backtest"),),
        data=str(path),
        risk=RISK,
    )  # fmt: skip
    return spec, load_input(spec)


def test_parallel_points_match_single_backtests(kafka: KafkaClientConfig, market, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec, data = market
    universe = universe_for(SYMBOLS)
    points = grid({"fast": [3, 5], "slow": [8, 13]})
    parallel = evaluate_all(spec, FIXED, points, data, universe, kafka, processes=2)
    assert [p.params for p in parallel] == points
    sequential = evaluate_all(spec, FIXED, points[:2], data, universe, kafka, processes=1)
    assert [p.metrics for p in sequential] == [p.metrics for p in parallel[:2]]
    # The point equals a plain backtest with those params.
    params = REGISTRY.params("ema_crossover", {**FIXED, **points[3]})
    single = run_backtest(
        BacktestSpec(deployments=(Deployment("ema", "ema_crossover", params, account="backtest"),), data=spec.data,
                     risk=RISK),
        data, universe, kafka, tmp_path, run_id="opt-single",
    )  # fmt: skip
    assert parallel[3].metrics == single.summary["total"]
    assert len({p.metrics["net_pnl"] for p in parallel}) > 1  # the params matter
    assert all(p.metrics["trades"] > 0 for p in parallel)
    assert not [t for t in existing_topics(kafka.admin()) if t.startswith(("bt.opt", "bt.opt-"))]
    ranked = rank(parallel, "net_pnl")
    write_results(tmp_path / "o", ranked, "net_pnl")
    with (tmp_path / "o" / "optimize.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[0]["net_pnl"]) == pytest.approx(ranked[0].metrics["net_pnl"], rel=1e-5)
    assert "<table>" in (tmp_path / "o" / "optimize.html").read_text()


def test_invalid_points_are_reported_not_run(kafka: KafkaClientConfig, market) -> None:  # type: ignore[no-untyped-def]
    spec, data = market
    (pt,) = evaluate_all(spec, FIXED, [{"fast": 9, "slow": 3}], data, universe_for(SYMBOLS), kafka, processes=1)
    assert "error" in pt.metrics and "slow" in pt.metrics["error"]
    assert rank([pt], "net_pnl") == [pt]


def test_walk_forward_runs_the_best_in_sample_point_out_of_sample(kafka: KafkaClientConfig, market, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec, data = market
    assert len(trading_days(data)) == 3
    points = grid({"fast": [3, 5], "slow": [13]})
    folds = walk_forward(spec, FIXED, points, data, universe_for(SYMBOLS), kafka, "net_pnl", 1, 1, processes=2)
    assert len(folds) == 2
    for f in folds:
        assert len(f.in_days) == 1 and len(f.out_days) == 1 and f.out_days[0] > f.in_days[0]
        assert f.best.params in points and f.out.params == f.best.params
    write_results(tmp_path, rank([f.best for f in folds], "net_pnl"), "net_pnl", folds)
    with (tmp_path / "walkforward.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2
    with pytest.raises(BacktestError, match="needs 5 trading days; the input has 3"):
        walk_forward(spec, FIXED, points, data, universe_for(SYMBOLS), kafka, "net_pnl", 4, 1)
