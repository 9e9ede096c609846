"""Backtests: recorded market data replayed through the flow that trades live.

    input (CSV, Parquet, tick_data / ohlc_candles)  ─ checked, time-ordered ─▶ bt.<run>.md.ticks
                                                                           or bt.<run>.md.candles
    ─▶ flows.live.build(tail=False, no clock): candles → indicators → strategies → risk gate,
       stop-loss manager, simulated venue (the paper desk)          ─▶ bt.<run>.ord.*, pf.*, risk.*
    ─▶ fills + replayed prices ─▶ operators.performance ─▶ summary.json, trades.csv, equity.csv,
       intents.jsonl, fills.jsonl, report.html/png; backtest_runs / backtest_trades

Replay mode is the live builder with no clock: bars close on the next tick (or bar) and at end
of input, everything is stamped with event time, the input is bounded (EOF ends the run).
A candle input skips aggregation for its own timeframe (:attr:`PipelineConfig.bars`) and the
desk sees each bar as open, low/high, close (:func:`flows.pipeline.bar_ticks`), so a market
order decided on a bar fills at its close plus the slippage model, and stops see the bar's range.

**Determinism.** With one worker (this module runs the flow in-process with ``run_main``) the
same input, deployments and params give byte-identical intents, fills and artifacts: the
source merges partitions by event time, the desk orders each batch by (time, kind,
instrument), and nothing reads the wall clock. With several processes the instruments'
steps spread over workers, and the desk sees decisions in batches whose boundaries depend on
timing: per-instrument candles, indicators and signals stay identical, but cross-instrument
risk decisions (order throttle, exposure caps, daily loss rules) may differ where two
instruments' signals compete, so backtests run on one worker.

**Metrics** (operators.performance): the equity curve is sampled every bar of the input's
timeframe (ticks: every minute), only where the market traded; Sharpe and Sortino use those
per-period returns, annualized by √(252 sessions × periods per session), risk-free rate 0.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from bytewax.testing import run_main
from confluent_kafka import Producer

from connectors.history import ReadReport, Window, db_candles, db_ticks, read_candles, read_ticks
from connectors.kafka import KafkaClientConfig, create_topics, delete_topics, read_topics
from flows import live
from flows.pipeline import PipelineConfig, StrategySetup
from flows.trading import TradingSetup
from operators.analytics import AnalyticsConfig
from operators.candles import IST_OFFSET_NS, SESSION_NS, parse_timeframe, parse_timeframes
from operators.performance import Curves, EquityPoint, Metrics, Trade, equity_curves, metrics, round_trips
from operators.risk import RiskConfig
from operators.strategy_host import Deployment
from operators.venue import SimVenue, SlippageModel
from schemas.codec import codec_for, encode, to_builtins
from schemas.market import Instrument, InstrumentType
from schemas.orders import Fill, OrderIntent, VenueRequest
from schemas.risk import RiskEvent, RiskRejected, StrategyError
from schemas.topics import TopicCatalog, load_catalog

log = logging.getLogger("ticktape.backtest")
SESSIONS_PER_YEAR = 252
_MINUTE = 60 * 10**9


class BacktestError(ValueError):
    """The backtest cannot run as asked (bad input, unknown instrument, bad params)."""


@dataclass(frozen=True)
class BacktestSpec:
    """What to replay and trade. ``data`` is a file path or ``"db"``; ``timeframe`` set means a
    candle input of that timeframe (a file's columns decide for files: ``open`` = candles)."""

    deployments: tuple[Deployment, ...]
    data: str
    instruments: tuple[str, ...] = ()
    start: int | None = None  # ns, inclusive
    end: int | None = None  # ns, exclusive
    timeframe: str | None = None
    capital: float = 1_000_000.0
    risk: Mapping[str, Any] = field(default_factory=dict)  # RiskConfig overrides
    skip_bad: bool = False
    slippage: SlippageModel = field(default_factory=lambda: SlippageModel(ticks=1))  # market fills: 1 tick against

    def facts(self) -> dict[str, Any]:
        """The spec as plain data (summary.json, backtest_runs.spec); no wall-clock values."""
        return {
            "strategies": [
                {"id": d.strategy_id, "kind": d.kind, "account": d.account, "params": to_builtins(d.params)}
                for d in self.deployments
            ],
            "data": self.data,
            "instruments": list(self.instruments),
            "from": _iso(self.start) if self.start is not None else None,
            "to": _iso(self.end) if self.end is not None else None,
            "timeframe": self.timeframe,
            "capital": self.capital,
            "risk": dict(self.risk),
            "slippage": to_builtins(self.slippage),
        }


@dataclass(frozen=True)
class BacktestResult:
    run_id: str
    out_dir: Path
    summary: dict[str, Any]
    trades: list[Trade]
    total: Metrics
    by_strategy: dict[str, Metrics]
    timings: dict[str, float]  # seconds per phase (load, produce, replay, results)


# ----------------------------------------------------------------------------- input


@dataclass
class MarketInput:
    kind: str  # "ticks" or "candles"
    timeframe: str | None  # candles only
    events: list[Any]  # Tick or Candle, time-ordered
    report: ReadReport


def _is_candle_file(path: Path) -> bool:
    if path.name.lower().endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        names = [n.strip().lower() for n in pq.read_schema(path).names]
    else:
        import gzip

        opener: Callable[..., Any] = gzip.open if path.name.lower().endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as fh:
            names = [n.strip().lower() for n in fh.readline().split(",")]
    return "open" in names and "price" not in names


def load_input(spec: BacktestSpec, conn: Any = None) -> MarketInput:
    window = Window(frozenset(spec.instruments), spec.start, spec.end)
    report = ReadReport()
    if spec.data == "db":
        if conn is None:
            msg = "--data db needs a database (TICKTAPE_DATABASE_URL or the embedded one)"
            raise BacktestError(msg)
        if spec.timeframe:
            events: list[Any] = db_candles(conn, spec.timeframe, window)
            report.rows = len(events)
            return MarketInput("candles", spec.timeframe, events, report)
        events = db_ticks(conn, window)
        report.rows = len(events)
        return MarketInput("ticks", None, events, report)
    path = Path(spec.data)
    if not path.is_file():
        msg = f"--data {spec.data}: no such file"
        raise BacktestError(msg)
    if _is_candle_file(path):
        tf = spec.timeframe or "1m"
        return MarketInput("candles", tf, read_candles(path, tf, window, skip_bad=spec.skip_bad, report=report), report)
    return MarketInput("ticks", None, read_ticks(path, window, skip_bad=spec.skip_bad, report=report), report)


def universe_for(symbols: Iterable[str], master: Iterable[Instrument] = ()) -> list[Instrument]:
    """The instrument rows the desk needs (tick size, lot size): from the master when it has
    them; a cash-market symbol missing from it gets a plain equity row (tick ₹0.05, lot 1).
    A derivative must come from the master: its lot size cannot be guessed."""
    known = {i.instrument: i for i in master}
    out = []
    for sym in sorted(set(symbols)):
        inst = known.get(sym)
        if inst is None:
            exchange, _, name = sym.partition(":")
            if exchange not in ("NSE", "BSE"):
                msg = f"{sym} is not in the instrument master, and only NSE/BSE cash symbols can be assumed"
                raise BacktestError(msg)
            inst = Instrument(instrument=sym, instrument_token=0, exchange_token=0, tradingsymbol=name, name=name,
                              exchange=exchange, segment=exchange, instrument_type=InstrumentType.EQ, tick_size=0.05,
                              lot_size=1)  # fmt: skip
        out.append(inst)
    return out


# ----------------------------------------------------------------------------- run


def run_backtest(
    spec: BacktestSpec,
    market: MarketInput,
    universe: Sequence[Instrument],
    kafka: KafkaClientConfig,
    out_dir: Path,
    *,
    run_id: str | None = None,
    keep_topics: bool = False,
    progress: bool = False,
    db: Any = None,
    source: str | None = None,
    write: bool = True,
) -> BacktestResult:
    """Replay ``market`` through the live flow's builder and write the results to ``out_dir``
    (and ``backtest_runs``/``backtest_trades`` when ``db`` is a connection).

    ``source``: a topic that already holds ``market`` (written by :func:`load_topic`), so runs
    over the same input - an optimization - share it. ``write=False`` computes the results
    without writing any file."""
    if not market.events:
        msg = f"no market data in {spec.data} for the chosen instruments and period"
        raise BacktestError(msg)
    if not spec.deployments:
        msg = "no strategy to run"
        raise BacktestError(msg)
    run_id = run_id or f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    catalog = load_catalog().scoped(f"bt.{run_id}")
    pipeline = _pipeline(spec, market)
    setup = TradingSetup(
        accounts=tuple(sorted({d.account for d in spec.deployments})),
        risk=_risk(spec),
        venue=functools.partial(SimVenue, name="bt", slippage=spec.slippage),
    )
    if db is not None:
        from connectors.postgres.backtests import start_run

        start_run(db, run_id, spec.facts(), (spec.start, spec.end))
    timings: dict[str, float] = {}
    admin = kafka.admin()
    create_topics(admin, catalog)
    try:
        t0 = time.perf_counter()
        topic = source or catalog.name("md.ticks" if market.kind == "ticks" else "md.candles")
        if source is None:
            _produce(kafka, topic, market.events, progress)
        timings["produce_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        flow = live.build(kafka, catalog, universe, pipeline, tail=False, trading=setup, batch_size=20_000, source=topic)
        _with_progress(lambda: run_main(flow), topic, len(market.events), progress, "replay")
        timings["replay_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        outputs = _outputs(kafka, catalog)
    except BaseException as exc:
        if db is not None:
            from connectors.postgres.backtests import fail_run

            fail_run(db, run_id, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if not keep_topics:
            delete_topics(admin, [s.name for s in catalog.values()])
    result = _results(spec, market, outputs, run_id, out_dir if write else None, timings)
    timings["results_s"] = time.perf_counter() - t0
    if db is not None:
        from connectors.postgres.backtests import finish_run

        finish_run(db, run_id, result.summary, str(out_dir), result.trades)
    return result


def _risk(spec: BacktestSpec) -> RiskConfig:
    try:
        return msgspec.convert({"capital": spec.capital, **spec.risk}, RiskConfig)
    except msgspec.ValidationError as exc:
        msg = f"risk settings: {exc}"
        raise BacktestError(msg) from None


def _pipeline(spec: BacktestSpec, market: MarketInput) -> PipelineConfig:
    tfs = {d.params.timeframe for d in spec.deployments}
    if market.timeframe is not None:
        base = parse_timeframe(market.timeframe)
        finer = sorted(tf for tf in tfs if parse_timeframe(tf).ns < base.ns)
        if finer:
            msg = f"strategies trade {', '.join(finer)} bars, finer than the {market.timeframe} candle input"
            raise BacktestError(msg)
        tfs.add(market.timeframe)
    try:
        timeframes = tuple(t.name for t in parse_timeframes(tfs))
    except ValueError as exc:
        raise BacktestError(str(exc)) from None
    analytics = AnalyticsConfig(timeframes=timeframes, indicators=(), publish_timeframes=(), patterns=False)
    return PipelineConfig(
        analytics=analytics,
        open_interest=False,
        summary_timeframes=(),
        strategies=StrategySetup(deployments=spec.deployments),
        bars=market.timeframe,
    )


def load_topic(kafka: KafkaClientConfig, topic: str, market: MarketInput, *, partitions: int = 8) -> None:
    """Create ``topic`` and write ``market`` into it (input shared by several runs)."""
    from confluent_kafka.admin import NewTopic

    admin = kafka.admin()
    for fut in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        fut.result(15)
    _produce(kafka, topic, market.events, False)


def _produce(kafka: KafkaClientConfig, topic: str, events: Sequence[Any], progress: bool) -> None:
    producer = Producer(kafka.producer())
    done = [0]

    def work() -> None:
        for k, ev in enumerate(events):
            while True:
                try:
                    producer.produce(topic, encode(ev), ev.instrument.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
            if not k % 10_000:
                producer.poll(0)
                done[0] = k
        if producer.flush(60):
            msg = f"could not write the input to {topic}"
            raise BacktestError(msg)
        done[0] = len(events)

    _with_progress(work, None, len(events), progress, "load", done)


def _with_progress(
    work: Callable[[], None], topic: str | None, total: int, show: bool, label: str, done: list[int] | None = None
) -> None:
    """Run ``work`` in this thread; with ``show``, a rich progress bar (rows/s, ETA) follows the
    records it consumed from ``topic`` (or ``done[0]``)."""
    if not show:
        work()
        return
    from prometheus_client import REGISTRY
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    def consumed() -> int:
        if done is not None:
            return done[0]
        return int(REGISTRY.get_sample_value("ticktape_kafka_consumed_total", {"topic": topic}) or 0)

    base = consumed() if done is None else 0
    stop = threading.Event()
    cols = (TextColumn(f"{label:<7}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]:>9} rows/s"),
            TimeRemainingColumn())  # fmt: skip
    with Progress(*cols, transient=False) as bar:
        task = bar.add_task(label, total=total, rate="")
        started = time.perf_counter()

        def follow() -> None:
            while not stop.wait(0.25):
                n = consumed() - base
                rate = n / max(time.perf_counter() - started, 1e-9)
                bar.update(task, completed=n, rate=f"{rate:,.0f}")

        th = threading.Thread(target=follow, daemon=True)
        th.start()
        try:
            work()
        finally:
            stop.set()
            th.join()
        bar.update(task, completed=total, rate=f"{total / max(time.perf_counter() - started, 1e-9):,.0f}")


@dataclass
class _Outputs:
    intents: list[bytes]
    fills: list[bytes]
    risk: list[bytes]


def _outputs(kafka: KafkaClientConfig, catalog: TopicCatalog) -> _Outputs:
    names = [catalog.name(t) for t in ("ord.intents", "ord.fills", "risk.events")]
    got = read_topics(kafka, names)
    return _Outputs(*(got[name] for name in names))


# ----------------------------------------------------------------------------- results


def _results(
    spec: BacktestSpec, market: MarketInput, outputs: _Outputs, run_id: str, out_dir: Path | None, timings: dict[str, float]
) -> BacktestResult:
    fill_codec, risk_codec, intent_codec = codec_for(Fill), codec_for(RiskEvent), codec_for(VenueRequest)
    fills = sorted((fill_codec.decode(v) for v in outputs.fills), key=lambda f: (f.ts_event, f.trade_id))
    intents = [intent_codec.decode(v) for v in outputs.intents]
    risk = [risk_codec.decode(v) for v in outputs.risk]
    candles = market.kind == "candles"
    step = parse_timeframe(market.timeframe).ns if candles and market.timeframe else _MINUTE
    prices = [(e.ts_event, e.instrument, e.close if candles else e.ltp) for e in market.events]
    last = {sym: (ts, px) for ts, sym, px in prices}  # each instrument's last price
    trades = round_trips(fills, last)
    curves: Curves = equity_curves(fills, prices, spec.capital, step)
    periods = SESSIONS_PER_YEAR * max(1, SESSION_NS // step)
    total = metrics(trades, curves.total, spec.capital, periods)
    ids = [d.strategy_id for d in spec.deployments]
    flat = [EquityPoint(p.ts, 0.0, 0.0, 0.0, spec.capital, 0.0) for p in curves.total]
    by_strategy = {
        sid: metrics([t for t in trades if t.strategy == sid], curves.by_strategy.get(sid, flat), spec.capital, periods)
        for sid in ids
    }
    rejected = Counter(e.reason_code for e in risk if type(e) is RiskRejected)
    summary = {
        "spec": spec.facts(),
        "input": {
            "kind": market.kind,
            "timeframe": market.timeframe,
            "rows": len(market.events),
            "skipped": market.report.skipped,
            "skipped_examples": market.report.errors,
            "instruments": len(last),
            "from": _iso(market.events[0].open_time if candles else market.events[0].ts_event),
            "to": _iso(market.events[-1].ts_event),
        },
        "annualization": f"sqrt({periods}): {SESSIONS_PER_YEAR} sessions x {periods // SESSIONS_PER_YEAR} "
        f"periods of {step // 10**9}s; risk-free rate 0",
        "counts": {
            "intents": sum(type(i) is OrderIntent for i in intents),
            "cancels": sum(type(i) is not OrderIntent for i in intents),
            "fills": len(fills),
            "rejected": dict(sorted(rejected.items())),
            "strategy_errors": sum(type(e) is StrategyError for e in risk),
        },
        "total": _metrics_dict(total),
        "strategies": {sid: _metrics_dict(m) for sid, m in by_strategy.items()},
    }
    if out_dir is not None:
        _write(out_dir, summary, trades, curves, ids, outputs)
        _report(out_dir, spec, summary, total, by_strategy, curves.total, trades, prices)
        run = {"run_id": run_id, "timings": {k: round(v, 3) for k, v in timings.items()}}
        (out_dir / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    return BacktestResult(run_id, out_dir or Path(), summary, trades, total, by_strategy, timings)


def _metrics_dict(m: Metrics) -> dict[str, Any]:
    out = to_builtins(m)
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in out.items()}


def _iso(ns: int) -> str:
    """IST wall time with its offset (what a trader reads), exact to the microsecond."""
    dt = datetime.fromtimestamp((ns + IST_OFFSET_NS) // 10**9, tz=UTC).replace(microsecond=ns % 10**9 // 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f+05:30") if ns % 10**9 else dt.strftime("%Y-%m-%dT%H:%M:%S+05:30")


def _write(
    out_dir: Path, summary: dict[str, Any], trades: Sequence[Trade], curves: Curves, ids: Sequence[str], outputs: _Outputs
) -> None:
    capital = summary["spec"]["capital"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out_dir / "trades.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["strategy", "instrument", "direction", "qty", "entry_time", "entry_price", "exit_time",
                    "exit_price", "gross_pnl", "charges", "net_pnl", "closed"])  # fmt: skip
        for t in trades:
            w.writerow([t.strategy, t.instrument, t.direction, t.qty, _iso(t.entry_time), f"{t.entry_price:.4f}",
                        _iso(t.exit_time), f"{t.exit_price:.4f}", f"{t.gross_pnl:.2f}", f"{t.charges:.2f}",
                        f"{t.net_pnl:.2f}", int(t.closed)])  # fmt: skip
    with (out_dir / "equity.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["time", "equity", "realized", "unrealized", "charges", "exposure", "drawdown_pct",
                    *(f"equity[{s}]" for s in ids)])  # fmt: skip
        peak = None
        per = [curves.by_strategy.get(s) for s in ids]
        for k, p in enumerate(curves.total):
            peak = p.equity if peak is None else max(peak, p.equity)
            dd = (peak - p.equity) / peak * 100 if peak else 0.0
            strat = [f"{c[k].equity:.2f}" if c else f"{capital:.2f}" for c in per]
            w.writerow([_iso(p.ts), f"{p.equity:.2f}", f"{p.realized:.2f}", f"{p.unrealized:.2f}", f"{p.charges:.2f}",
                        f"{p.exposure:.2f}", f"{dd:.4f}", *strat])  # fmt: skip
    (out_dir / "intents.jsonl").write_bytes(b"".join(v + b"\n" for v in outputs.intents))
    (out_dir / "fills.jsonl").write_bytes(b"".join(v + b"\n" for v in outputs.fills))


def _report(
    out_dir: Path,
    spec: BacktestSpec,
    summary: dict[str, Any],
    total: Metrics,
    by_strategy: Mapping[str, Metrics],
    curve: Sequence[EquityPoint],
    trades: Sequence[Trade],
    prices: Sequence[tuple[int, str, float]],
) -> None:
    from flows.report import write_report

    traded = {t.instrument for t in trades}
    series: dict[str, list[tuple[int, float]]] = {sym: [] for sym in sorted(traded)}
    for ts, sym, px in prices:
        s = series.get(sym)
        if s is not None:
            s.append((ts, px))
    inp = summary["input"]
    names = ", ".join(sorted({d.kind for d in spec.deployments}))
    facts = {
        "strategies": ", ".join(f"{d.strategy_id} ({d.kind})" for d in spec.deployments),
        "data": f"{spec.data}: {inp['rows']:,} {inp['kind']}" + (f" of {inp['timeframe']}" if inp["timeframe"] else ""),
        "period": f"{inp['from']} to {inp['to']}",
        "instruments": str(inp["instruments"]),
        "capital": f"₹{spec.capital:,.0f}",
        "annualization": summary["annualization"],
    }
    write_report(out_dir, title=f"Backtest: {names}", facts=facts, total=total, by_strategy=by_strategy, curve=curve,
                 trades=trades, prices=series)  # fmt: skip
