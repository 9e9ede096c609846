"""``ticktape backtest``: replay recorded data through the live flow and report the results.

Uses the broker and PostgreSQL of the settings (``TICKTAPE_KAFKA_BOOTSTRAP`` /
``TICKTAPE_DATABASE_URL``), else the embedded ones, which are started if they are not running
(they stay up, like ``ticktape services start``). The run is recorded in ``backtest_runs`` /
``backtest_trades`` and its artifacts written to ``--out`` (default
``$TICKTAPE_HOME/backtests/<run id>``).
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from operators.candles import IST

console = Console()
# Options shared by `ticktape backtest` and `ticktape optimize`.
InstrumentsOpt = Annotated[str, typer.Option(help="comma-separated EXCHANGE:SYMBOL list (default: all)")]
FromOpt = Annotated[str | None, typer.Option("--from", help="first IST day or time (inclusive)")]
ToOpt = Annotated[str | None, typer.Option(help="last IST day (inclusive) or time (exclusive)")]
CapitalOpt = Annotated[float, typer.Option(help="starting capital, rupees")]
RiskOpt = Annotated[str, typer.Option(help="RiskConfig overrides as JSON, e.g. '{\"daily_loss_limit\": null}'")]


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


def deployments_from(kinds: list[str], params: list[str], instruments: tuple[str, ...]) -> tuple[Any, ...]:
    """One deployment per ``--strategy``; ``--params`` either once for all or once per strategy.
    A strategy without ``instruments`` in its params trades every ``--instruments`` symbol."""
    import strategies.builtin  # noqa: F401  (registers the built-ins)
    from operators.strategy_host import Deployment
    from strategies.registry import REGISTRY, ParamsError, UnknownStrategy

    if len(params) not in (0, 1, len(kinds)):
        msg = f"give --params once (for every strategy) or once per --strategy ({len(kinds)}), not {len(params)}"
        raise typer.BadParameter(msg)
    out = []
    for k, kind in enumerate(kinds):
        raw = params[k] if len(params) == len(kinds) else (params[0] if params else "{}")
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
            raise typer.BadParameter(str(exc)) from None
        sid = kind if kinds.count(kind) == 1 else f"{kind}_{k + 1}"
        out.append(Deployment(sid, kind, p, account="backtest"))
    return tuple(out)


def backtest(
    strategy: Annotated[list[str], typer.Option(help="registered strategy name; repeat for several")],
    data: Annotated[str, typer.Option(help="CSV/Parquet file of ticks or candles, or 'db' (tick_data/ohlc_candles)")],
    params: Annotated[list[str] | None, typer.Option(help="params JSON: once for all, or once per --strategy")] = None,
    instruments: InstrumentsOpt = "",
    from_: FromOpt = None,
    to: ToOpt = None,
    timeframe: Annotated[str | None, typer.Option(help="candle input timeframe (files: default 1m; db: candles)")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default: <home>/backtests/<run id>)")] = None,
    capital: CapitalOpt = 1_000_000.0,
    risk: RiskOpt = "{}",
    skip_bad: Annotated[bool, typer.Option(help="skip (and count) bad input rows instead of stopping")] = False,
    keep_topics: Annotated[bool, typer.Option(help="keep the run's bt.<run>.* topics")] = False,
    run_id: Annotated[
        str | None,
        typer.Option(help="the run's id (default: time + random); the API assigns its own", rich_help_panel="Advanced"),
    ] = None,
) -> None:
    """Backtest: replay ticks or candles through the live flow and write a report.

    The replay runs the strategies, risk gate, stops and simulated venue of live trading, and
    writes summary.json, trades.csv, equity.csv and report.html/png."""
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
    run_id = run_id or f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    out_dir = out or s.home_dir / "backtests" / run_id
    with connect(ep.database_url, autocommit=True) as conn:
        migrate(conn)
        try:
            console.print(f"reading {data} ...")
            market = load_input(spec, conn)
            universe = universe_for({e.instrument for e in market.events}, load_instruments(conn))
            result = run_backtest(spec, market, universe, KafkaClientConfig.from_settings(s, ep.bootstrap), out_dir,
                                  run_id=run_id, keep_topics=keep_topics, progress=True, db=conn)  # fmt: skip
        except (HistoryError, BacktestError, ValueError) as exc:
            from connectors.postgres.backtests import fail_run

            fail_run(conn, run_id, str(exc))  # a run the API queued says why it failed
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    print_summary(result.summary, result.out_dir, run_id)


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        from flows.report import percent  # matplotlib's import, only once there is a result to show

        return percent(v, unit=" %")
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


def _n(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless one.

    >>> _n(1, "bad row"), _n(1200, "instrument")
    ('1 bad row', '1,200 instruments')
    """
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def print_summary(summary: dict[str, Any], out_dir: Path, run_id: str) -> None:
    """The one-screen summary: metrics per strategy and total, counts, where the files are."""
    inp, counts = summary["input"], summary["counts"]
    skipped = inp["skipped"]
    console.print(
        f"[bold]backtest {run_id}[/bold]: {inp['rows']:,} {inp['kind']} of {_n(inp['instruments'], 'instrument')}, "
        f"{inp['from']} to {inp['to']}" + (f" ({_n(skipped, 'bad row')} skipped)" if skipped else "")
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


def optimize(
    strategy: Annotated[str, typer.Option(help="registered strategy name")],
    space: Annotated[
        str, typer.Option(help='search space JSON, e.g. \'{"fast": [3, 5], "slow": {"min": 10, "max": 30, "step": 5}}\'')
    ],
    data: Annotated[str, typer.Option(help="CSV/Parquet file of ticks or candles, or 'db'")],
    params: Annotated[str, typer.Option(help="fixed params JSON (the space's params override them)")] = "{}",
    metric: Annotated[str, typer.Option(help="rank by this metric of the total")] = "net_pnl",
    search: Annotated[str, typer.Option(help="grid or random")] = "grid",
    samples: Annotated[int, typer.Option(help="random search: number of points")] = 50,
    seed: Annotated[int, typer.Option(help="random search: seed")] = 0,
    processes: Annotated[int, typer.Option(help="worker processes (0: one per core)")] = 0,
    walk_forward: Annotated[str | None, typer.Option(help="IN:OUT trading days, e.g. 3:1")] = None,
    instruments: InstrumentsOpt = "",
    from_: FromOpt = None,
    to: ToOpt = None,
    timeframe: Annotated[str | None, typer.Option(help="candle input timeframe (files: default 1m)")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default: <home>/optimize/<id>)")] = None,
    capital: CapitalOpt = 1_000_000.0,
    risk: RiskOpt = "{}",
) -> None:
    """Search a strategy's params (grid or random), ranked by a metric.

    Every point is a full backtest, run in parallel processes; with --walk-forward, each
    in-sample window's best point is also run on the out-of-sample days after it."""
    import uuid

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from connectors import embedded
    from connectors.history import HistoryError
    from connectors.kafka import KafkaClientConfig
    from connectors.postgres import connect
    from connectors.postgres.instruments import load_instruments
    from flows.backtest import BacktestError, BacktestSpec, load_input, universe_for
    from flows.cli import _endpoints, _settings
    from flows.optimize import OptimizeError, evaluate_all, grid, parse_space, rank, sample, write_results
    from flows.optimize import walk_forward as run_walk_forward

    syms = tuple(x.strip() for x in instruments.split(",") if x.strip())
    try:
        dims = parse_space(space)
        fixed = json.loads(params)
        risk_overrides = json.loads(risk)
        points = grid(dims) if search == "grid" else sample(dims, samples, seed)
        if search not in ("grid", "random"):
            raise OptimizeError(f"--search {search!r}: expected grid or random")  # noqa: EM102
        rank([], metric)
        wf = tuple(int(x) for x in walk_forward.split(":")) if walk_forward else None
        if wf is not None and (len(wf) != 2 or min(wf) < 1):
            raise OptimizeError("--walk-forward: expected IN:OUT whole days, e.g. 3:1")  # noqa: EM101
    except (OptimizeError, json.JSONDecodeError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    (dep,) = deployments_from([strategy], [json.dumps({**fixed, **points[0]})], syms)
    spec = BacktestSpec(deployments=(dep,), data=data, instruments=syms, start=parse_when(from_),
                        end=parse_when(to, end=True) if to and len(to) == 10 else parse_when(to), timeframe=timeframe,
                        capital=capital, risk=risk_overrides)  # fmt: skip
    s = _settings()
    if s.kafka_bootstrap is None:
        embedded.start_broker(s.home_dir)
    if s.database_url is None:
        embedded.start_postgres(s.home_dir)
    ep = _endpoints(s)
    out_dir = out or s.home_dir / "optimize" / f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    kafka = KafkaClientConfig.from_settings(s, ep.bootstrap)
    fixed_params = {**fixed, "instruments": list(syms)} if syms and "instruments" not in fixed else fixed
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    t0 = datetime.now(UTC)
    try:
        with connect(ep.database_url, autocommit=True) as conn:
            market = load_input(spec, conn)
            universe = universe_for({e.instrument for e in market.events}, load_instruments(conn))
        console.print(f"{len(points)} points x {len(market.events):,} {market.kind}, {metric} ranks them")
        with Progress(*cols) as bar:
            task = bar.add_task("backtests", total=None)
            if wf:
                from flows.optimize import trading_days

                n_days = len(trading_days(market))
                bar.update(task, total=max(0, (n_days - wf[0] - wf[1]) // wf[1] + 1) * (len(points) + 1))
                folds = run_walk_forward(spec, fixed_params, points, market, universe, kafka, metric, wf[0], wf[1],
                                     processes=processes, on_done=lambda _p: bar.advance(task))  # fmt: skip
                tried = [f.best for f in folds]
            else:
                bar.update(task, total=len(points))
                folds = []
                tried = evaluate_all(spec, fixed_params, points, market, universe, kafka, processes=processes,
                                     on_done=lambda _p: bar.advance(task))  # fmt: skip
    except (HistoryError, BacktestError, ValueError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ranked = rank(tried, metric)
    write_results(out_dir, ranked, metric, folds, title=f"{strategy}: {len(points)} points by {metric}")
    table = Table(title=f"best by {metric}", show_edge=False)
    names = sorted(dims)
    shown = list(dict.fromkeys([metric, "net_pnl", "trades", "sharpe", "max_drawdown_pct"]))
    for col in ["#", *names, *shown]:
        table.add_column(col, justify="right")
    for k, p in enumerate(ranked[:10], start=1):
        m = p.metrics
        cells = [_fmt(m.get(c), "pct" if c.endswith("_pct") else "") for c in shown]
        table.add_row(str(k), *(str(p.params.get(n)) for n in names), *cells)
    console.print(table)
    for k, f in enumerate(folds, start=1):
        console.print(f"fold {k}: in-sample {metric} {_fmt(f.best.metrics.get(metric))} -> "
                      f"out-of-sample {_fmt(f.out.metrics.get(metric))} with {f.best.params}")  # fmt: skip
    took = (datetime.now(UTC) - t0).total_seconds()
    console.print(f"{took:.1f} s; results in {out_dir}/ (optimize.csv, optimize.html{', walkforward.csv' if folds else ''})")


def replay(
    from_recorded: Annotated[bool, typer.Option("--from-recorded", help="replay the recorded live session's ticks")] = False,
    session: Annotated[int | None, typer.Option(help="live_sessions id (default: the newest)")] = None,
    show: Annotated[int, typer.Option(help="differences to print per kind")] = 20,
) -> None:
    """Replay a recorded paper session and diff its intents and fills (exit 1 on a difference).

    The session's md.ticks go through the same flow, and the intents and fills that come out
    are compared with what the session did."""
    import strategies.builtin  # noqa: F401  (registers the built-ins)
    from connectors.kafka import KafkaClientConfig
    from connectors.postgres import connect
    from connectors.postgres.instruments import load_instruments
    from connectors.postgres.strategies import DeploymentError, load_session
    from flows.cli import _catalog, _endpoints, _settings
    from flows.live import warm_candles
    from flows.parity import replay_session
    from strategies.registry import REGISTRY

    if not from_recorded:
        console.print("[red]say what to replay: --from-recorded[/red]")
        raise typer.Exit(2)
    s = _settings()
    ep = _endpoints(s)
    try:
        with connect(ep.database_url, autocommit=True) as conn:
            sess = load_session(conn, REGISTRY, session)
            universe = load_instruments(conn)
            tfs = sorted({d.params.timeframe for d in sess["deployments"]})
            warm = warm_candles(conn, tfs, sess["warmup_days"], sess["started_at"])
    except DeploymentError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    catalog = _catalog(s)
    if sess["topic_prefix"] != s.topic_prefix:
        console.print(f"[yellow]session {sess['id']} ran under topic prefix {sess['topic_prefix']!r}[/yellow]")
        from schemas.topics import load_catalog

        catalog = load_catalog().scoped(sess["topic_prefix"]) if sess["topic_prefix"] else load_catalog()
    console.print(f"replaying session {sess['id']} (started {sess['started_at']:%Y-%m-%d %H:%M:%S %Z}) "
                  f"from {catalog.name('md.ticks')} ...")  # fmt: skip
    if sess["recovery"]:
        console.print("[dim]the session ran under Bytewax recovery: a restart mid-session is not replayed as such[/dim]")
    d = replay_session(KafkaClientConfig.from_settings(s, ep.bootstrap), catalog, sess, universe, warm)
    counts = ", ".join(f"{n} {k}s" for k, n in sorted(d.compared.items())) or "nothing"
    console.print(f"compared {counts}; {d.beyond_horizon} replay events after the recording's horizon not judged")
    for label, items in (("missing from the replay", d.missing), ("only in the replay", d.extra), ("changed", d.changed)):
        if items:
            console.print(f"[red]{len(items)} {label}[/red]")
            for line in items[:show]:
                console.print(f"  {line}", soft_wrap=True)
    if not d.empty:
        raise typer.Exit(1)
    console.print("[green]parity: the replay traded exactly what the session traded[/green]")
