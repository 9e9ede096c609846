"""The simulated venue: one matching model for paper trading and backtests.

:class:`SimVenue` takes :class:`~schemas.orders.OrderIntent` and :class:`~schemas.orders.CancelOrder`
requests and market ticks, and answers with :class:`~schemas.orders.OrderUpdate` and
:class:`~schemas.orders.Fill` events. It is pure and deterministic: no clock (callers pass ``now``,
ticks carry their own time), no I/O, no randomness; the whole object pickles, so a Bytewax
snapshot of it resumes with identical output. Fill rules, exactly:

* **Prices.** Each instrument's last traded price (LTP) is the ``ltp`` of its newest tick. A tick
  whose ``seq`` is not above the last one seen for its instrument is a redelivery and is ignored,
  as in :class:`~operators.candles.CandleBook`; ticks of instruments the venue was not given are
  ignored too. Ticks are trusted to be validated (ingest drops NaN and non-positive prices).
* **MARKET** fills at the LTP moved against the order by the :class:`SlippageModel` (a buy pays
  up, a sell receives less) and rounded *away from the order's favour* to the tick grid (buys
  up, sells down; never below one tick). With no LTP yet it waits (OPEN) and fills on the
  instrument's first tick.
* **LIMIT** marketable on arrival (buy: LTP ≤ limit; sell: LTP ≥ limit) fills at once at the
  slipped LTP capped by the limit (``min(limit, slipped)`` for a buy), i.e. at the better of
  limit and LTP when there is no slippage. Otherwise it rests (OPEN) and fills **at its limit
  price** on the first later tick whose LTP touches or crosses it (buy: LTP ≤ limit) -
  conservative: a resting order gets no price improvement from a gap, and never fills before
  the market trades at its price. The same holds for the unfilled rest of a marketable order
  under partial fills: resting as the best bid (offer), it would trade at its own price.
* **SL-M** waits in TRIGGER PENDING until the LTP reaches the trigger (buy: LTP ≥ trigger, sell:
  LTP ≤ trigger), then becomes OPEN and fills like MARKET on that same tick.
* **SL** has the same trigger, then becomes a LIMIT at ``price`` that *arrives* on the trigger
  tick (so it may fill there at once, capped by its limit) and rests after that. A buy SL needs
  ``trigger ≤ price``, a sell SL ``trigger ≥ price`` (as Kite requires).
* **GTT** is dormant (TRIGGER PENDING) until the LTP *crosses* the trigger, then becomes a LIMIT
  at ``price`` exactly like a triggered SL. Unlike SL, the crossing direction is taken from
  where the LTP was when the GTT was placed (trigger above the LTP fires on LTP ≥ trigger,
  below on LTP ≤ trigger), so a GTT can be a stop or a target on either side; with no LTP
  yet it fires like an SL of its side. At a real broker a GTT is held by the broker, not the
  exchange, blocks no margin and lives up to a year, while an SL is a day order at the
  exchange; the simulator keeps both until filled or cancelled.
* **Triggers already reached on arrival** fire at once. (A real exchange may reject an SL whose
  trigger the LTP has already passed; the sim prefers the protective behaviour for stops, and
  live code must handle that rejection.)
* **Partial fills** (off by default). With ``PartialFills(max_participation=p)`` the orders of an
  instrument together fill at most ``max(1 lot, floor(p × last_qty) rounded down to whole lots)``
  per tick, in submission order; an order submitted between ticks draws on what is left of the
  last tick's allowance. A remainder stays working (PARTIALLY_FILLED) and continues on later ticks
  under the same rules (a MARKET remainder at each tick's slipped LTP, a LIMIT remainder at its
  limit). No order is ever overfilled.
* **Order of work.** On a tick, the working orders of that instrument are processed in submission
  order; a tick for an instrument without working orders costs a dict lookup and a few stores.

**Validation.** ``submit`` answers REJECTED (with a reason) for an unknown or non-tradable
instrument, a quantity that is not a multiple of the lot size or is above the freeze quantity,
a LIMIT/SL/GTT without a price, an SL/SL-M/GTT without a trigger, a price or trigger that is
not positive, finite and on the tick grid, an SL whose trigger is on the wrong side of its
limit, CNC on a derivative or NRML on equity. ``price`` is ignored on MARKET and SL-M orders,
``trigger_price`` on MARKET and LIMIT orders.

**Events.** Every status change is an OrderUpdate (with ``filled_qty`` and ``avg_price``): an
accepted order is first OPEN or TRIGGER PENDING; each fill is a Fill followed by an OrderUpdate
(PARTIALLY_FILLED or COMPLETE), so the sum of an order's fills always equals the ``filled_qty``
of its latest update. Allowed transitions are :data:`TRANSITIONS`. Immediate events carry
``ts_event = ts_init = now``; events caused by a tick carry the tick's ``ts_event`` and ``ts_init``.
Ids are deterministic: ``venue_order_id = f"{name}-{client_order_id}"`` (unique as long as client
order ids are, even with one venue instance per account) and ``trade_id = f"{venue_order_id}-{n}"``
for the order's n-th fill. Each fill's ``charges`` is the total from the :class:`ChargesModel`,
with the per-order brokerage cap applied across partial fills.

**Idempotency and cancels.** A repeated ``client_order_id`` returns ``[]`` and changes nothing (also
for a previously rejected order). ``cancel`` of a working order answers CANCELLED (``filled_qty``
keeps any partial fills); of a terminal order, an OrderUpdate restating its status (reason
``"cancel refused: already <STATUS>"``), with no state change; of an order the venue does not know
(or of another account): nothing, ``[]``. (:class:`~schemas.orders.CancelOrder` suggests a REJECTED
OrderUpdate there, but an OrderUpdate describes an order - side, ``qty > 0`` - and persisting one
for an order that does not exist would create a bogus ``orders`` row; nothing is burnt either: the
id can still be submitted later.)

>>> from schemas.market import Instrument, InstrumentType, Tick
>>> from schemas.orders import OrderIntent, OrderType, Product, Side
>>> infy = Instrument(instrument="NSE:INFY", instrument_token=1, exchange_token=1, tradingsymbol="INFY", name="INFOSYS",
...                   exchange="NSE", segment="NSE", instrument_type=InstrumentType.EQ, tick_size=0.05, lot_size=1)
>>> venue = SimVenue({"NSE:INFY": infy}, slippage=SlippageModel(ticks=1))
>>> buy = OrderIntent(client_order_id="c1", account="A", strategy="s", instrument="NSE:INFY", side=Side.BUY, qty=10,
...                   order_type=OrderType.MARKET, product=Product.MIS, ts_event=0, ts_init=0)
>>> [e.status for e in venue.submit(buy, now=1)]  # no price seen yet: the order waits
[<OrderStatus.OPEN: 'OPEN'>]
>>> tick = Tick(instrument="NSE:INFY", ts_event=2, ts_init=2, seq=1, ltp=1500.0, last_qty=5, volume=5, oi=0,
...             bid=1499.95, ask=1500.0, bid_qty=1, ask_qty=1)
>>> fill, done = venue.on_tick(tick)
>>> fill.trade_id, fill.price, fill.charges, done.status, done.avg_price  # one tick of slippage
('sim-c1-1', 1500.05, 6.31, <OrderStatus.COMPLETE: 'COMPLETE'>, 1500.05)

(``charges``: on ₹15,000.50 intraday buy turnover, brokerage 4.50 + exchange 0.45 + SEBI 0.02 + stamp
0.45 + GST 0.89.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from operators.charges import ChargesModel
from schemas.market import Instrument, InstrumentType, Tick
from schemas.orders import CancelOrder, Fill, OrderIntent, OrderStatus, OrderType, OrderUpdate, Product, Side

__all__ = ["NO_SLIPPAGE", "TRANSITIONS", "WORKING", "PartialFills", "SimVenue", "SlippageModel", "VenueEvent", "on_grid"]

VenueEvent = OrderUpdate | Fill

_S = OrderStatus
WORKING = frozenset({_S.OPEN, _S.TRIGGER_PENDING, _S.PARTIALLY_FILLED})
"""Statuses of an order that can still fill or be cancelled."""

TRANSITIONS: Mapping[OrderStatus | None, frozenset[OrderStatus]] = {
    None: frozenset({_S.OPEN, _S.TRIGGER_PENDING, _S.REJECTED}),
    _S.TRIGGER_PENDING: frozenset({_S.OPEN, _S.CANCELLED}),
    _S.OPEN: frozenset({_S.PARTIALLY_FILLED, _S.COMPLETE, _S.CANCELLED}),
    _S.PARTIALLY_FILLED: frozenset({_S.PARTIALLY_FILLED, _S.COMPLETE, _S.CANCELLED}),
}
"""Status edges the venue emits (``None`` = not yet known); terminal statuses have none."""

_GRID_TOL = 1e-6  # in ticks: float prices like 100.05 are 2000.9999999999998 ticks of 0.05
_DERIVATIVES = frozenset({InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE})
_ZERO = Decimal("0.00")


def on_grid(price: float, tick_size: float) -> bool:
    """Whether ``price`` is a whole number of ticks (within float noise).

    >>> on_grid(100.05, 0.05), on_grid(100.07, 0.05)
    (True, False)
    """
    n = price / tick_size
    return abs(n - round(n)) < _GRID_TOL


def _ceil_tick(x: float, tick: float) -> float:
    return round(math.ceil(x / tick - _GRID_TOL) * tick, 9)


def _floor_tick(x: float, tick: float) -> float:
    return round(math.floor(x / tick + _GRID_TOL) * tick, 9)


@dataclass(frozen=True, slots=True)
class SlippageModel:
    """How far a market-like fill moves against the order: ``ticks`` whole ticks, plus ``bps`` of
    the LTP, plus ``impact_bps_per_lakh`` bps of the LTP per ₹1,00,000 of the fill's notional
    (a linear size impact). The result is rounded to the grid against the order.

    >>> SlippageModel(ticks=1, bps=10).price(100.0, Side.BUY, 1, 0.05)  # 100 + 0.05 + 0.10
    100.15
    >>> SlippageModel(bps=3).price(100.0, Side.SELL, 1, 0.05)  # 99.97 rounds down to the grid
    99.95
    """

    ticks: int = 0
    bps: float = 0.0
    impact_bps_per_lakh: float = 0.0

    def __post_init__(self) -> None:
        if self.ticks < 0 or not (self.bps >= 0 and self.impact_bps_per_lakh >= 0):
            msg = f"slippage must be non-negative, got {self}"
            raise ValueError(msg)

    def price(self, ltp: float, side: Side, qty: int, tick_size: float) -> float:
        """The fill price of ``qty`` at market when the last trade was ``ltp``."""
        bps = self.bps + self.impact_bps_per_lakh * (qty * ltp / 1e5)
        slip = self.ticks * tick_size + ltp * bps / 1e4
        if side is Side.BUY:
            return _ceil_tick(ltp + slip, tick_size)
        return max(_floor_tick(ltp - slip, tick_size), _ceil_tick(tick_size, tick_size))


NO_SLIPPAGE = SlippageModel()
_DEFAULT_CHARGES = ChargesModel()


@dataclass(frozen=True, slots=True)
class PartialFills:
    """Fill at most ``max_participation`` of each tick's ``last_qty``, in whole lots and at least one
    lot per tick, shared by an instrument's orders in submission order.

    >>> PartialFills(0.5).allowance(last_qty=700, lot_size=75)  # 350 -> 4 lots
    300
    >>> PartialFills(0.5).allowance(last_qty=10, lot_size=75)  # never less than a lot
    75
    """

    max_participation: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.max_participation <= 1.0:
            msg = f"max_participation must be in (0, 1], got {self.max_participation}"
            raise ValueError(msg)

    def allowance(self, last_qty: int, lot_size: int) -> int:
        """How much one tick of ``last_qty`` lets the venue fill."""
        lots = int(self.max_participation * last_qty) // lot_size
        return max(lots, 1) * lot_size


@dataclass(slots=True)
class _Book:
    """One instrument's market state and its working orders (in submission order)."""

    instrument: Instrument
    ltp: float | None = None
    seq: int = -(2**62)
    last_qty: int = 0
    used: int = 0  # quantity of the last tick's partial-fill allowance already filled
    working: list[_Order] = field(default_factory=list)


