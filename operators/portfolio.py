"""Positions and PnL of one account, per (strategy, instrument), derived from fills only.

:class:`PositionBook` is the portfolio half of the risk step. Rules, exactly:

* **Only fills move positions.** ``qty`` is the signed sum of the account's fills
  (BUY +, SELL -) for that strategy and instrument. A fill whose ``(venue, trade_id)`` was
  already applied is ignored (at-least-once delivery); the ids of the current and the
  previous day are kept (:meth:`start_day` rotates them), so memory stays bounded.
* **Average price** (average-cost method): a fill that increases ``|qty|`` re-weights it,
  ``avg = (|q|·avg + n·price) / (|q| + n)``; a fill that reduces it leaves it unchanged; a fill
  that crosses zero (a flip) closes the old side and opens the remainder at the fill price.
  Flat positions have ``avg_price == 0``.
* **Realized PnL** is gross: every closed unit adds ``(price - avg)`` for a long and
  ``(avg - price)`` for a short. ``Fill.charges`` are summed separately; ``net realized =
  realized - charges`` and ``day PnL = realized + unrealized - charges``.
* **Unrealized PnL** is ``qty · (last_price - avg_price)``. ``last_price`` is the latest
  :meth:`mark` of the instrument; until the first mark it is the last fill price.
  :meth:`mark` runs on every tick, so it only touches the instrument's open positions and
  updates the strategy and account totals by the difference (a strategy's totals are
  recomputed from its positions on every fill of it, so float drift never outlives a fill).
* **Gross exposure** is ``Σ |qty| · last_price`` over open positions, per strategy and for the
  account (:meth:`gross_exposure`), kept like unrealized PnL: by difference on every mark,
  recomputed on every fill. The risk gate checks its exposure limits against it on every
  entry, so an entry costs the same with 5 or 500 positions open.
* **Round trips.** When a position returns to flat or flips, its net result since it opened
  (realized minus charges) is a round trip; :meth:`loss_streak` counts each strategy's
  consecutive losing round trips (a win or break-even resets it). Risk sizing uses it.
* **Days.** :meth:`start_day` zeroes realized PnL, charges and streaks and drops flat
  positions; open positions (carried NRML) keep their quantity and average price.

>>> from schemas.orders import Fill, Side
>>> def fill(tid, side, qty, px, charges=0.0):
...     return Fill(venue="sim", trade_id=tid, client_order_id="c", venue_order_id="v", account="acc",
...                 strategy="s1", instrument="NSE:INFY", side=side, qty=qty, price=px, ts_event=1, ts_init=1,
...                 charges=charges)
>>> book = PositionBook("acc")
>>> book.apply_fill(fill("t1", Side.BUY, 10, 100.0)).avg_price
100.0
>>> book.apply_fill(fill("t2", Side.BUY, 10, 110.0)).avg_price
105.0
>>> p = book.apply_fill(fill("t3", Side.SELL, 15, 120.0, charges=2.0))
>>> (p.qty, p.avg_price, p.realized_pnl)
(5, 105.0, 225.0)
>>> book.apply_fill(fill("t3", Side.SELL, 15, 120.0)).qty  # the same trade again: ignored
5
>>> book.mark("NSE:INFY", 100.0, 2)
('s1',)
>>> book.pnl()
PnL(realized=225.0, unrealized=-25.0, charges=2.0)
>>> book.pnl().day
198.0
"""

from __future__ import annotations

from typing import NamedTuple

from schemas.orders import Fill, Position, Side

Key = tuple[str, str]  # (strategy, instrument)


class PnL(NamedTuple):
    """PnL totals in rupees: ``realized`` is gross of ``charges``."""

    realized: float
    unrealized: float
    charges: float

    @property
    def net_realized(self) -> float:
        return self.realized - self.charges

    @property
    def day(self) -> float:
        return self.realized + self.unrealized - self.charges


class _Pos:
    __slots__ = (
        "avg_price",
        "charges",
        "instrument",
        "last_price",
        "qty",
        "realized",
        "strategy",
        "trip_start",
        "ts_event",
        "ts_init",
        "unrealized",
    )

    def __init__(self, strategy: str, instrument: str) -> None:
        self.strategy, self.instrument = strategy, instrument
        self.qty = 0
        self.avg_price = self.realized = self.charges = self.last_price = self.unrealized = 0.0
        self.trip_start = 0.0  # realized - charges when the current round trip opened
        self.ts_event = self.ts_init = 0


class _Totals:
    __slots__ = ("charges", "gross", "realized", "unrealized")

    def __init__(self) -> None:
        self.realized = self.charges = self.unrealized = self.gross = 0.0

    def pnl(self) -> PnL:
        return PnL(self.realized, self.unrealized, self.charges)


