"""Backtest performance: round-trip trades, equity curves and metrics from fills and prices.

Pure and deterministic (no I/O, no clock): the backtest runner feeds it the run's fills and
the replayed prices, and writes what it returns. The same input gives bit-identical floats:
fills are sorted stably by ``ts_event`` (fills with equal timestamps keep their input order)
and every sum runs in a fixed order.

* **Positions** use the average-cost method of :mod:`operators.portfolio`: adding re-weights
  the average, reducing realizes ``(price - avg)`` per unit of a long (``avg - price`` of a
  short), and a flip closes the old side and opens the rest at the fill price.
* :func:`round_trips` cuts each (strategy, instrument) into trades from flat back to flat.
* :func:`equity_curves` samples the account and each strategy once per time bucket.
* :func:`metrics` summarises trades and a curve.

>>> from schemas.orders import Fill, Side
>>> def fill(side, qty, price, ts):
...     return Fill(venue="sim", trade_id=f"t{ts}", client_order_id="c", venue_order_id="v", account="acc",
...                 strategy="ema", instrument="NSE:INFY", side=side, qty=qty, price=price, ts_event=ts,
...                 ts_init=ts, charges=1.0)
>>> fills = [fill(Side.BUY, 10, 100.0, 1), fill(Side.SELL, 10, 105.0, 3)]
>>> [(t.direction, t.qty, t.entry_price, t.exit_price, t.gross_pnl, t.net_pnl) for t in round_trips(fills)]
[('LONG', 10, 100.0, 105.0, 50.0, 48.0)]
>>> curves = equity_curves(fills, [(2, "NSE:INFY", 99.0)], capital=10_000.0, step_ns=2)
>>> [(p.ts, p.unrealized, p.equity) for p in curves.total]
[(2, 0.0, 9999.0), (4, 0.0, 10048.0)]
>>> m = metrics(round_trips(fills), curves.total, capital=10_000.0, periods_per_year=252)
>>> (m.trades, m.win_rate, m.net_pnl, m.max_drawdown, m.max_drawdown_duration_ns, m.exposure_pct)
(1, 1.0, 48.0, 1.0, 2, 50.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import NamedTuple

import msgspec

from schemas.orders import Fill, Side


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """One round trip of a strategy in an instrument: from flat back to flat."""

    strategy: str
    instrument: str
    direction: str  # "LONG" or "SHORT"
    qty: int  # the largest absolute position held during the trade
    entry_time: int  # ns: the first fill
    entry_price: float  # quantity-weighted average price of the fills that opened or added
    exit_time: int  # ns: the last fill (or the mark time when still open)
    exit_price: float  # quantity-weighted average price of the fills that reduced or closed (or the mark)
    gross_pnl: float
    charges: float
    net_pnl: float  # gross_pnl - charges
    closed: bool  # False: still open at the end of the run, marked to the last price


class EquityPoint(NamedTuple):
    ts: int  # ns: the end of the sampling step
    realized: float  # gross realized PnL to date
    unrealized: float
    charges: float  # charges to date
    equity: float  # capital + realized + unrealized - charges
    exposure: float  # gross notional of the open positions (sum of |qty| x price)


class Curves(NamedTuple):
    total: list[EquityPoint]
    by_strategy: dict[str, list[EquityPoint]]  # same timestamps as ``total``


class Metrics(msgspec.Struct, frozen=True, kw_only=True):
    net_pnl: float
    gross_pnl: float
    charges: float
    return_pct: float
    final_equity: float
    trades: int  # closed round trips
    wins: int
    losses: int
    win_rate: float | None
    avg_win: float | None
    avg_loss: float | None  # negative
    profit_factor: float | None  # None when there is no losing trade
    expectancy: float | None  # mean net PnL per closed trade
    sharpe: float | None
    sortino: float | None
    max_drawdown: float  # rupees, positive
    max_drawdown_pct: float  # of the peak it fell from
    max_drawdown_duration_ns: int
    exposure_pct: float  # share of samples with an open position


_NEVER = 1 << 63  # after every ns timestamp: "no more fills"


def _fill_math(qty: int, avg: float, n: int, price: float) -> tuple[int, float, float]:
    """Average-cost update of the signed position ``qty`` at ``avg`` by the signed fill ``n`` at
    ``price``: ``(new qty, new avg, realized gross)``. Flat positions have ``avg == 0``."""
    new = qty + n
    if qty == 0:
        return new, price, 0.0  # not (n·price)/n, which can be 1 ulp off the fill price
    if (qty > 0) == (n > 0):
        return new, (abs(qty) * avg + abs(n) * price) / abs(new), 0.0
    closed = min(abs(qty), abs(n))
    realized = closed * (price - avg) if qty > 0 else closed * (avg - price)
    if new == 0:
        return 0, 0.0, realized
    return new, (avg if (new > 0) == (qty > 0) else price), realized


def _signed(fill: Fill) -> int:
    return fill.qty if fill.side is Side.BUY else -fill.qty


class _Trip:
    """A round trip being built (mutable; never leaves this module)."""

    __slots__ = ("avg", "charges", "entry", "entry_qty", "entry_time", "exit", "exit_qty", "gross", "last_time", "long",
                 "max_qty", "pos")  # fmt: skip

    def __init__(self, n: int, price: float, charges: float, ts: int) -> None:
        self.long = n > 0
        self.pos, self.avg, self.gross, self.charges = n, price, 0.0, charges
        self.max_qty = self.entry_qty = abs(n)
        self.entry, self.exit_qty, self.exit = abs(n) * price, 0, 0.0  # notionals
        self.entry_time = self.last_time = ts

    def apply(self, n: int, price: float, charges: float, ts: int) -> None:
        """Add or reduce by ``n``; never past flat (the caller splits a flip)."""
        adding = (n > 0) == self.long
        self.pos, self.avg, realized = _fill_math(self.pos, self.avg, n, price)
        self.gross += realized
        if adding:
            self.entry_qty += abs(n)
            self.entry += abs(n) * price
            self.max_qty = max(self.max_qty, abs(self.pos))
        else:
            self.exit_qty += abs(n)
            self.exit += abs(n) * price
        self.charges += charges
        self.last_time = ts

    def trade(self, strategy: str, instrument: str, mark: tuple[int, float] | None) -> Trade:
        """The trade so far; the open rest is valued at ``mark`` or, without one, at its average cost."""
        rest, gross, exit_time, exit_qty, exit_notional = abs(self.pos), self.gross, self.last_time, self.exit_qty, self.exit
        if rest:
            mark_ts, mark_px = mark if mark is not None else (self.last_time, self.avg)
            gross += rest * (mark_px - self.avg) if self.long else rest * (self.avg - mark_px)
            exit_qty, exit_notional = exit_qty + rest, exit_notional + rest * mark_px
            exit_time = max(exit_time, mark_ts)  # a stale mark never ends a trade before its last fill
        return Trade(
            strategy=strategy,
            instrument=instrument,
            direction="LONG" if self.long else "SHORT",
            qty=self.max_qty,
            entry_time=self.entry_time,
            entry_price=self.entry / self.entry_qty,
            exit_time=exit_time,
            exit_price=exit_notional / exit_qty,
            gross_pnl=gross,
            charges=self.charges,
            net_pnl=gross - self.charges,
            closed=rest == 0,
        )


def round_trips(fills: Iterable[Fill], marks: Mapping[str, tuple[int, float]] | None = None) -> list[Trade]:
    """Cut each (strategy, instrument) into round trips: from flat back to exactly flat.

    A fill that flips the position closes the trade with the quantity that reaches flat and
    opens the next one with the rest, splitting its charges pro rata by quantity. A trade
    still open at the end comes back with ``closed=False``, its open quantity valued at
    ``marks[instrument] = (mark ts ns, last price)`` (``exit_time`` is the mark time, or the
    last fill if later), or, without a mark, at its own average cost (unrealized 0, ``exit_time``
    the last fill). Trades are ordered by ``(exit_time, entry_time, strategy, instrument)``;
    ties keep the order in which they closed.
    """
    done: list[Trade] = []
    trips: dict[tuple[str, str], _Trip] = {}
    for f in sorted(fills, key=attrgetter("ts_event")):
        key, n, ts = (f.strategy, f.instrument), _signed(f), f.ts_event
        trip = trips.get(key)
        if trip is None:
            trips[key] = _Trip(n, f.price, f.charges, ts)
            continue
        flip = abs(n) - abs(trip.pos) if (n > 0) != trip.long else 0  # > 0: the fill crosses flat
        if flip > 0:  # the part that reaches flat closes this trade, the rest opens the next one
            share = f.charges * abs(trip.pos) / f.qty
            trip.apply(-trip.pos, f.price, share, ts)
            trips[key] = _Trip(flip if n > 0 else -flip, f.price, f.charges - share, ts)
        else:
            trip.apply(n, f.price, f.charges, ts)
            if trip.pos:
                continue
            del trips[key]
        done.append(trip.trade(*key, None))
    marks = marks or {}
    done += [trip.trade(s, i, marks.get(i)) for (s, i), trip in trips.items()]
    return sorted(done, key=lambda t: (t.exit_time, t.entry_time, t.strategy, t.instrument))


def equity_curves(fills: Sequence[Fill], prices: Iterable[tuple[int, str, float]], capital: float, step_ns: int) -> Curves:
    """Sample the equity of the whole run and of each strategy once per time bucket.

    ``prices`` is a time-ordered stream of ``(ts ns, instrument, last price)``. Fills and
    prices are merged by time, and a fill with ``ts_event <= ts`` of a price is applied before
    that price. Positions are marked at the instrument's last market price (the fill price
    only until the first market price: a fill's price carries its slippage, and a fill may
    come after the instrument's last price - a queued order released by another's tick).
    Time is cut into buckets ``[k·step_ns, (k+1)·step_ns)``; every bucket holding at least
    one price or fill gets a point stamped at its end, ``(k+1)·step_ns``, with the state after
    all of its events (so gaps such as nights give no points). Fills after the
    last price still get their buckets. ``by_strategy`` has one curve per strategy in the fills
    (sorted), each on the timestamps of ``total`` and with the same ``capital``.
    """
    if step_ns <= 0:
        msg = f"step_ns must be positive, got {step_ns}"
        raise ValueError(msg)
    fs = sorted(fills, key=attrgetter("ts_event"))
    strategies = sorted({f.strategy for f in fs})
    books: dict[str, dict[str, tuple[int, float]]] = {s: {} for s in strategies}  # instrument -> (qty, avg)
    realized = dict.fromkeys(strategies, 0.0)
    charges = dict.fromkeys(strategies, 0.0)
    last: dict[str, float] = {}
    total: list[EquityPoint] = []
    by_strategy: dict[str, list[EquityPoint]] = {s: [] for s in strategies}

    def emit(bucket: int) -> None:
        ts = (bucket + 1) * step_ns
        t_real = t_unreal = t_charges = t_exposure = 0.0
        for s in strategies:
            unreal = exposure = 0.0
            for instrument, (qty, avg) in books[s].items():
                px = last[instrument]
                unreal += qty * (px - avg)
                exposure += abs(qty) * px
            r, c = realized[s], charges[s]
            by_strategy[s].append(EquityPoint(ts, r, unreal, c, capital + r + unreal - c, exposure))
            t_real, t_unreal, t_charges, t_exposure = t_real + r, t_unreal + unreal, t_charges + c, t_exposure + exposure
        total.append(EquityPoint(ts, t_real, t_unreal, t_charges, capital + t_real + t_unreal - t_charges, t_exposure))

    def apply(f: Fill) -> None:
        book = books[f.strategy]
        qty, avg = book.get(f.instrument, (0, 0.0))
        qty, avg, r = _fill_math(qty, avg, _signed(f), f.price)
        if qty:
            book[f.instrument] = (qty, avg)
        else:
            book.pop(f.instrument, None)
        realized[f.strategy] += r
        charges[f.strategy] += f.charges
        last.setdefault(f.instrument, f.price)  # marks use market prices; a fill's carries its slippage

    # The price loop can see millions of items: no allocation per price, one bucket division.
    i, n_fills = 0, len(fs)
    next_fill = fs[0].ts_event if fs else _NEVER
    bucket: int | None = None
    for ts, instrument, px in prices:
        while next_fill <= ts:
            k = next_fill // step_ns
            if k != bucket:
                if bucket is not None:
                    emit(bucket)
                bucket = k
            apply(fs[i])
            i += 1
            next_fill = fs[i].ts_event if i < n_fills else _NEVER
        k = ts // step_ns
        if k != bucket:
            if bucket is not None:
                emit(bucket)
            bucket = k
        last[instrument] = px
    for f in fs[i:]:
        k = f.ts_event // step_ns
        if k != bucket:
            if bucket is not None:
                emit(bucket)
            bucket = k
        apply(f)
    if bucket is not None:
        emit(bucket)
    return Curves(total, by_strategy)


def _mean(xs: Sequence[float]) -> float:
    return math.fsum(xs) / len(xs)


def metrics(trades: Sequence[Trade], curve: Sequence[EquityPoint], capital: float, periods_per_year: float) -> Metrics:
    """Summarise closed trades and an equity curve sampled at a fixed step.

    * Trade statistics use closed trades only: a win has ``net_pnl > 0``, a loss ``< 0``
      (break-even is neither, but counts in ``trades`` and ``expectancy``).
    * PnL, charges and final equity come from the last curve point.
    * Returns are per point: ``r_0 = e_0/capital - 1``, ``r_i = e_i/e_(i-1) - 1``; the risk-free
      rate is 0. ``sharpe = mean(r)/stdev(r, ddof=1)·√periods_per_year`` and ``sortino =
      mean(r)/√mean(min(r, 0)²)·√periods_per_year`` (downside over all returns). The caller
      states the annualisation: ``periods_per_year`` is the number of curve steps per year
      (e.g. 252 for daily points). Both are None with fewer than two returns; Sharpe also with
      constant returns, Sortino also with no negative return.
    * Drawdowns are measured from a running peak that starts at ``capital``. The duration runs
      from the last point at or above the peak (the first point's ts for the initial capital
      peak, as ``metrics`` does not know the step) to the first later point back at or above
      it, or to the last point if equity never recovered.
    """
    if capital <= 0:
        msg = f"capital must be positive, got {capital}"
        raise ValueError(msg)
    nets = [t.net_pnl for t in trades if t.closed]
    wins = [x for x in nets if x > 0]
    losses = [x for x in nets if x < 0]
    if curve:
        end = curve[-1]
        gross, costs, final = end.realized + end.unrealized, end.charges, end.equity
    else:
        gross, costs, final = 0.0, 0.0, capital

    returns: list[float] = []
    prev = capital
    peak, peak_ts, underwater = capital, curve[0].ts if curve else 0, False
    max_dd = max_dd_pct = 0.0
    max_duration = 0
    for p in curve:
        returns.append(p.equity / prev - 1.0)
        prev = p.equity
        if p.equity >= peak:
            if underwater:
                max_duration, underwater = max(max_duration, p.ts - peak_ts), False
            peak, peak_ts = p.equity, p.ts
        else:
            underwater = True
            max_dd, max_dd_pct = max(max_dd, peak - p.equity), max(max_dd_pct, (peak - p.equity) / peak * 100.0)
    if underwater:
        max_duration = max(max_duration, curve[-1].ts - peak_ts)

    sharpe = sortino = None
    if len(returns) >= 2:
        mean, scale = _mean(returns), math.sqrt(periods_per_year)
        if max(returns) != min(returns):  # a constant series has stdev 0, exactly
            stdev = math.sqrt(math.fsum((r - mean) ** 2 for r in returns) / (len(returns) - 1))
            sharpe = mean / stdev * scale
        if min(returns) < 0:
            sortino = mean / math.sqrt(_mean([min(r, 0.0) ** 2 for r in returns])) * scale

    return Metrics(
        net_pnl=final - capital,
        gross_pnl=gross,
        charges=costs,
        return_pct=(final - capital) / capital * 100.0,
        final_equity=final,
        trades=len(nets),
        wins=len(wins),
        losses=len(losses),
        win_rate=len(wins) / len(nets) if nets else None,
        avg_win=_mean(wins) if wins else None,
        avg_loss=_mean(losses) if losses else None,
        profit_factor=math.fsum(wins) / -math.fsum(losses) if losses else None,
        expectancy=_mean(nets) if nets else None,
        sharpe=sharpe,
        sortino=sortino,
        max_drawdown=max_dd,
        max_drawdown_pct=max_dd_pct,
        max_drawdown_duration_ns=max_duration,
        exposure_pct=sum(1 for p in curve if p.exposure > 0) / len(curve) * 100.0 if curve else 0.0,
    )