@dataclass(slots=True)
class _Order:
    intent: OrderIntent
    venue_order_id: str
    status: OrderStatus
    ts_event: int
    ts_init: int
    reason: str = ""
    # derived from the intent once, so the per-tick checks are plain float compares
    buy: bool = True
    limit: float | None = None  # None: fills at market (MARKET, SL-M)
    trigger: float = 0.0
    fire_up: bool = True  # trigger fires on LTP >= trigger (else LTP <= trigger)
    filled_qty: int = 0
    notional: float = 0.0
    fills: int = 0
    brokerage: Decimal = _ZERO

    def count_fill(self, qty: int, price: float) -> None:
        self.filled_qty += qty
        self.notional += qty * price
        self.fills += 1  # numbers the next trade id


class SimVenue:
    """A deterministic, picklable simulated venue; see the module docstring for its exact rules.

    Defaults: no slippage, no partial fills, the discount-broker :class:`ChargesModel`. Every
    order is remembered for the venue's lifetime (idempotency by ``client_order_id``), so use one
    instance per trading day or backtest run.
    """

    def __init__(
        self,
        instruments: Mapping[str, Instrument],
        *,
        name: str = "sim",
        slippage: SlippageModel = NO_SLIPPAGE,
        partial_fills: PartialFills | None = None,
        charges: ChargesModel = _DEFAULT_CHARGES,
    ) -> None:
        self.name = name
        self.slippage = slippage
        self.partial_fills = partial_fills
        self.charges = charges
        self._books = {key: _Book(inst) for key, inst in instruments.items()}
        self._orders: dict[str, _Order] = {}  # by client_order_id, in submission order

    # ---- requests ------------------------------------------------------------------------------------------

    def submit(self, intent: OrderIntent, now: int) -> list[VenueEvent]:
        """Accept or reject ``intent``; fill it at once if the rules allow. A repeated id returns ``[]``."""
        if intent.client_order_id in self._orders:
            return []
        vid = f"{self.name}-{intent.client_order_id}"
        book = self._books.get(intent.instrument)
        reason = self._invalid(intent, book)
        if book is None or reason:
            order = _Order(intent, vid, _S.REJECTED, now, now, reason)
            self._orders[intent.client_order_id] = order
            return [self._update(order)]
        order = self._new_order(intent, vid, book, now)
        self._orders[intent.client_order_id] = order
        book.working.append(order)
        out: list[VenueEvent] = [self._update(order)]
        if book.ltp is not None:
            self._work(order, book, now, now, out, arrival=True)
            if order.status not in WORKING:
                book.working.remove(order)
        return out

    def cancel(self, req: CancelOrder, now: int) -> list[OrderUpdate]:
        """Cancel a working order; restate a terminal one; ignore an unknown one (module docstring)."""
        order = self._orders.get(req.client_order_id)
        if order is None or order.intent.account != req.account:
            return []
        if order.status not in WORKING:
            return [self._update(order, reason=f"cancel refused: already {order.status}", ts=(now, now))]
        order.status = _S.CANCELLED
        order.ts_event = order.ts_init = now
        order.reason = req.reason or "cancelled"
        self._books[order.intent.instrument].working.remove(order)
        return [self._update(order)]

    def _new_order(self, intent: OrderIntent, vid: str, book: _Book, now: int) -> _Order:
        kind = intent.order_type
        triggered = kind in (OrderType.MARKET, OrderType.LIMIT)
        order = _Order(intent, vid, _S.OPEN if triggered else _S.TRIGGER_PENDING, now, now)
        order.buy = intent.side is Side.BUY
        order.limit = None if kind in (OrderType.MARKET, OrderType.SL_M) else intent.price
        if not triggered:
            assert intent.trigger_price is not None
            order.trigger = intent.trigger_price
        if kind is OrderType.GTT and book.ltp is not None:
            order.fire_up = order.trigger >= book.ltp
        else:
            order.fire_up = order.buy
        return order

    def take_back(self, intent: OrderIntent, fills: list[Fill], final: OrderUpdate | None, now: int) -> list[VenueEvent]:
        """Register an order submitted here before a restart but missing from this state, with its
        published fills and final update (None: it had none). A working one is worked from the
        next tick on. Returns its state as an update when no final one was published; ``[]``
        for an order this venue knows (its own state rules, see :meth:`absorb`)."""
        book = self._books.get(intent.instrument)
        if intent.client_order_id in self._orders or book is None:
            return []
        order = self._new_order(intent, f"{self.name}-{intent.client_order_id}", book, now)
        for f in fills:
            order.count_fill(f.qty, f.price)
        if final is not None:
            order.status = final.status
        elif order.filled_qty >= intent.qty:
            order.status = _S.COMPLETE
        elif order.filled_qty:
            order.status = _S.PARTIALLY_FILLED
        self._orders[intent.client_order_id] = order
        if order.status in WORKING:
            book.working.append(order)
        return [] if final is not None else [self._update(order)]

    def absorb(self, ev: OrderUpdate | Fill) -> OrderUpdate | None:
        """Take an update or fill of one of this venue's orders that was already published but is
        not in this state (a restart from an older snapshot): the order continues from what the
        world saw instead of filling again. For a fill, the order's resulting update (its
        publication may have been lost with the crash); None when nothing changed."""
        order = self._orders.get(ev.client_order_id)
        if order is None or order.status not in WORKING:
            return None
        if isinstance(ev, Fill):
            order.count_fill(ev.qty, ev.price)
            order.status = _S.COMPLETE if order.filled_qty >= order.intent.qty else _S.PARTIALLY_FILLED
            order.ts_event, order.ts_init = ev.ts_event, ev.ts_init
        elif ev.status.terminal:
            order.status = ev.status
        if order.status not in WORKING:
            self._books[order.intent.instrument].working.remove(order)
        return self._update(order) if isinstance(ev, Fill) else None

    def on_tick(self, tick: Tick) -> list[VenueEvent]:
        """Take ``tick``'s LTP and trigger/fill that instrument's working orders in submission order."""
        book = self._books.get(tick.instrument)
        if book is None or tick.seq <= book.seq:
            return []
        book.seq = tick.seq
        book.ltp = tick.ltp
        book.last_qty = tick.last_qty
        book.used = 0
        if not book.working:
            return []
        out: list[VenueEvent] = []
        done = False
        for order in book.working:  # _work never adds or removes orders: prune below
            done |= self._work(order, book, tick.ts_event, tick.ts_init, out, arrival=False)
        if done:
            book.working = [o for o in book.working if o.status in WORKING]
        return out

    # ---- queries -------------------------------------------------------------------------------------------

    def has_working(self, instrument: str) -> bool:
        """True while ``instrument`` has a resting or trigger-pending order."""
        book = self._books.get(instrument)
        return book is not None and bool(book.working)

    def working(self) -> list[OrderUpdate]:
        """The current state of every working order, in submission order."""
        return [self._update(o) for o in self._orders.values() if o.status in WORKING]

    def order(self, client_order_id: str) -> OrderUpdate | None:
        """The current state of one order, or None if the venue never saw it."""
        o = self._orders.get(client_order_id)
        return None if o is None else self._update(o)

    def last_price(self, instrument: str) -> float | None:
        """The LTP the venue matches ``instrument`` against, or None before its first tick."""
        book = self._books.get(instrument)
        return None if book is None else book.ltp

    # ---- matching ------------------------------------------------------------------------------------------

    def _work(
        self, order: _Order, book: _Book, ts_event: int, ts_init: int, out: list[VenueEvent], *, arrival: bool
    ) -> bool:
        """Trigger and/or fill ``order`` against ``book``'s current LTP; True if it completed."""
        ltp = book.ltp
        assert ltp is not None
        if order.status is _S.TRIGGER_PENDING:
            if not (ltp >= order.trigger if order.fire_up else ltp <= order.trigger):
                return False
            order.status = _S.OPEN
            order.ts_event, order.ts_init = ts_event, ts_init
            out.append(self._update(order))
            arrival = True  # a triggered order enters the market now
        limit, buy = order.limit, order.buy
        if limit is not None and (ltp > limit if buy else ltp < limit):
            return False
        it = order.intent
        qty = it.qty - order.filled_qty
        inst = book.instrument
        if self.partial_fills is not None:
            left = self.partial_fills.allowance(book.last_qty, inst.lot_size) - book.used
            if left <= 0:
                return False
            qty = min(qty, left)
            book.used += qty
        if limit is not None and not arrival:
            price = limit
        else:
            price = self.slippage.price(ltp, it.side, qty, inst.tick_size)
            if limit is not None:
                price = min(price, limit) if buy else max(price, limit)
        self._fill(order, inst, qty, price, ts_event, ts_init, out)
        return order.status is _S.COMPLETE

    def _fill(
        self, order: _Order, inst: Instrument, qty: int, price: float, ts_event: int, ts_init: int, out: list[VenueEvent]
    ) -> None:
        it = order.intent
        charges = self.charges.for_fill(inst, it.product, it.side, qty, price, brokerage_charged=order.brokerage)
        order.brokerage += charges.brokerage
        order.count_fill(qty, price)
        order.status = _S.COMPLETE if order.filled_qty == it.qty else _S.PARTIALLY_FILLED
        order.ts_event, order.ts_init = ts_event, ts_init
        out.append(
            Fill(
                venue=self.name,
                trade_id=f"{order.venue_order_id}-{order.fills}",
                client_order_id=it.client_order_id,
                venue_order_id=order.venue_order_id,
                account=it.account,
                strategy=it.strategy,
                instrument=it.instrument,
                side=it.side,
                qty=qty,
                price=price,
                ts_event=ts_event,
                ts_init=ts_init,
                charges=float(charges.total),
            )
        )
        out.append(self._update(order))

    def _update(self, order: _Order, *, reason: str | None = None, ts: tuple[int, int] | None = None) -> OrderUpdate:
        it = order.intent
        ts_event, ts_init = ts if ts is not None else (order.ts_event, order.ts_init)
        return OrderUpdate(
            client_order_id=it.client_order_id,
            venue=self.name,
            venue_order_id=order.venue_order_id,
            account=it.account,
            instrument=it.instrument,
            side=it.side,
            status=order.status,
            qty=it.qty,
            filled_qty=order.filled_qty,
            ts_event=ts_event,
            ts_init=ts_init,
            avg_price=order.notional / order.filled_qty if order.filled_qty else None,
            price=it.price,
            trigger_price=it.trigger_price,
            reason=order.reason if reason is None else reason,
            strategy=it.strategy,
            order_type=it.order_type,
            product=it.product,
            purpose=it.purpose,
        )

    # ---- validation ----------------------------------------------------------------------------------------

    @staticmethod
    def _invalid(it: OrderIntent, book: _Book | None) -> str:
        """Why ``it`` must be rejected, or "" if it is acceptable."""
        if book is None:
            return f"unknown instrument {it.instrument}"
        inst = book.instrument
        if not inst.tradable:
            return f"{it.instrument} is an index and cannot be traded"
        if it.qty % inst.lot_size:
            return f"qty {it.qty} is not a multiple of the lot size {inst.lot_size}"
        if inst.freeze_qty is not None and it.qty > inst.freeze_qty:
            return f"qty {it.qty} is above the freeze quantity {inst.freeze_qty}; split the order"
        derivative = inst.instrument_type in _DERIVATIVES
        if derivative and it.product is Product.CNC:
            return f"product CNC is for equity delivery, not {inst.instrument_type}; use NRML or MIS"
        if not derivative and it.product is Product.NRML:
            return "product NRML is for derivatives; use CNC or MIS for equity"
        kind = it.order_type
        needs_price = kind in (OrderType.LIMIT, OrderType.SL, OrderType.GTT)
        needs_trigger = kind in (OrderType.SL, OrderType.SL_M, OrderType.GTT)
        for label, value, needed in (("price", it.price, needs_price), ("trigger_price", it.trigger_price, needs_trigger)):
            if not needed:
                continue
            if value is None:
                return f"{kind} order needs a {label}"
            if not (math.isfinite(value) and value > 0):
                return f"{label} must be positive and finite, got {value}"
            if not on_grid(value, inst.tick_size):
                return f"{label} {value} is not a multiple of the tick size {inst.tick_size}"
        if kind is OrderType.SL:
            assert it.price is not None and it.trigger_price is not None
            if it.side is Side.BUY and it.trigger_price > it.price:
                return f"SL buy needs trigger_price <= price, got trigger {it.trigger_price} > price {it.price}"
            if it.side is Side.SELL and it.trigger_price < it.price:
                return f"SL sell needs trigger_price >= price, got trigger {it.trigger_price} < price {it.price}"
        return ""