class PositionBook:
    """Positions of one account (see the module docstring for the rules)."""

    def __init__(self, account: str) -> None:
        self.account = account
        self._pos: dict[Key, _Pos] = {}
        self._held: dict[str, list[_Pos]] = {}  # instrument -> its open positions (qty != 0)
        self._held_strategies: dict[str, tuple[str, ...]] = {}
        self._last: dict[str, float] = {}
        self._strategy: dict[str, _Totals] = {}
        self._account = _Totals()
        self._streak: dict[str, int] = {}
        self._fills: set[tuple[str, str]] = set()
        self._fills_prev: set[tuple[str, str]] = set()
        self._index()

    def _index(self) -> None:
        """Every position of the day by strategy and by instrument, in ``_pos`` order, and the
        open count: a fill then visits its strategy's and its instrument's positions, not all
        of the day's (derived state: rebuilt on unpickling, never pickled)."""
        self._of_strategy: dict[str, list[_Pos]] = {}
        self._of_instrument: dict[str, list[_Pos]] = {}
        for p in self._pos.values():
            self._of_strategy.setdefault(p.strategy, []).append(p)
            self._of_instrument.setdefault(p.instrument, []).append(p)
        self._open = sum(map(len, self._held.values()))

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        for derived in ("_of_strategy", "_of_instrument", "_open"):
            del state[derived]
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._index()
        if not hasattr(self._account, "gross"):  # a snapshot from before gross exposure was kept
            for strategy in self._strategy:
                self._recompute(strategy)

    # ------------------------------------------------------------------ updates

    def has_fill(self, fill: Fill) -> bool:
        """Whether this ``(venue, trade_id)`` was already applied."""
        k = (fill.venue, fill.trade_id)
        return k in self._fills or k in self._fills_prev

    def apply_fill(self, fill: Fill) -> Position:
        """Apply one fill and return the position it leaves; a duplicate changes nothing."""
        if fill.account != self.account or fill.qty <= 0:
            msg = f"fill {fill.trade_id!r}: expected account {self.account!r} and qty > 0, got {fill.account!r}, {fill.qty}"
            raise ValueError(msg)
        key = (fill.strategy, fill.instrument)
        p = self._pos.get(key)
        if p is None:
            p = self._pos[key] = _Pos(fill.strategy, fill.instrument)
            self._of_strategy.setdefault(fill.strategy, []).append(p)
            self._of_instrument.setdefault(fill.instrument, []).append(p)
            self._strategy.setdefault(fill.strategy, _Totals())
        if self.has_fill(fill):
            return self._snapshot(p)
        self._fills.add((fill.venue, fill.trade_id))
        q, n, px = p.qty, (fill.qty if fill.side is Side.BUY else -fill.qty), fill.price
        new = q + n
        p.charges += fill.charges
        if q == 0 or (q > 0) == (n > 0):  # open or increase
            if q == 0:
                p.trip_start = p.realized - (p.charges - fill.charges)
            p.avg_price = (abs(q) * p.avg_price + abs(n) * px) / abs(new)
        else:  # reduce, close or flip
            closed = min(abs(q), abs(n))
            p.realized += closed * (px - p.avg_price) if q > 0 else closed * (p.avg_price - px)
            if new == 0 or (new > 0) != (q > 0):
                trip = p.realized - p.charges - p.trip_start
                self._streak[p.strategy] = self._streak.get(p.strategy, 0) + 1 if trip < 0 else 0
                p.trip_start = p.realized - p.charges
            if new == 0:
                p.avg_price = 0.0
            elif (new > 0) != (q > 0):
                p.avg_price = px
        p.qty = new
        p.last_price = self._last.get(fill.instrument, px)
        # A position's time never runs backwards: after a restart the fills taken back from the
        # record can be newer than those of the catch-up, and the newest position must stay last.
        p.ts_event, p.ts_init = max(p.ts_event, fill.ts_event), max(p.ts_init, fill.ts_init)
        p.unrealized = new * (p.last_price - p.avg_price)
        if (q == 0) != (new == 0):
            self._reindex(fill.instrument)
        self._recompute(p.strategy)
        return self._snapshot(p)

    def holds(self, instrument: str) -> bool:
        """True while some strategy has an open position in ``instrument``."""
        return instrument in self._held

    def mark(self, instrument: str, price: float, ts: int) -> tuple[str, ...]:
        """Mark ``instrument`` at ``price``; returns the strategies holding it (usually ``()``)."""
        self._last[instrument] = price
        held = self._held.get(instrument)
        if held is None:
            return ()
        acct, totals = self._account, self._strategy
        for p in held:
            q = p.qty
            u = q * (price - p.avg_price)
            d = u - p.unrealized
            g = (q if q > 0 else -q) * (price - p.last_price)
            p.unrealized, p.last_price, p.ts_event = u, price, ts
            t = totals[p.strategy]
            t.unrealized += d
            t.gross += g
            acct.unrealized += d
            acct.gross += g
        return self._held_strategies[instrument]

    def start_day(self) -> None:
        """Begin a new trading day (see the module docstring)."""
        self._fills_prev, self._fills = self._fills, set()
        self._streak.clear()
        for key, p in list(self._pos.items()):
            if p.qty == 0:
                del self._pos[key]
            else:
                p.realized = p.charges = p.trip_start = 0.0
        self._index()
        self._strategy = {s: _Totals() for s in self._of_strategy}
        self._account = _Totals()
        for s in self._strategy:
            self._recompute(s)

    def _reindex(self, instrument: str) -> None:
        held = [p for p in self._of_instrument[instrument] if p.qty != 0]
        self._open += len(held) - len(self._held.get(instrument, ()))
        if held:
            self._held[instrument] = held
            self._held_strategies[instrument] = tuple(p.strategy for p in held)
        else:
            self._held.pop(instrument, None)
            self._held_strategies.pop(instrument, None)

    def _recompute(self, strategy: str) -> None:
        t = self._strategy[strategy]
        t.realized = t.charges = t.unrealized = t.gross = 0.0
        for p in self._of_strategy.get(strategy, ()):
            t.realized += p.realized
            t.charges += p.charges
            t.unrealized += p.unrealized
            if p.qty:
                t.gross += abs(p.qty) * p.last_price
        a = self._account
        a.realized = sum(s.realized for s in self._strategy.values())
        a.charges = sum(s.charges for s in self._strategy.values())
        a.unrealized = sum(s.unrealized for s in self._strategy.values())
        a.gross = sum(s.gross for s in self._strategy.values())

    # ------------------------------------------------------------------ queries

    def qty(self, strategy: str, instrument: str) -> int:
        p = self._pos.get((strategy, instrument))
        return 0 if p is None else p.qty

    def net_qty(self, instrument: str) -> int:
        """The account's net quantity in ``instrument`` over all strategies (what the broker shows)."""
        return sum(p.qty for p in self._held.get(instrument, ()))

    def last_price(self, instrument: str) -> float | None:
        return self._last.get(instrument)

    def gross_exposure(self, strategy: str | None = None) -> float:
        """Σ |qty| × last price over the open positions of ``strategy``, or of the account
        (the last fill price until the instrument's first mark)."""
        t = self._account if strategy is None else self._strategy.get(strategy)
        return 0.0 if t is None else t.gross

    def value(self, strategy: str, instrument: str) -> float:
        """|qty| × last price of one position: its share of :meth:`gross_exposure`."""
        p = self._pos.get((strategy, instrument))
        return 0.0 if p is None or not p.qty else abs(p.qty) * p.last_price

    def holders(self, instrument: str) -> tuple[str, ...]:
        """The strategies with an open position in ``instrument``."""
        return self._held_strategies.get(instrument, ())

    def open_count(self) -> int:
        """How many (strategy, instrument) positions are open."""
        return self._open

    def open_keys(self) -> list[Key]:
        """(strategy, instrument) of every open position."""
        return [(p.strategy, p.instrument) for held in self._held.values() for p in held]

    def position(self, strategy: str, instrument: str) -> Position | None:
        p = self._pos.get((strategy, instrument))
        return None if p is None else self._snapshot(p)

    def positions(self) -> list[Position]:
        """Every position of the day, flat ones included (they carry the day's realized PnL)."""
        return [self._snapshot(p) for p in self._pos.values()]

    def pnl(self, strategy: str | None = None) -> PnL:
        """Day totals of one strategy, or of the account when ``strategy`` is None."""
        if strategy is None:
            return self._account.pnl()
        t = self._strategy.get(strategy)
        return PnL(0.0, 0.0, 0.0) if t is None else t.pnl()

    def day_pnl(self, strategy: str | None = None) -> float:
        """``realized + unrealized - charges`` (cheap: the risk gate calls it per tick)."""
        t = self._account if strategy is None else self._strategy.get(strategy)
        return 0.0 if t is None else t.realized + t.unrealized - t.charges

    def loss_streak(self, strategy: str) -> int:
        return self._streak.get(strategy, 0)

    def _snapshot(self, p: _Pos) -> Position:
        return Position(
            account=self.account,
            strategy=p.strategy,
            instrument=p.instrument,
            qty=p.qty,
            avg_price=p.avg_price,
            realized_pnl=p.realized,
            unrealized_pnl=p.unrealized,
            last_price=p.last_price,
            ts_event=p.ts_event,
            ts_init=p.ts_init,
            charges=p.charges,
        )
