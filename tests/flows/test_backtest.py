"""Backtests replay recorded data through the live flow's builder on the real embedded broker:
identical artifacts run to run, fills at the signal bar's close for candle input, results
consistent with the fills, and runs recorded in PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import psycopg
import pytest

import strategies.builtin  # noqa: F401  (registers the built-ins)
from connectors.kafka import KafkaClientConfig, existing_topics
from flows.backtest import BacktestError, BacktestSpec, load_input, run_backtest, universe_for
from operators.strategy_host import Deployment
from schemas.codec import codec_for
from schemas.market import Candle, InstrumentType
from schemas.orders import Fill, OrderIntent, OrderPurpose, OrderType, VenueRequest
from strategies.registry import REGISTRY
from tests.stubs import random_walk_candles, sim_ticks, write_candles_csv, write_ticks_csv

DAY = date(2026, 11, 23)
ARTIFACTS = ("summary.json", "trades.csv", "equity.csv", "intents.jsonl", "fills.jsonl", "report.html")
NO_LOSS_LIMITS = {"daily_loss_limit": None, "daily_loss_halt": None, "strategy_loss_limit": None,
                  "require_stop_loss": False}  # fmt: skip


def _deploy(sid: str, kind: str, **params: object) -> Deployment:
    return Deployment(sid, kind, REGISTRY.params(kind, params), account="backtest")


@pytest.fixture(scope="module")
def tick_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[object]]:
    universe, ticks = sim_ticks(30, 900, seed=11)
    stocks = [i.instrument for i in universe if i.instrument_type is InstrumentType.EQ][:8]
    path = tmp_path_factory.mktemp("bt") / "ticks.csv"
    write_ticks_csv(path, ticks)
    return path, stocks, universe


def test_a_tick_backtest_gives_identical_artifacts_every_run(
    kafka: KafkaClientConfig, tick_file: tuple[Path, list[str], list[object]], tmp_path: Path
) -> None:
    path, stocks, master = tick_file
    spec = BacktestSpec(
        deployments=(
            _deploy("ema", "ema_crossover", fast=3, slow=8, timeframe="5s", qty=10, instruments=stocks[:4],
                    allow_short=True),
            _deploy("rsi", "rsi_reversion", period=5, timeframe="5s", qty=5, instruments=stocks[4:]),
        ),
        data=str(path),
        instruments=tuple(stocks),
        risk=NO_LOSS_LIMITS,
    )  # fmt: skip
    market = load_input(spec)
    assert market.kind == "ticks" and {t.instrument for t in market.events} == set(stocks)
    universe = universe_for(stocks, master)  # type: ignore[arg-type]
    first = run_backtest(spec, market, universe, kafka, tmp_path / "a", run_id="det-a")
    second = run_backtest(spec, market, universe, kafka, tmp_path / "b", run_id="det-b")
    for name in ARTIFACTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    summary = first.summary
    assert summary["counts"]["fills"] > 10 and first.trades
    assert set(summary["strategies"]) == {"ema", "rsi"}
    # The run-scoped topics are gone.
    assert not [t for t in existing_topics(kafka.admin()) if t.startswith("bt.det-")]
    # Trades add up to the total (open trades are marked at the last price, as the equity curve is).
    assert sum(t.net_pnl for t in first.trades) == pytest.approx(summary["total"]["net_pnl"], abs=0.05)
    assert sum(t.charges for t in first.trades) == pytest.approx(summary["total"]["charges"], abs=0.05)
    fills = [codec_for(Fill).decode(line) for line in (tmp_path / "a" / "fills.jsonl").read_bytes().splitlines()]
    assert sum(f.charges for f in fills) == pytest.approx(summary["total"]["charges"], abs=0.01)
    for sid in ("ema", "rsi"):
        mine = [t for t in first.trades if t.strategy == sid and t.closed]
        assert summary["strategies"][sid]["trades"] == len(mine)
    with (tmp_path / "a" / "trades.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(first.trades)
    assert second.summary == summary


def test_a_candle_backtest_fills_market_orders_at_the_signal_bar_close(kafka: KafkaClientConfig, tmp_path: Path) -> None:
    symbols = ["NSE:AAA", "NSE:BBB", "NSE:CCC"]
    candles = random_walk_candles(symbols, DAY, 300, seed=4)
    path = tmp_path / "bars.csv"
    write_candles_csv(path, candles)
    spec = BacktestSpec(
        deployments=(_deploy("ema", "ema_crossover", fast=3, slow=8, timeframe="1m", qty=10, allow_short=True),),
        data=str(path),
        risk=NO_LOSS_LIMITS,
    )
    market = load_input(spec)
    assert market.kind == "candles" and market.timeframe == "1m" and len(market.events) == 900
    result = run_backtest(spec, market, universe_for(symbols), kafka, tmp_path / "out", run_id="bars")
    intents = [codec_for(VenueRequest).decode(v) for v in (tmp_path / "out" / "intents.jsonl").read_bytes().splitlines()]
    fills = {f.client_order_id: f for f in (codec_for(Fill).decode(v) for v in
             (tmp_path / "out" / "fills.jsonl").read_bytes().splitlines())}  # fmt: skip
    by_close = {(c.instrument, c.ts_event): c for c in candles}
    checked = 0
    for it in intents:
        if type(it) is not OrderIntent or it.order_type is not OrderType.MARKET or it.purpose is not OrderPurpose.ENTRY:
            continue
        bar = by_close[(it.instrument, it.ts_event)]  # decided at the close of a bar
        fill = fills[it.client_order_id]
        # One tick of slippage against the order, from the close of that bar.
        expected = round(bar.close + 0.05, 2) if it.side.value == "BUY" else round(bar.close - 0.05, 2)
        assert fill.price == pytest.approx(expected, abs=0.051), (it, bar)
        assert fill.ts_event == it.ts_event
        checked += 1
    assert checked >= 5
    assert result.summary["input"]["kind"] == "candles"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "NSE:" in html and (tmp_path / "out" / "report.png").stat().st_size > 10_000


def test_a_run_is_recorded_in_postgres(kafka: KafkaClientConfig, database_url: str, tmp_path: Path) -> None:
    symbols = ["NSE:AAA", "NSE:BBB"]
    path = tmp_path / "bars.csv"
    write_candles_csv(path, random_walk_candles(symbols, DAY, 200, seed=9))
    spec = BacktestSpec(
        deployments=(_deploy("st", "supertrend_trend", period=5, multiplier=1.5, timeframe="1m", qty=4,
                             allow_short=True),),
        data=str(path),
        risk=NO_LOSS_LIMITS,
    )  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        result = run_backtest(spec, load_input(spec), universe_for(symbols), kafka, tmp_path / "o", run_id="db1", db=conn)
        status, summary, strategy = conn.execute(
            "SELECT status, metrics, strategy FROM backtest_runs WHERE id = 'db1'"
        ).fetchone()
        rows = conn.execute(
            "SELECT count(*), coalesce(sum(pnl_net), 0)::float8 FROM backtest_trades WHERE run_id = 'db1'"
        ).fetchone()
    assert status == "COMPLETED" and strategy == "st"
    assert summary == json.loads((tmp_path / "o" / "summary.json").read_text())
    assert rows[0] == len(result.trades) > 0
    assert rows[1] == pytest.approx(sum(round(t.net_pnl, 2) for t in result.trades), abs=0.01)


def test_a_strategy_finer_than_the_candle_input_is_refused(kafka: KafkaClientConfig, tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    write_candles_csv(path, random_walk_candles(["NSE:AAA"], DAY, 20))
    spec = BacktestSpec(deployments=(_deploy("e", "ema_crossover", timeframe="5s"),), data=str(path), timeframe="1m")
    with pytest.raises(BacktestError, match="finer than the 1m candle input"):
        run_backtest(spec, load_input(spec), universe_for(["NSE:AAA"]), kafka, tmp_path / "o", run_id="fine")


def test_unknown_derivatives_need_the_instrument_master() -> None:
    with pytest.raises(BacktestError, match="NFO:NIFTYFUT is not in the instrument master"):
        universe_for(["NSE:AAA", "NFO:NIFTYFUT"])
    assert [i.lot_size for i in universe_for(["NSE:AAA"])] == [1]


def _cli(args: list[str], kafka: KafkaClientConfig, database_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap, "TICKTAPE_DATABASE_URL": database_url,
           "TICKTAPE_HOME": str(home), "COLUMNS": "120"}  # fmt: skip
    exe = Path(sys.executable).parent / "ticktape"
    return subprocess.run([str(exe), "backtest", *args], check=False, env=env, capture_output=True, text=True, timeout=180)


def test_the_cli_runs_a_backtest_and_reports_bad_input(kafka: KafkaClientConfig, database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    write_candles_csv(path, random_walk_candles(["NSE:AAA", "NSE:BBB"], DAY, 120, seed=5))
    params = json.dumps({"fast": 3, "slow": 8, "timeframe": "1m", "qty": 5})
    done = _cli(["--strategy", "ema_crossover", "--params", params, "--data", str(path), "--instruments", "NSE:AAA",
                 "--from", "2026-11-23", "--to", "2026-11-23", "--out", str(tmp_path / "out")],
                kafka, database_url, tmp_path / "home")  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout
    assert "120 candles of 1 instrument," in done.stdout and "profit factor" in done.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["input"]["instruments"] == 1 and summary["spec"]["instruments"] == ["NSE:AAA"]
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT status FROM backtest_runs").fetchall() == [("COMPLETED",)]
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace(",NSE:BBB,", ",NSE:BBB,oops,", 1))
    failed = _cli(["--strategy", "ema_crossover", "--data", str(bad), "--out", str(tmp_path / "o2")], kafka,
                  database_url, tmp_path / "home")  # fmt: skip
    assert failed.returncode == 2
    assert f"{bad}:3: 8 fields, header has 7" in failed.stdout.replace("\n", "")
    unknown = _cli(["--strategy", "nope", "--data", str(path)], kafka, database_url, tmp_path / "home")
    assert unknown.returncode == 2 and "known strategies" in unknown.stdout + unknown.stderr


def test_a_candle_input_dead_letters_what_is_not_a_closed_bar_of_its_timeframe() -> None:
    import msgspec

    from flows.pipeline import Reject, market_parser
    from schemas.codec import encode

    (bar,) = random_walk_candles(["NSE:AAA"], DAY, 1)
    values = [encode(bar), encode(msgspec.structs.replace(bar, timeframe="5m")),
              encode(msgspec.structs.replace(bar, final=False)), b"{not json"]  # fmt: skip
    parse = market_parser(Candle, "bars", "1m")
    out = [parse(v, 0, k) for k, v in enumerate(values)]
    assert out[0] == (bar.ts_event, ("NSE:AAA", bar))
    rejects = [v for _ts, (key, v) in out[1:] if key == ""]
    assert len(rejects) == 3 and all(type(r) is Reject for r in rejects)
    assert "bars[0]@1: expected a closed 1m candle, got a closed 5m one" in rejects[0].detail
    assert "got an open 1m one" in rejects[1].detail and rejects[1].instrument == "NSE:AAA"
    assert rejects[1].ts == bar.ts_event and rejects[1].payload == values[2]
    assert "cannot decode bars[0]@3" in rejects[2].detail and rejects[2].instrument is None
