"""The backtest report: a PNG that opens and a self-contained, escaped, deterministic HTML page."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flows.report import _plot, charted_instruments, duration, thin, write_report
from operators.performance import EquityPoint, Metrics, Trade

NS = 1_000_000_000
T0 = 1_795_405_500 * NS  # 2026-11-23 09:15 IST
SESSION_S = 22_500  # 09:15 to 15:30
PAYLOAD = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


def metrics(**changes: object) -> Metrics:
    fields: dict[str, object] = {
        "net_pnl": 12345.678,
        "gross_pnl": 13000.0,
        "charges": 654.322,
        "return_pct": 1.2345678,
        "final_equity": 1_012_345.678,
        "trades": 3,
        "wins": 2,
        "losses": 1,
        "win_rate": 2 / 3,
        "avg_win": 8000.0,
        "avg_loss": -3000.0,
        "profit_factor": None,
        "expectancy": 4115.226,
        "sharpe": 1.5,
        "sortino": None,
        "max_drawdown": 2500.0,
        "max_drawdown_pct": 0.25,
        "max_drawdown_duration_ns": (3600 + 5 * 60) * NS,
        "exposure_pct": 42.0,
    }
    fields.update(changes)
    return Metrics(**fields)  # type: ignore[arg-type]


def trade(i: int, *, strategy: str = "ema", instrument: str = "NSE:INFY", direction: str = "LONG") -> Trade:
    entry = T0 + i * 60 * NS
    return Trade(
        strategy=strategy,
        instrument=instrument,
        direction=direction,
        qty=10,
        entry_time=entry,
        entry_price=1500.0 + i,
        exit_time=entry + 30 * NS,
        exit_price=1501.0 + i,
        gross_pnl=10.0,
        charges=1.25,
        net_pnl=8.75,
        closed=i % 2 == 0,
    )


def curve(n: int, start: int = T0) -> list[EquityPoint]:
    return [EquityPoint(start + i * 60 * NS, i * 1.0, 0.0, 0.0, 1_000_000.0 + (i % 7) * 100.0, 0.0) for i in range(n)]


def prices(n: int, start: int = T0, step_ns: int = 60 * NS) -> list[tuple[int, float]]:
    return [(start + i * step_ns, 1500.0 + (i % 50)) for i in range(n)]


def render(out: Path, **changes: object) -> tuple[Path, Path]:
    args: dict[str, object] = {
        "title": "ema_crossover on 2 instruments, 2026-11-23",
        "facts": {"strategy": "ema_crossover", "params": "fast=9, slow=21", "timeframe": "1m"},
        "total": metrics(),
        "by_strategy": {"ema": metrics(), "rsi": metrics(net_pnl=-0.001, win_rate=None)},
        "curve": curve(300),
        "trades": [trade(0), trade(1, direction="SHORT"), trade(2, instrument="NSE:TCS", strategy="rsi")],
        "prices": {"NSE:INFY": prices(300), "NSE:TCS": prices(300), "NSE:SBIN": []},
    }
    args.update(changes)
    return write_report(out, **args)  # type: ignore[arg-type]


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 300
    assert image.shape[1] > 1000


def test_writes_a_png_and_an_html_page(tmp_path: Path) -> None:
    png, page = render(tmp_path / "run")

    assert (png.name, page.name) == ("report.png", "report.html")
    check_png(png)
    text = page.read_text(encoding="utf-8")
    assert "<h1>ema_crossover on 2 instruments, 2026-11-23</h1>" in text
    assert "<th>params</th><td>fast=9, slow=21</td>" in text
    assert '<td class="n">12,345.68</td>' in text  # net P&L, two decimals
    assert '<td class="n">1.23%</td>' in text  # return
    assert '<td class="n">66.67%</td>' in text  # win rate, a fraction
    assert '<td class="n">1h 05m</td>' in text  # drawdown duration
    assert '<td class="n">–</td>' in text  # profit factor None
    assert '<td class="n">0.00</td>' in text  # -0.001 is not "-0.00"
    assert "<th>Total</th><th>ema</th><th>rsi</th>" in text
    assert "NSE:INFY" in text
    assert "NSE:TCS" in text
    assert ">2026-11-23 09:15:00<" in text  # entry time in IST
    assert ">2026-11-23 09:16:30<" in text  # exit time in IST
    assert "data:image/png;base64," in text
    assert "http://" not in text
    assert "https://" not in text
    assert "more in trades.csv" not in text


@pytest.mark.parametrize(
    ("y", "at_least"),
    [
        (-np.linspace(0.0, 0.0101, 50), 3),  # a drawdown of 0.01%: ticks 0.002-0.0025 apart
        (1_000_000.0 - np.linspace(0.0, 80.0, 50), 0),  # equity: whole rupees suffice
        (1500.0 + np.linspace(0.0, 3.0, 50), 2),  # a price: paise
    ],
)
def test_y_labels_tell_every_tick_apart(y: np.ndarray, at_least: int) -> None:
    fig = Figure()
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _plot(ax, np.arange(len(y), dtype=float), y)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]

    assert len(labels) >= 3
    assert len(set(labels)) == len(labels), labels
    assert not any(re.fullmatch(r"-[0.,]+", text) for text in labels), labels  # no "-0.00"
    assert all(len(text.rpartition(".")[2]) >= at_least if "." in text else at_least == 0 for text in labels), labels
    assert "e" not in "".join(labels)  # no scientific notation or offset


def test_every_string_is_escaped(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    _, page = render(
        tmp_path,
        title=f"run {evil}",
        facts={evil: evil},
        by_strategy={evil: metrics()},
        trades=[trade(0, strategy=evil)],
    )

    text = page.read_text(encoding="utf-8")
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_caps_the_trade_rows(tmp_path: Path) -> None:
    trades = [trade(i) for i in range(1003)]

    _, page = render(tmp_path, trades=trades)

    text = page.read_text(encoding="utf-8")
    assert "3 more in trades.csv" in text
    assert text.count("<td>NSE:INFY</td>") == 1000


def test_zero_trades_and_an_empty_curve(tmp_path: Path) -> None:
    png, page = render(tmp_path, trades=[], curve=[], prices={})

    check_png(png)
    text = page.read_text(encoding="utf-8")
    assert "No trades." in text
    assert "data:image/png;base64," in text


def test_instruments_without_prices_and_a_curve_over_several_days(tmp_path: Path) -> None:
    days = [*curve(200), *curve(200, start=T0 + 86_400 * NS), *curve(200, start=T0 + 3 * 86_400 * NS)]
    trades = [trade(0, instrument="NSE:NOPRICES"), trade(1, instrument="NSE:NOPRICES")]

    png, _ = render(tmp_path, curve=days, trades=trades, prices={"NSE:NOPRICES": [], "NSE:INFY": prices(10)})

    check_png(png)


def test_the_html_is_deterministic_apart_from_the_image(tmp_path: Path) -> None:
    _, first = render(tmp_path / "a")
    _, second = render(tmp_path / "b")

    a, b = first.read_text(encoding="utf-8"), second.read_text(encoding="utf-8")
    assert PAYLOAD.search(a)
    assert PAYLOAD.sub("", a) == PAYLOAD.sub("", b)


def test_charts_the_instruments_with_the_most_trades_ties_by_name() -> None:
    trades = [trade(0, instrument="B"), trade(1, instrument="C"), trade(2, instrument="C"), trade(3, instrument="A")]

    assert charted_instruments(trades, {"D": [(T0, 1.0)], "E": []}, 3) == ["C", "A", "B"]
    assert charted_instruments(trades, {"D": [(T0, 1.0)], "E": []}, 10) == ["C", "A", "B", "D"]
    assert charted_instruments(trades, {}, 0) == []


def test_thinning_keeps_the_extremes() -> None:
    values = np.zeros(1_000_000)
    values[123_457] = 9.0
    values[765_433] = -9.0

    keep = thin(values, 2000)

    assert len(keep) <= 2004
    assert {0, 123_457, 765_433, 999_999} <= set(keep.tolist())
    assert list(keep) == sorted(keep)
    assert thin(values[:10], 2000).tolist() == list(range(10))


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (None, "–"),
        (0, "0s"),
        (45 * NS, "45s"),
        (5 * 60 * NS, "5m"),
        (3900 * NS, "1h 05m"),
        ((2 * 86_400 + 3 * 3600 + 300) * NS, "2d 3h 05m"),
    ],
)
def test_durations_are_human_readable(ns: int | None, text: str) -> None:
    assert duration(ns) == text


def test_a_million_prices_render_quickly(tmp_path: Path) -> None:
    trades = [trade(i, direction="LONG" if i % 3 else "SHORT") for i in range(500)]
    # One price a second over ~44 sessions of 09:15-15:30, with the nights in between.
    long = [(T0 + ((i // SESSION_S) * 86_400 + i % SESSION_S) * NS, 1500.0 + (i % 977) * 0.05) for i in range(1_000_000)]

    started = time.perf_counter()
    png, _ = render(tmp_path, trades=trades, prices={"NSE:INFY": long}, curve=curve(20_000))
    elapsed = time.perf_counter() - started

    check_png(png)
    assert elapsed < 10.0  # typically ~1 s; generous for slow CI machines


def test_renders_from_several_threads_at_once(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda i: render(tmp_path / str(i)), range(3)))

    for png, _ in results:
        check_png(png)
