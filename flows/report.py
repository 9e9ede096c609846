"""The report of a backtest: ``report.png`` and a self-contained ``report.html`` in one directory.

The PNG stacks, on one time axis in IST: the total equity curve; the drawdown (% below the running peak,
filled); then, for the instruments with the most trades (at most ``max_charts``, ties by name), the price
with the trades on it (^ green: long entry, v red: short entry, x: exit of a closed trade). Pauses longer
than two hours (nights, weekends) are cut out of the time axis, a dotted line marking each session start.
Long series are thinned to the min and max of ~1000 buckets: a million prices render in about a second
and no spike disappears.

The HTML holds the title, the run facts, the metrics (the total, then one column per strategy), the PNG
as a ``data:`` URI and the first 1000 trades (the caller writes them all to trades.csv). It loads nothing
from the network and, for the same inputs, is the same bytes apart from the embedded PNG.

    png, page = write_report(Path("runs/2026-11-23"), title="ema_crossover on 3 instruments", facts={...},
                             total=metrics, by_strategy={...}, curve=curve, trades=trades, prices=prices)
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Callable, Container, Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, Formatter, FuncFormatter

from operators.candles import IST, IST_OFFSET_NS
from operators.performance import EquityPoint, Metrics, Trade

NS = 1_000_000_000
IST_S = IST_OFFSET_NS // NS  # UTC+5:30
DAY_S = 86_400
TICK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, DAY_S)  # seconds, on the IST clock
GAP_NS = 2 * 3600 * NS  # a pause longer than this is a night or a weekend, not trading time
MAX_POINTS = 2000  # per plotted series
MAX_ROWS = 1000  # trades rendered in the HTML
DPI = 110
DASH = "–"
_PRICE = np.dtype([("ts", "i8"), ("price", "f8")])
_Prices = Mapping[str, Sequence[tuple[int, float]]]


def write_report(
    out_dir: Path,
    *,
    title: str,
    facts: Mapping[str, str],
    total: Metrics,
    by_strategy: Mapping[str, Metrics],
    curve: Sequence[EquityPoint],
    trades: Sequence[Trade],
    prices: Mapping[str, Sequence[tuple[int, float]]],
    max_charts: int = 4,
) -> tuple[Path, Path]:
    """Write ``report.png`` and ``report.html`` into ``out_dir`` (created if missing); return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = _render_png(title, curve, trades, prices, max_charts)
    png_path, html_path = out_dir / "report.png", out_dir / "report.html"
    png_path.write_bytes(png)
    page = _render_html(title, facts, [("Total", total), *by_strategy.items()], trades, png)
    html_path.write_text(page, encoding="utf-8", newline="\n")
    return png_path, html_path


def charted_instruments(trades: Sequence[Trade], prices: Mapping[str, Sequence[object]], max_charts: int) -> list[str]:
    """The instruments that get a price panel: the most trades first, ties by name; none without data."""
    counts = Counter(t.instrument for t in trades)
    names = set(counts) | {name for name, series in prices.items() if len(series)}
    return sorted(names, key=lambda name: (-counts[name], name))[: max(max_charts, 0)]


