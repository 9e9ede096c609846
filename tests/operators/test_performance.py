"""Round trips, equity curves and metrics: hand-computed fixtures and fills-math properties."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.performance import EquityPoint, Metrics, Trade, equity_curves, metrics, round_trips
from schemas.orders import Fill, Side
from tests import stubs

B, S = Side.BUY, Side.SELL


def fill(side: Side, qty: int, price: float, ts: int, **kw: Any) -> Fill:
    """A fill of strategy s1 in NSE:A at ``ts`` (fresh trade and order ids)."""
    n = next(_ids)
    return stubs.fill(side, qty, price, ts=ts, **{"instrument": "NSE:A", "client_order_id": f"c{n}", **kw})


_ids = itertools.count()


def near(x: float) -> Any:
    return pytest.approx(x, rel=1e-12, abs=1e-9)


def trade(strategy: str, instrument: str, direction: str, qty: int, entry: tuple[int, float], exit_: tuple[int, float],
          gross: float, charges: float, *, closed: bool = True) -> Trade:  # fmt: skip
    return Trade(strategy=strategy, instrument=instrument, direction=direction, qty=qty, entry_time=entry[0],
                 entry_price=entry[1], exit_time=exit_[0], exit_price=exit_[1], gross_pnl=gross, charges=charges,
                 net_pnl=gross - charges, closed=closed)  # fmt: skip


def assert_trades(got: list[Trade], want: list[Trade]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g.strategy, g.instrument, g.direction, g.qty, g.entry_time, g.exit_time, g.closed) == (
            w.strategy, w.instrument, w.direction, w.qty, w.entry_time, w.exit_time, w.closed)  # fmt: skip
        assert (g.entry_price, g.exit_price) == (near(w.entry_price), near(w.exit_price))
        assert (g.gross_pnl, g.charges, g.net_pnl) == (near(w.gross_pnl), near(w.charges), near(w.net_pnl))


# ---------------------------------------------------------------------------------------- round trips


def test_round_trips_hand_computed() -> None:
    fills = [
        # 1. long, scaled in: avg cost (10·100 + 10·110)/20 = 105; gross 20·(120 - 105) = 300 = 2400 - 2100;
        #    charges 1 + 1 + 2 = 4 -> net 296
        fill(B, 10, 100.0, 1, charges=1.0),
        fill(B, 10, 110.0, 2, charges=1.0),
        fill(S, 20, 120.0, 3, charges=2.0),
        # 2. long, scaled out: exit (4·55 + 6·48)/10 = 50.8; gross 4·5 + 6·(-2) = 8
        fill(B, 10, 50.0, 4, instrument="NSE:B"),
        fill(S, 4, 55.0, 5, instrument="NSE:B"),
        fill(S, 6, 48.0, 6, instrument="NSE:B"),
        # 3. short: gross 5·(200 - 190) = 50, charges 1 -> net 49
        fill(S, 5, 200.0, 7, strategy="s2", charges=0.5),
        fill(B, 5, 190.0, 8, strategy="s2", charges=0.5),
        # 4. open short of s3 without a mark: valued at its own average 30 -> gross 0, exit_time = its fill
        fill(S, 4, 30.0, 9, strategy="s3", instrument="NSE:C"),
        # 5. flip: long 10 @100, SELL 15 @110 closes 10 (gross 100, charges 1 + 3·10/15 = 3, net 97) and opens a
        #    short of 5 @110 with charges 3·5/15 = 1; BUY 5 @104 closes it: gross 5·6 = 30, charges 1.5, net 28.5
        fill(B, 10, 100.0, 10, charges=1.0),
        fill(S, 15, 110.0, 11, charges=3.0),
        fill(B, 5, 104.0, 12, charges=0.5),
        # 6. open long with a mark (20, 11.0): realized 3·(12 - 10) = 6, unrealized 5·(11 - 10) = 5 -> gross 11;
        #    exit price (3·12 + 5·11)/8 = 91/8 = 11.375; exit_time = the mark time 20
        fill(B, 8, 10.0, 13, instrument="NSE:D", charges=0.25),
        fill(S, 3, 12.0, 14, instrument="NSE:D", charges=0.25),
    ]
    got = round_trips(fills, marks={"NSE:D": (20, 11.0), "NSE:Z": (20, 1.0)})
    assert_trades(got, [
        trade("s1", "NSE:A", "LONG", 20, (1, 105.0), (3, 120.0), 300.0, 4.0),
        trade("s1", "NSE:B", "LONG", 10, (4, 50.0), (6, 50.8), 8.0, 0.0),
        trade("s2", "NSE:A", "SHORT", 5, (7, 200.0), (8, 190.0), 50.0, 1.0),
        trade("s3", "NSE:C", "SHORT", 4, (9, 30.0), (9, 30.0), 0.0, 0.0, closed=False),
        trade("s1", "NSE:A", "LONG", 10, (10, 100.0), (11, 110.0), 100.0, 3.0),
        trade("s1", "NSE:A", "SHORT", 5, (11, 110.0), (12, 104.0), 30.0, 1.5),
        trade("s1", "NSE:D", "LONG", 8, (13, 10.0), (20, 11.375), 11.0, 0.5, closed=False),
    ])  # fmt: skip


def test_round_trips_add_after_partial_exit_uses_average_cost() -> None:
    # B 10 @100; S 5 @110 (realizes 5·10 = 50); B 5 @120 -> avg (5·100 + 5·120)/10 = 110; S 10 @115 (10·5 = 50).
    # gross 100 = sells 550 + 1150 - buys 1000 + 600; entry (10·100 + 5·120)/15; exit (5·110 + 10·115)/15; qty 10.
    fills = [fill(B, 10, 100.0, 1), fill(S, 5, 110.0, 2), fill(B, 5, 120.0, 3), fill(S, 10, 115.0, 4)]
    assert_trades(round_trips(fills), [trade("s1", "NSE:A", "LONG", 10, (1, 1600 / 15), (4, 1700 / 15), 100.0, 0.0)])


def test_round_trips_sort_fills_stably_and_order_ties() -> None:
    # Sorted by ts: S 3 @99 (1), B 3 @98 (2), then the two ts=5 fills in input order: B 10 @100, S 10 @101.
    # Reversing the tie would give a SHORT of 10 instead of a LONG.
    fills = [fill(B, 10, 100.0, 5), fill(S, 10, 101.0, 5), fill(S, 3, 99.0, 1), fill(B, 3, 98.0, 2)]
    assert_trades(round_trips(fills), [
        trade("s1", "NSE:A", "SHORT", 3, (1, 99.0), (2, 98.0), 3.0, 0.0),
        trade("s1", "NSE:A", "LONG", 10, (5, 100.0), (5, 101.0), 10.0, 0.0),
    ])  # fmt: skip
    # Equal (exit_time, entry_time): strategy, then instrument decide.
    same = [fill(B, 1, 1.0, 1, strategy=s, instrument=i) for s, i in (("b", "Y"), ("b", "X"), ("a", "Z"))]
    assert [(t.strategy, t.instrument) for t in round_trips(same)] == [("a", "Z"), ("b", "X"), ("b", "Y")]


def test_round_trips_stale_mark_never_precedes_the_last_fill() -> None:
    (t,) = round_trips([fill(S, 2, 50.0, 10)], marks={"NSE:A": (5, 40.0)})
    assert (t.exit_time, t.exit_price, t.gross_pnl, t.closed) == (10, 40.0, 20.0, False)  # short: 2·(50 - 40)


def test_round_trips_empty() -> None:
    assert round_trips([]) == []


# ---------------------------------------------------------------------------------------- equity curves


def point(ts: int, realized: float, unrealized: float, charges: float, exposure: float) -> EquityPoint:
    return EquityPoint(ts, realized, unrealized, charges, 1000.0 + realized + unrealized - charges, exposure)


def assert_curve(got: list[EquityPoint], want: list[EquityPoint]) -> None:
    assert [p.ts for p in got] == [p.ts for p in want]
    for g, w in zip(got, want, strict=True):
        assert tuple(g) == tuple(near(x) for x in w)


def test_equity_curves_hand_computed() -> None:
    # step 10 ns, capital 1000; s1 trades NSE:A, s2 trades NSE:B.
    fills = [
        fill(B, 2, 100.5, 5, charges=0.5),  # applied before the price at ts 5 (ts_event <= ts)
        fill(S, 4, 50.0, 15, strategy="s2", instrument="NSE:B", charges=1.0),  # before the price 51 at ts 15
        fill(S, 2, 104.0, 101, charges=0.5),  # realizes 2·(104 - 100.5) = 7
        fill(B, 4, 48.0, 125, strategy="s2", instrument="NSE:B", charges=1.0),  # after the last price: 4·(50 - 48) = 8
    ]
    prices = [(1, "NSE:A", 100.0), (5, "NSE:A", 101.0), (12, "NSE:A", 102.0), (15, "NSE:B", 51.0),
              (100, "NSE:A", 105.0), (103, "NSE:B", 49.0)]  # fmt: skip
    curves = equity_curves(fills, iter(prices), 1000.0, 10)
    assert list(curves.by_strategy) == ["s1", "s2"]
    # bucket [0, 10): s1 long 2 @100.5, A last 101 -> unrealized 1, exposure 202; s2 flat, not traded yet
    # bucket [10, 20): A 102 -> s1 unrealized 3, exposure 204; s2 short 4 @50, B last 51 -> -4, exposure 204
    # buckets [20, 100): nothing -> no points (the "night")
    # bucket [100, 110): s1 flat, realized 7, charges 1; s2 marked at 49: unrealized 4, exposure 196
    # bucket [120, 130): s2 closes: realized 8, charges 2
    assert_curve(curves.by_strategy["s1"], [
        point(10, 0.0, 1.0, 0.5, 202.0), point(20, 0.0, 3.0, 0.5, 204.0),
        point(110, 7.0, 0.0, 1.0, 0.0), point(130, 7.0, 0.0, 1.0, 0.0),
    ])  # fmt: skip
    assert_curve(curves.by_strategy["s2"], [
        point(10, 0.0, 0.0, 0.0, 0.0), point(20, 0.0, -4.0, 1.0, 204.0),
        point(110, 0.0, 4.0, 1.0, 196.0), point(130, 8.0, 0.0, 2.0, 0.0),
    ])  # fmt: skip
    # total: equities 1000.5, 1000 - 1 - 1.5 = 997.5, 1000 + 7 + 4 - 2 = 1009, 1000 + 15 - 3 = 1012
    assert_curve(curves.total, [
        point(10, 0.0, 1.0, 0.5, 202.0), point(20, 0.0, -1.0, 1.5, 408.0),
        point(110, 7.0, 4.0, 2.0, 196.0), point(130, 15.0, 0.0, 3.0, 0.0),
    ])  # fmt: skip
    assert [p.equity for p in curves.total] == [near(1000.5), near(997.5), near(1009.0), near(1012.0)]


def test_equity_curves_without_fills_or_prices() -> None:
    flat = equity_curves([], [(3, "NSE:A", 1.0), (25, "NSE:A", 2.0)], 500.0, 10)
    assert flat.total == [EquityPoint(10, 0.0, 0.0, 0.0, 500.0, 0.0), EquityPoint(30, 0.0, 0.0, 0.0, 500.0, 0.0)]
    assert flat.by_strategy == {}
    only_fills = equity_curves([fill(B, 1, 10.0, 7), fill(S, 1, 12.0, 9)], [], 100.0, 10)
    assert only_fills.total == [EquityPoint(10, 2.0, 0.0, 0.0, 102.0, 0.0)]
    assert equity_curves([], [], 100.0, 10) == ([], {})
    with pytest.raises(ValueError, match="step_ns"):
        equity_curves([], [], 100.0, 0)


def test_equity_curves_are_deterministic() -> None:
    fills = [fill(B if k % 3 else S, 1 + k % 4, 100.0 + k / 7, k * 3, strategy=f"s{k % 2}", charges=0.1) for k in range(40)]
    prices = [(k, "NSE:A", 100.0 + math.sin(k)) for k in range(130)]
    assert equity_curves(fills, prices, 1e5, 7) == equity_curves(list(fills), list(prices), 1e5, 7)


# ---------------------------------------------------------------------------------------- metrics


def closed_trade(net: float, *, closed: bool = True) -> Trade:
    return trade("s1", "NSE:A", "LONG", 1, (0, 1.0), (1, 1.0), net, 0.0, closed=closed)


def test_metrics_hand_computed() -> None:
    trades = [closed_trade(x) for x in (10.0, -5.0, 0.0, 20.0, -15.0)] + [closed_trade(100.0, closed=False)]
    # capital 100; equities 110, 99, 108.9, 119.79 -> returns 0.1, -0.1, 0.1, 0.1
    curve = [
        EquityPoint(10, 10.0, 0.0, 0.0, 110.0, 5.0),
        EquityPoint(20, 10.0, -11.0, 0.0, 99.0, 0.0),
        EquityPoint(30, 10.0, -1.1, 0.0, 108.9, 3.0),
        EquityPoint(40, 20.0, 1.79, 2.0, 119.79, 0.0),
    ]
    m = metrics(trades, curve, 100.0, periods_per_year=4)
    assert (m.trades, m.wins, m.losses) == (5, 2, 2)  # break-even counts as a trade only; the open one not at all
    assert (m.win_rate, m.avg_win, m.avg_loss) == (near(0.4), near(15.0), near(-10.0))
    assert m.profit_factor == near(30.0 / 20.0)
    assert m.expectancy == near(10.0 / 5)
    # last point: gross 20 + 1.79, charges 2, net = 119.79 - 100 = 19.79
    assert (m.gross_pnl, m.charges, m.net_pnl) == (near(21.79), 2.0, near(19.79))
    assert (m.final_equity, m.return_pct) == (119.79, near(19.79))
    # mean 0.05; deviations 0.05, -0.15, 0.05, 0.05 -> sum of squares 0.03, /3 = 0.01, stdev 0.1;
    # sharpe = 0.05/0.1·√4 = 1
    assert m.sharpe == near(1.0)
    # downside: mean(0, 0.01, 0, 0) = 0.0025 -> √ = 0.05; sortino = 0.05/0.05·√4 = 2
    assert m.sortino == near(2.0)
    # peak 110 at ts 10; 99 is 11 below (10 %); back above 110 at ts 40 -> 30 ns
    assert (m.max_drawdown, m.max_drawdown_pct, m.max_drawdown_duration_ns) == (near(11.0), near(10.0), 30)
    assert m.exposure_pct == 50.0  # 2 of 4 points hold a position


def test_metrics_drawdown_from_capital_never_recovered() -> None:
    # peak = capital 100 from the first point's ts (10); 95, 97, 90 never get back: duration 30 - 10 = 20.
    # The deepest point is 90: 10 below the peak (10 %).
    curve = [EquityPoint(ts, 0.0, e - 100.0, 0.0, e, 1.0) for ts, e in ((10, 95.0), (20, 97.0), (30, 90.0))]
    m = metrics([], curve, 100.0, 252)
    assert (m.max_drawdown, m.max_drawdown_pct, m.max_drawdown_duration_ns) == (near(10.0), near(10.0), 20)
    assert m.exposure_pct == 100.0
    assert m.sortino is not None
    assert m.sortino < 0
    assert (m.trades, m.win_rate, m.avg_win, m.avg_loss, m.profit_factor, m.expectancy) == (0, None, None, None, None, None)


def test_metrics_drawdown_pct_and_rupees_peak_separately_and_longest_duration_wins() -> None:
    # capital 100: 50 (ts 10, -50 = 50 %), 200 (ts 20, recovered after 10 ns), 120 (ts 30: -80 = 40 %),
    # 150 (ts 40), 210 (ts 70: recovered after 50 ns)
    curve = [EquityPoint(ts, 0.0, e - 100.0, 0.0, e, 0.0) for ts, e in ((10, 50.0), (20, 200.0), (30, 120.0), (40, 150.0),
                                                                      (70, 210.0))]  # fmt: skip
    m = metrics([], curve, 100.0, 1)
    assert (m.max_drawdown, m.max_drawdown_pct, m.max_drawdown_duration_ns) == (near(80.0), near(50.0), 50)


def test_metrics_flat_and_empty() -> None:
    flat = metrics([closed_trade(5.0)], [EquityPoint(ts, 0.0, 0.0, 0.0, 100.0, 0.0) for ts in (1, 2, 3)], 100.0, 252)
    assert (flat.sharpe, flat.sortino, flat.profit_factor) == (None, None, None)  # zero stdev, no negative, no loss
    assert (flat.max_drawdown, flat.max_drawdown_duration_ns, flat.exposure_pct) == (0.0, 0, 0.0)
    one = metrics([], [EquityPoint(1, 0.0, -1.0, 0.0, 99.0, 1.0)], 100.0, 252)
    assert (one.sharpe, one.sortino) == (None, None)  # a single return
    assert metrics([], [], 100.0, 252) == Metrics(
        net_pnl=0.0, gross_pnl=0.0, charges=0.0, return_pct=0.0, final_equity=100.0, trades=0, wins=0, losses=0,
        win_rate=None, avg_win=None, avg_loss=None, profit_factor=None, expectancy=None, sharpe=None, sortino=None,
        max_drawdown=0.0, max_drawdown_pct=0.0, max_drawdown_duration_ns=0, exposure_pct=0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="capital"):
        metrics([], [], 0.0, 252)


# ---------------------------------------------------------------------------------------- properties

_legs = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2"]),
        st.sampled_from(["NSE:A", "NSE:B"]),
        st.integers(-20, 20).filter(bool),
        st.floats(1.0, 1000.0, allow_nan=False).map(lambda x: round(x, 2)),
        st.floats(0.0, 5.0, allow_nan=False).map(lambda x: round(x, 2)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_legs, st.integers(1, 50))
def test_flat_runs_conserve_cash_and_charges(legs: list[tuple[str, str, int, float, float]], step: int) -> None:
    fills: list[Fill] = []
    pos: dict[tuple[str, str], int] = {}
    for ts, (s, i, n, px, ch) in enumerate(legs):
        fills.append(fill(B if n > 0 else S, abs(n), px, ts // 3, strategy=s, instrument=i, charges=ch))  # ties too
        pos[s, i] = pos.get((s, i), 0) + n
    for (s, i), q in pos.items():  # flatten everything at the end
        if q:
            fills.append(fill(S if q > 0 else B, abs(q), 500.0, len(legs), strategy=s, instrument=i, charges=0.3))
    trades = round_trips(fills)
    assert all(t.closed for t in trades)
    cash = math.fsum((f.qty if f.side is S else -f.qty) * f.price for f in fills)
    assert math.fsum(t.gross_pnl for t in trades) == pytest.approx(cash, abs=1e-6)
    assert math.fsum(t.charges for t in trades) == pytest.approx(math.fsum(f.charges for f in fills), abs=1e-9)
    assert all(t.net_pnl == t.gross_pnl - t.charges for t in trades)
    curves = equity_curves(fills, [(ts, "NSE:A", 100.0 + ts) for ts in range(0, len(legs), 2)], 1e6, step)
    if fills:
        end = curves.total[-1]
        assert end.realized == pytest.approx(math.fsum(t.gross_pnl for t in trades), abs=1e-6)
        assert (end.unrealized, end.exposure) == (0.0, 0.0)
        assert end.charges == pytest.approx(math.fsum(f.charges for f in fills), abs=1e-9)
        for curve in curves.by_strategy.values():
            assert [p.ts for p in curve] == [p.ts for p in curves.total]
