"""Parameter optimization: grid or random search of one strategy's params, and walk-forward.

Every point is a full backtest (:func:`flows.backtest.run_backtest`: the live flow's builder,
the risk gate, the simulated venue, charges) over one shared input topic, run in parallel
worker processes (spawned; each gets the loaded input once). Points are
ranked by one metric of the total (``net_pnl``, ``sharpe``, ...; ``max_drawdown`` and
``max_drawdown_pct`` rank lower first); a point without a value (no trades, no Sharpe)
ranks last.

The search space is JSON: a list of values, or a range ``{"min": 5, "max": 20, "step": 5}``
(grid: every step; random: uniform between min and max, whole numbers when min, max and step
are whole)::

    {"fast": [3, 5, 8], "slow": {"min": 13, "max": 34, "step": 7}}

**Walk-forward** cuts the input's trading days into rolling windows of ``in_days`` in-sample
followed by ``out_days`` out-of-sample. Each window's best in-sample point is then run on the
next ``out_days`` alone; the table puts the two figures side by side - a strategy whose
out-of-sample figure collapses against its in-sample one was fitted to noise.
"""

from __future__ import annotations

import csv
import html
import itertools
import json
import multiprocessing
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from connectors.kafka import KafkaClientConfig, delete_topics
from flows.backtest import BacktestError, BacktestSpec, MarketInput, load_topic, run_backtest
from flows.runtime import tune_gc
from operators.candles import DAY_NS, IST_OFFSET_NS
from operators.strategy_host import Deployment
from schemas.market import Instrument
from strategies.registry import REGISTRY, ParamsError

LOWER_IS_BETTER = frozenset({"max_drawdown", "max_drawdown_pct", "max_drawdown_duration_ns"})
METRICS = ("net_pnl", "return_pct", "sharpe", "sortino", "profit_factor", "expectancy", "win_rate", "max_drawdown",
           "max_drawdown_pct", "trades")  # fmt: skip


class OptimizeError(ValueError):
    """The search cannot run as asked (bad space, unknown metric)."""


def parse_space(raw: str | Mapping[str, Any]) -> dict[str, Any]:
    space = json.loads(raw) if isinstance(raw, str) else dict(raw)
    if not isinstance(space, dict) or not space:
        msg = "the search space must be a non-empty JSON object of param -> values or {min, max, step}"
        raise OptimizeError(msg)
    for name, dim in space.items():
        ok = (isinstance(dim, list) and dim) or (
            isinstance(dim, dict) and {"min", "max"} <= set(dim) and dim["min"] <= dim["max"] and dim.get("step", 1) > 0
        )
        if not ok:
            msg = f"param {name!r}: expected a non-empty list or {{min, max[, step]}} with min <= max, got {dim!r}"
            raise OptimizeError(msg)
    return space


def _whole(dim: Mapping[str, Any]) -> bool:
    return all(float(dim.get(k, 1)).is_integer() for k in ("min", "max", "step"))