def thin(values: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Sorted indices of the first, the last, and the min and max of each bucket: at most ~``max_points``."""
    n = values.size
    if n <= max_points:
        return np.arange(n)
    size = -(-n // (max_points // 2))
    full = n // size
    body = values[: full * size].reshape(full, size)
    start = np.arange(full) * size
    parts = [start + body.argmin(axis=1), start + body.argmax(axis=1), np.array([0, n - 1])]
    if full * size < n:
        tail = values[full * size :]
        parts.append(full * size + np.array([tail.argmin(), tail.argmax()]))
    return np.unique(np.concatenate(parts))


class _TimeAxis:
    """Maps UTC ns to plot x (seconds of trading time), cutting out the pauses longer than ``GAP_NS``."""

    def __init__(self, stamps: Sequence[np.ndarray]) -> None:
        starts, ends = [], []
        for ts in stamps:
            if ts.size:
                cut = np.flatnonzero(np.diff(ts) > GAP_NS)
                starts.append(ts[np.r_[0, cut + 1]])
                ends.append(ts[np.r_[cut, ts.size - 1]])
        self.empty = not starts
        if self.empty:
            starts, ends = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)]
        start, end = np.concatenate(starts), np.concatenate(ends)
        order = np.argsort(start, kind="stable")
        start, end = start[order], np.maximum.accumulate(end[order])
        new = np.r_[True, start[1:] > end[:-1] + GAP_NS]
        self.start = start[new]
        self.end = np.r_[end[np.flatnonzero(new)[1:] - 1], end[-1]]
        self.width = (self.end - self.start) / NS
        breaks = self.start.size - 1
        # A cut pause still takes a little room (2% of the chart in all), so sessions do not touch.
        self.gap = self.width.sum() * 0.02 / breaks if breaks and self.width.sum() > 0 else 1.0
        self.offset = np.r_[0.0, np.cumsum(self.width[:-1] + self.gap)]

    def x(self, ts: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(self.start, ts, side="right") - 1, 0, self.start.size - 1)
        return self.offset[i] + (np.clip(ts, self.start[i], self.end[i]) - self.start[i]) / NS

    def ns(self, x: float) -> int:
        i = int(np.clip(np.searchsorted(self.offset, x, side="right") - 1, 0, self.start.size - 1))
        return int(self.start[i]) + int(min(max(x - self.offset[i], 0.0), self.width[i]) * NS)

    def decorate(self, ax: Axes) -> None:
        """Ticks on round IST times within one session, else at session starts; dotted session breaks."""
        if self.empty:
            ax.set_xticks([])
            return
        if self.start.size == 1:
            width = self.width[0]
            step = next((s for s in TICK_STEPS if width / s <= 8), DAY_S * math.ceil(width / DAY_S / 8))
            ticks = np.arange(-(int(self.start[0]) // NS + IST_S) % step, width + 1, step)
            fmt = "%H:%M" if width <= DAY_S else "%d %b %H:%M" if step < DAY_S else "%d %b"
            ticks = ticks if ticks.size else np.zeros(1)  # a lone point still gets its time
        else:
            ticks = self.offset[:: -(-self.start.size // 8)]
            fmt = "%d %b" if self.end[-1] - self.start[0] <= 300 * DAY_S * NS else "%d %b %Y"
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _ist(self.ns(x), fmt)))
        if 1 < self.start.size <= 60:
            for x in self.offset[1:] - self.gap / 2:
                ax.axvline(x, color="0.75", lw=0.6, ls=":")


def _series(points: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    arr = np.fromiter(points, dtype=_PRICE, count=len(points))
    return arr["ts"], arr["price"]


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4", fontsize=12)
    ax.set_yticks([])


class PlainFormatter(Formatter):
    """Plain y labels (no "1e6" offset), with thousands separators and at least ``digits``
    decimals - more when the ticks need them to stay apart (a drawdown of 0.01% has ticks
    0.0025 apart, which two decimals would print as "-0.00" three times). No "-0".

    >>> f = PlainFormatter(2)
    >>> f.set_locs([-0.01, -0.0075, -0.005, -0.0025, 0.0])
    >>> [f(v) for v in f.ticks]
    ['-0.0100', '-0.0075', '-0.0050', '-0.0025', '0.0000']
    >>> f.set_locs([999_940.0, 999_960.0, 1_000_000.0])
    >>> f(1_000_000.0), PlainFormatter(0)(-1e-12)
    ('1,000,000.00', '0')
    """

    MAX_DIGITS = 8

    def __init__(self, digits: int) -> None:
        self.least = self.digits = digits
        self.ticks: list[float] = []

    def set_locs(self, locs: Sequence[float]) -> None:
        self.ticks = [float(v) for v in locs]
        digits, scale = self.least, max((abs(v) for v in self.ticks), default=1.0) or 1.0
        while digits < self.MAX_DIGITS and any(abs(round(v, digits) - v) > 1e-9 * scale for v in self.ticks):
            digits += 1
        self.digits = digits

    def __call__(self, x: float, pos: int | None = None) -> str:
        return fixed(x, self.digits)


def _plot(ax: Axes, x: np.ndarray, y: np.ndarray, **style: object) -> None:
    """A line with plain y labels (:class:`PlainFormatter`): decimals only for a narrow range."""
    ax.plot(x, y, **style)
    ax.yaxis.set_major_formatter(PlainFormatter(0 if np.ptp(y) >= 100 else 2))


def _render_png(
    title: str, curve: Sequence[EquityPoint], trades: Sequence[Trade], prices: _Prices, max_charts: int
) -> bytes:
    names = charted_instruments(trades, prices, max_charts)
    series = {name: _series(prices.get(name, ())) for name in names}
    mine = {name: [t for t in trades if t.instrument == name] for name in names}
    curve_ts = np.fromiter((p.ts for p in curve), dtype=np.int64, count=len(curve))
    equity = np.fromiter((p.equity for p in curve), dtype=np.float64, count=len(curve))
    trade_ts = [np.sort(np.array([t for tr in ts for t in (tr.entry_time, tr.exit_time)], np.int64)) for ts in mine.values()]
    axis = _TimeAxis([np.sort(curve_ts), *(ts for ts, _ in series.values()), *trade_ts])

    ratios = [3.0, 1.5] + [2.5] * len(names)
    fig = Figure(figsize=(12.0, 1.0 + 0.9 * sum(ratios)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title, fontsize=13)
    axes = fig.subplots(len(ratios), 1, sharex=True, squeeze=False, height_ratios=ratios)[:, 0]
    eq_ax, dd_ax = axes[0], axes[1]
    eq_ax.set_title("Equity (₹)", loc="left", fontsize=10)
    dd_ax.set_title("Drawdown (% below peak)", loc="left", fontsize=10)
    if equity.size:
        keep = thin(equity)
        _plot(eq_ax, axis.x(curve_ts[keep]), equity[keep], color="tab:blue", lw=1.0)
        peak = np.maximum.accumulate(equity)
        dd = np.divide(equity - peak, peak, out=np.zeros_like(equity), where=peak > 0) * 100.0
        keep = thin(dd)
        x = axis.x(curve_ts[keep])
        dd_ax.fill_between(x, dd[keep], 0.0, color="tab:red", alpha=0.3, lw=0)
        _plot(dd_ax, x, dd[keep], color="tab:red", lw=0.6)
    else:
        _no_data(eq_ax, "no data")
        _no_data(dd_ax, "no data")

    for ax, name in zip(axes[2:], names, strict=True):
        ts, price = series[name]
        ax.set_title(f"{name} ({len(mine[name])} trade{'' if len(mine[name]) == 1 else 's'})", loc="left", fontsize=10)
        if ts.size:
            keep = thin(price)
            _plot(ax, axis.x(ts[keep]), price[keep], color="0.35", lw=0.7)
        else:
            _no_data(ax, "no prices")
        marks = [
            ("^", "tab:green", "long entry", [(t.entry_time, t.entry_price) for t in mine[name] if t.direction == "LONG"]),
            ("v", "tab:red", "short entry", [(t.entry_time, t.entry_price) for t in mine[name] if t.direction != "LONG"]),
            ("x", "black", "exit", [(t.exit_time, t.exit_price) for t in mine[name] if t.closed]),
        ]
        for marker, color, label, points in marks:
            if points:
                at, px = _series(points)
                ax.scatter(axis.x(at), px, marker=marker, color=color, s=28, lw=1.0, label=label, zorder=3)
        if mine[name]:
            ax.legend(loc="upper left", fontsize=8, frameon=False, ncols=3)
    for ax in axes:
        ax.grid(True, color="0.9", lw=0.6)
        axis.decorate(ax)
    axes[-1].set_xlabel("time (IST)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _ist(ns: int, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return datetime.fromtimestamp(ns // NS, IST).strftime(fmt)


def fixed(value: float, digits: int = 2) -> str:
    """``digits`` decimals with thousands separators, never "-0.00" (what rounds to zero is zero).

    >>> fixed(-0.004), fixed(1234.5678), fixed(-1e-12, 0)
    ('0.00', '1,234.57', '0')
    """
    return f"{(0.0 if round(value, digits) == 0 else value):,.{digits}f}"


def _num(value: float | None, scale: float = 1.0, unit: str = "") -> str:
    """Two decimals with thousands separators (never "-0.00"), then ``unit``; "–" for None."""
    return DASH if value is None else fixed(value * scale) + unit


def percent(value: float | None, scale: float = 1.0, unit: str = "%") -> str:
    """A percentage: two decimals, or two significant digits below 0.01% (a drawdown of
    0.0012% on a large account is not "0.00%"); "–" for None.

    >>> percent(1.2345678), percent(0.0012345), percent(-0.000012345), percent(0.0), percent(2e-9), percent(0.5, 100)
    ('1.23%', '0.0012%', '-0.000012%', '0.00%', '0.00%', '50.00%')
    """
    if value is None:
        return DASH
    value *= scale
    magnitude = abs(value)
    if magnitude >= 0.01 or magnitude < 1e-6:
        return _num(value, unit=unit)
    return f"{value:.{1 - math.floor(math.log10(magnitude))}f}{unit}"


def duration(ns: int | None) -> str:
    """Human-readable span: "45s", "5m", "1h 05m", "2d 3h 05m"."""
    if ns is None:
        return DASH
    seconds = max(int(ns), 0) // NS
    if seconds < 60:
        return f"{seconds}s"
    days, rest = divmod(seconds // 60, 1440)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m"


# The *_pct fields are already percent; win_rate is a fraction (0..1), as its name has no _pct.
METRIC_ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("Net P&L (₹)", "net_pnl", _num),
    ("Gross P&L (₹)", "gross_pnl", _num),
    ("Charges (₹)", "charges", _num),
    ("Return", "return_pct", percent),
    ("Final equity (₹)", "final_equity", _num),
    ("Closed trades", "trades", str),
    ("Wins", "wins", str),
    ("Losses", "losses", str),
    ("Win rate", "win_rate", partial(percent, scale=100.0)),
    ("Average win (₹)", "avg_win", _num),
    ("Average loss (₹)", "avg_loss", _num),
    ("Profit factor", "profit_factor", _num),
    ("Expectancy (₹ per trade)", "expectancy", _num),
    ("Sharpe", "sharpe", _num),
    ("Sortino", "sortino", _num),
    ("Max drawdown (₹)", "max_drawdown", _num),
    ("Max drawdown", "max_drawdown_pct", percent),
    ("Max drawdown duration", "max_drawdown_duration_ns", duration),
    ("Exposure", "exposure_pct", percent),
)
TRADE_COLUMNS = ("Strategy", "Instrument", "Direction", "Qty", "Entry (IST)", "Entry price", "Exit (IST)", "Exit price")
TRADE_COLUMNS += ("Gross (₹)", "Charges (₹)", "Net (₹)", "Closed")
NUMERIC_TRADE_COLUMNS = frozenset({3, 5, 7, 8, 9, 10})
_CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%}"""


def _row(cells: Sequence[str], tag: str = "td", numeric: Container[int] = ()) -> str:
    """One table row, every cell escaped; the cells at the ``numeric`` indices are right-aligned."""
    right = ' class="n"'
    parts = (f"<{tag}{right if i in numeric else ''}>{html.escape(cell)}</{tag}>" for i, cell in enumerate(cells))
    return f"<tr>{''.join(parts)}</tr>"


def _trade_cells(t: Trade) -> list[str]:
    return [
        *(t.strategy, t.instrument, t.direction, str(t.qty), _ist(t.entry_time), _num(t.entry_price), _ist(t.exit_time)),
        *(_num(t.exit_price), _num(t.gross_pnl), _num(t.charges), _num(t.net_pnl), "yes" if t.closed else "open"),
    ]


def _render_html(
    title: str, facts: Mapping[str, str], columns: list[tuple[str, Metrics]], trades: Sequence[Trade], png: bytes
) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<table>",
        *(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()),
        "</table>",
        "<h2>Metrics</h2>",
        "<table>",
        _row(["", *(name for name, _ in columns)], tag="th"),
        *(
            _row([label, *(fmt(getattr(m, field)) for _, m in columns)], numeric=range(1, len(columns) + 1))
            for label, field, fmt in METRIC_ROWS
        ),
        "</table>",
        f'<img alt="equity, drawdown and prices" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">',
        f"<h2>Trades ({len(trades)})</h2>",
    ]
    if trades:
        out += ["<table>", _row(TRADE_COLUMNS, tag="th")]
        for t in trades[:MAX_ROWS]:
            out.append(_row(_trade_cells(t), numeric=NUMERIC_TRADE_COLUMNS))
        out.append("</table>")
        if len(trades) > MAX_ROWS:
            out.append(f"<p>Showing the first {MAX_ROWS}; {len(trades) - MAX_ROWS} more in trades.csv.</p>")
    else:
        out.append("<p>No trades.</p>")
    out += ["</body></html>", ""]
    return "\n".join(out)
