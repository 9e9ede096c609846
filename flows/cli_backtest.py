"""``ticktape backtest``: replay recorded data through the live flow and report the results.

Uses the broker and PostgreSQL of the settings (``TICKTAPE_KAFKA_BOOTSTRAP`` /
``TICKTAPE_DATABASE_URL``), else the embedded ones, which are started if they are not running
(they stay up, like ``ticktape services start``). The run is recorded in ``backtest_runs`` /
``backtest_trades`` and its artifacts written to ``--out`` (default
``$TICKTAPE_HOME/backtests/<run id>``).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

IST = timezone(timedelta(hours=5, minutes=30))
console = Console()


def parse_when(text: str | None, *, end: bool = False) -> int | None:
    """``2026-11-23`` (an IST day: its start, or with ``end`` the start of the next day) or an
    ISO-8601 time with an offset; UTC epoch ns.

    >>> parse_when("2026-11-23") == parse_when("2026-11-22", end=True)
    True
    """
    if text is None:
        return None
    try:
        d = date.fromisoformat(text)
    except ValueError:
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            msg = f"{text!r}: expected a date (2026-11-23) or a time with an offset (2026-11-23T10:00+05:30)"
            raise typer.BadParameter(msg) from None
        if dt.tzinfo is None:
            msg = f"{text!r} has no UTC offset (add +05:30 for IST)"
            raise typer.BadParameter(msg) from None
    else:
        dt = datetime.combine(d + timedelta(days=1) if end else d, time(0), tzinfo=IST)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def deployments_from(strategies: list[str], params: list[str], instruments: tuple[str, ...]) -> tuple[Any, ...]:
    """One deployment per ``--strategy``; ``--params`` either once for all or once per strategy.
    A strategy without ``instruments`` in its params trades every ``--instruments`` symbol."""
    import strategies.builtin
    from operators.strategy_host import Deployment
    from strategies.registry import REGISTRY, ParamsError, UnknownStrategy

    if len(params) not in (0, 1, len(strategies)):
        msg = f"give --params once (for every strategy) or once per --strategy ({len(strategies)}), not {len(params)}"
        raise typer.BadParameter(msg)
    out = []
    for k, kind in enumerate(strategies):
        raw = params[k] if len(params) == len(strategies) else (params[0] if params else "{}")
        try:
            config = json.loads(raw)
        except json.JSONDecodeError as exc:
            msg = f"--params for {kind}: not valid JSON ({exc})"
            raise typer.BadParameter(msg) from None
        if not isinstance(config, dict):
            msg = f"--params for {kind}: expected a JSON object"
            raise typer.BadParameter(msg)
        if instruments and "instruments" not in config:
            config["instruments"] = list(instruments)
        try:
            p = REGISTRY.params(kind, config)
        except (ParamsError, UnknownStrategy) as exc:
            msg = f"{exc}; known strategies: {', '.join(sorted(REGISTRY))}" if isinstance(exc, UnknownStrategy) else str(exc)
            raise typer.BadParameter(msg) from None
        sid = kind if strategies.count(kind) == 1 else f"{kind}_{k + 1}"
        out.append(Deployment(sid, kind, p, account="backtest"))
    return tuple(out)


def backtest(
    strategy: Annotated[list[str], typer.Option(help="registered strategy name; repeat for several")],
    data: Annotated[str, typer.Option(help="CSV/Parquet file of ticks or candles, or 'db' (tick_data/ohlc_candles)")],
    params: Annotated[list[str] | None, typer.Option(help="params JSON: once for all, or once per --strategy")] = None,
    instruments: Annotated[str, typer.Option(help="comma-separated EXCHANGE:SYMBOL list (default: all)")] = "",
    from_: Annotated[str | None, typer.Option("--from", help="first IST day or time (inclusive)")] = None,
    to: Annotated[str | None, typer.Option(help="last IST day (inclusive) or time (exclusive)")] = None,
    timeframe: Annotated[str | None, typer.Option(help="candle input timeframe (files: default 1m; db: candles)")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default: <home>/backtests/<run id>)")] = None,
    capital: Annotated[float, typer.Option(help="starting capital, rupees")] = 1_000_000.0,
    risk: Annotated[str, typer.Option(help="RiskConfig overrides as JSON, e.g. '{\"daily_loss_limit\": null}'")] = "{}",
    skip_bad: Annotated[bool, typer.Option(help="skip (and count) bad input rows instead of stopping")] = False,
    keep_topics: Annotated[bool, typer.Option(help="keep the run's bt.<run>.* topics")] = False,
) -> None:
    """Replay ticks or candles through the live flow (strategies, risk gate, stops, simulated
    venue) and write summary.json, trades.csv, equity.csv and report.html/png."""
    import uuid

    from connectors import embedded
    from connectors.history import HistoryError
    from connectors.kafka import KafkaClientConfig
    from connectors.postgres import connect
    from connectors.postgres.instruments import load_instruments
    from connectors.postgres.migrate import migrate
    from flows.backtest import BacktestError, BacktestSpec, load_input, run_backtest, universe_for
    from flows.cli import _endpoints, _settings

    syms = tuple(x.strip() for x in instruments.split(",") if x.strip())
    try:
        risk_overrides = json.loads(risk)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--risk: not valid JSON ({exc})") from None  # noqa: EM102
    spec = BacktestSpec(
        deployments=deployments_from(strategy, params or [], syms),
        data=data,
        instruments=syms,
        start=parse_when(from_),
        end=parse_when(to, end=True) if to and len(to) == 10 else parse_when(to),
        timeframe=timeframe,
        capital=capital,
        risk=risk_overrides,
        skip_bad=skip_bad,
    )
    s = _settings()
    if s.kafka_bootstrap is None:
        embedded.start_broker(s.home_dir)
    if s.database_url is None:
        embedded.start_postgres(s.home_dir)
    ep = _endpoints(s)
    run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    out_dir = out or s.home_dir / "backtests" / run_id
    try:
        with connect(ep.database_url, autocommit=True) as conn:
            migrate(conn)
            console.print(f"reading {data} ...")
            market = load_input(spec, conn)
            universe = universe_for({e.instrument for e in market.events}, load_instruments(conn))
            result = run_backtest(spec, market, universe, KafkaClientConfig.from_settings(s, ep.bootstrap), out_dir,
                                  run_id=run_id, keep_topics=keep_topics, progress=True, db=conn)  # fmt: skip
    except (HistoryError, BacktestError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    print_summary(result.summary, result.out_dir, run_id)


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{v:.2f} %"
    if kind == "dur":
        minutes = int(v) // 60_000_000_000
        return f"{minutes // 60}h {minutes % 60:02d}m"
    if isinstance(v, float):
        return f"{v:,.2f}"
    return str(v)


_ROWS = (
    ("net PnL ₹", "net_pnl", ""), ("gross PnL ₹", "gross_pnl", ""), ("charges ₹", "charges", ""),
    ("return", "return_pct", "pct"), ("trades", "trades", ""), ("win rate", "win_rate", "pct100"),
    ("avg win ₹", "avg_win", ""), ("avg loss ₹", "avg_loss", ""), ("profit factor", "profit_factor", ""),
    ("expectancy ₹", "expectancy", ""), ("Sharpe", "sharpe", ""), ("Sortino", "sortino", ""),
    ("max drawdown ₹", "max_drawdown", ""), ("max drawdown", "max_drawdown_pct", "pct"),
    ("drawdown duration", "max_drawdown_duration_ns", "dur"), ("exposure", "exposure_pct", "pct"),
)  # fmt: skip


def print_summary(summary: dict[str, Any], out_dir: Path, run_id: str) -> None:
    """The one-screen summary: metrics per strategy and total, counts, where the files are."""
    inp, counts = summary["input"], summary["counts"]
    console.print(
        f"[bold]backtest {run_id}[/bold]: {inp['rows']:,} {inp['kind']} of {inp['instruments']} instruments, "
        f"{inp['from']} to {inp['to']}" + (f" ({inp['skipped']} bad rows skipped)" if inp["skipped"] else "")
    )
    table = Table(show_edge=False)
    table.add_column("")
    table.add_column("total", justify="right", style="bold")
    strategies = summary["strategies"]
    for sid in strategies:
        table.add_column(sid, justify="right")
    for label, key, kind in _ROWS:
        vals = [summary["total"][key], *(m[key] for m in strategies.values())]
        if kind == "pct100":
            cells = [_fmt(v * 100 if v is not None else None, "pct") for v in vals]
        else:
            cells = [_fmt(v, kind) for v in vals]
        table.add_row(label, *cells)
    console.print(table)
    rejected = ", ".join(f"{k} {v}" for k, v in counts["rejected"].items()) or "none"
    console.print(
        f"orders {counts['intents']}, fills {counts['fills']}, risk rejections: {rejected}, "
        f"strategy errors {counts['strategy_errors']}; {summary['annualization']}"
    )
    console.print(f"results in {out_dir}/ (summary.json, trades.csv, equity.csv, report.html, report.png)")