def grid(space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every combination, in the order the space lists them.

    >>> grid({"fast": [3, 5], "slow": {"min": 10, "max": 20, "step": 10}})
    [{'fast': 3, 'slow': 10}, {'fast': 3, 'slow': 20}, {'fast': 5, 'slow': 10}, {'fast': 5, 'slow': 20}]
    """
    axes = []
    for dim in space.values():
        if isinstance(dim, list):
            axes.append(dim)
            continue
        lo, hi, step = dim["min"], dim["max"], dim.get("step", 1)
        n = int((hi - lo) / step + 1e-9) + 1
        vals = [lo + k * step for k in range(n)]
        axes.append([int(v) for v in vals] if _whole(dim) else [round(v, 10) for v in vals])
    return [dict(zip(space, combo, strict=True)) for combo in itertools.product(*axes)]


def sample(space: Mapping[str, Any], n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` random points (seeded, so a search can be repeated)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        point = {}
        for name, dim in space.items():
            if isinstance(dim, list):
                point[name] = rng.choice(dim)
            elif _whole(dim):
                point[name] = rng.randint(int(dim["min"]), int(dim["max"]))
            else:
                point[name] = round(rng.uniform(dim["min"], dim["max"]), 6)
        out.append(point)
    return out


@dataclass(frozen=True)
class Point:
    params: dict[str, Any]
    metrics: dict[str, Any]  # the total's metrics, or {"error": ...} when the params are invalid
    seconds: float


# The worker's view of the run: set once per worker process by its initializer (the input is
# pickled once per worker, not per point). Workers are spawned, not forked: the parent holds
# Kafka client threads, and a fork copies their locks in whatever state they are in.
_JOB: dict[str, Any] = {}


def _init_worker(job: dict[str, Any]) -> None:
    import strategies.builtin  # noqa: F401  (a spawned worker registers the built-ins itself)

    _JOB.update(job)
    tune_gc()


def _evaluate(params: dict[str, Any]) -> Point:
    job = _JOB
    base: BacktestSpec = job["spec"]
    dep = base.deployments[0]
    t0 = time.perf_counter()
    try:
        p = REGISTRY.params(dep.kind, {**job["fixed"], **params})
    except ParamsError as exc:
        return Point(params, {"error": str(exc)}, 0.0)
    spec = replace(base, deployments=(Deployment(dep.strategy_id, dep.kind, p, dep.account),))
    run_id = f"opt{os.getpid()}-{uuid.uuid4().hex[:8]}"
    result = run_backtest(spec, job["market"], job["universe"], job["kafka"], Path(), run_id=run_id,
                          source=job["topic"], write=False)  # fmt: skip
    return Point(params, result.summary["total"], time.perf_counter() - t0)


def evaluate_all(
    spec: BacktestSpec,
    fixed: Mapping[str, Any],
    points: Sequence[dict[str, Any]],
    market: MarketInput,
    universe: Sequence[Instrument],
    kafka: KafkaClientConfig,
    *,
    processes: int = 0,
    on_done: Callable[[Point], None] | None = None,
) -> list[Point]:
    """Backtest every point (in order of ``points``) over ``market``, in parallel processes."""
    topic = f"bt.opt-{uuid.uuid4().hex[:10]}.input"
    load_topic(kafka, topic, market)
    job = {"spec": spec, "fixed": dict(fixed), "market": market, "universe": list(universe), "kafka": kafka,
           "topic": topic}  # fmt: skip
    procs = min(processes or os.cpu_count() or 1, len(points))
    try:
        if procs <= 1:
            _JOB.update(job)
            results = []
            for pt in points:
                results.append(_evaluate(pt))
                if on_done:
                    on_done(results[-1])
            return results
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=procs, mp_context=ctx, initializer=_init_worker, initargs=(job,)) as pool:
            futures = [pool.submit(_evaluate, pt) for pt in points]
            out = []
            for fut in futures:
                out.append(fut.result())
                if on_done:
                    on_done(out[-1])
            return out
    finally:
        _JOB.clear()
        delete_topics(kafka.admin(), [topic])


def rank(points: Iterable[Point], metric: str) -> list[Point]:
    """Best first by ``metric``; points without a value last (in their original order)."""
    if metric not in METRICS:
        msg = f"metric {metric!r}: expected one of {', '.join(METRICS)}"
        raise OptimizeError(msg)
    sign = 1 if metric in LOWER_IS_BETTER else -1
    pts = list(points)
    return sorted(pts, key=lambda p: (p.metrics.get(metric) is None, sign * (p.metrics.get(metric) or 0)))


# ----------------------------------------------------------------------------- walk-forward


def trading_days(market: MarketInput) -> list[int]:
    """The IST days (days since the epoch) the input has events on, in order."""
    return sorted({(e.ts_event + IST_OFFSET_NS) // DAY_NS for e in market.events})


def day_slice(market: MarketInput, days: Sequence[int]) -> MarketInput:
    keep = set(days)
    events = [e for e in market.events if (e.ts_event + IST_OFFSET_NS) // DAY_NS in keep]
    return MarketInput(market.kind, market.timeframe, events, market.report)


@dataclass(frozen=True)
class Fold:
    in_days: tuple[int, ...]
    out_days: tuple[int, ...]
    best: Point  # best in-sample point
    out: Point  # that point's params out of sample


def walk_forward(
    spec: BacktestSpec,
    fixed: Mapping[str, Any],
    points: Sequence[dict[str, Any]],
    market: MarketInput,
    universe: Sequence[Instrument],
    kafka: KafkaClientConfig,
    metric: str,
    in_days: int,
    out_days: int,
    *,
    processes: int = 0,
    on_done: Callable[[Point], None] | None = None,
) -> list[Fold]:
    days = trading_days(market)
    if len(days) < in_days + out_days:
        msg = f"walk-forward {in_days}:{out_days} needs {in_days + out_days} trading days; the input has {len(days)}"
        raise BacktestError(msg)
    folds = []
    for start in range(0, len(days) - in_days - out_days + 1, out_days):
        ins, outs = days[start : start + in_days], days[start + in_days : start + in_days + out_days]
        tried = evaluate_all(spec, fixed, points, day_slice(market, ins), universe, kafka, processes=processes,
                             on_done=on_done)  # fmt: skip
        best = rank(tried, metric)[0]
        (oos,) = evaluate_all(spec, fixed, [best.params], day_slice(market, outs), universe, kafka, processes=1,
                              on_done=on_done)  # fmt: skip
        folds.append(Fold(tuple(ins), tuple(outs), best, oos))
    return folds


# ----------------------------------------------------------------------------- output


def _day(d: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(d * 86_400, tz=UTC).strftime("%Y-%m-%d")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_results(out_dir: Path, ranked: Sequence[Point], metric: str, folds: Sequence[Fold] = (), title: str = "") -> None:
    """optimize.csv (ranked), walkforward.csv (when folds) and optimize.html (both tables)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({k for p in ranked for k in p.params})
    with (out_dir / "optimize.csv").open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["rank", *names, *METRICS, "error"])
        for k, p in enumerate(ranked, start=1):
            w.writerow([k, *(p.params.get(n) for n in names), *(_cell(p.metrics.get(m)) for m in METRICS),
                        p.metrics.get("error", "")])  # fmt: skip
    if folds:
        with (out_dir / "walkforward.csv").open("w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["fold", "in_from", "in_to", "out_from", "out_to", "params", f"in_{metric}", f"out_{metric}",
                        "in_net_pnl", "out_net_pnl", "in_trades", "out_trades"])  # fmt: skip
            for k, f in enumerate(folds, start=1):
                w.writerow([k, _day(f.in_days[0]), _day(f.in_days[-1]), _day(f.out_days[0]), _day(f.out_days[-1]),
                            json.dumps(f.best.params, sort_keys=True), _cell(f.best.metrics.get(metric)),
                            _cell(f.out.metrics.get(metric)), _cell(f.best.metrics.get("net_pnl")),
                            _cell(f.out.metrics.get("net_pnl")), f.best.metrics.get("trades"),
                            f.out.metrics.get("trades")])  # fmt: skip
    e = html.escape
    rows = "".join(
        f"<tr><td>{k}</td>{''.join(f'<td>{e(str(p.params.get(n)))}</td>' for n in names)}"
        f"{''.join(f'<td>{e(_cell(p.metrics.get(m)))}</td>' for m in METRICS)}</tr>"
        for k, p in enumerate(ranked, start=1)
    )
    head = "".join(f"<th>{e(h)}</th>" for h in ["rank", *names, *METRICS])
    wf = ""
    if folds:
        wf_rows = "".join(
            f"<tr><td>{k}</td><td>{_day(f.in_days[0])} – {_day(f.in_days[-1])}</td>"
            f"<td>{_day(f.out_days[0])} – {_day(f.out_days[-1])}</td><td>{e(json.dumps(f.best.params, sort_keys=True))}</td>"
            f"<td>{e(_cell(f.best.metrics.get(metric)))}</td><td>{e(_cell(f.out.metrics.get(metric)))}</td></tr>"
            for k, f in enumerate(folds, start=1)
        )
        wf = (f"<h2>Walk-forward</h2><table><tr><th>fold</th><th>in-sample</th><th>out-of-sample</th><th>best params</th>"
              f"<th>in {e(metric)}</th><th>out {e(metric)}</th></tr>{wf_rows}</table>")  # fmt: skip
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>ticktape optimization</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}</style></head><body>"
        f"<h1>{e(title or 'Optimization')}</h1><p>ranked by {e(metric)} ({len(ranked)} points)</p>{wf}"
        f"<h2>All points</h2><table><tr>{head}</tr>{rows}</table></body></html>\n"
    )
    (out_dir / "optimize.html").write_text(page)
