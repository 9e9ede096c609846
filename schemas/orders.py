"""Trading events: what strategies want, what risk approved, what the venue did.

Strategies emit :class:`TargetPosition`; the portfolio/risk step turns the difference to the
actual position into :class:`OrderIntent` with a deterministic ``client_order_id`` (the
idempotency key at every hop, at most 20 characters to fit Kite's order tag).
"""

from __future__ import annotations

import enum

import msgspec

MAX_CLIENT_ORDER_ID = 20  # Kite's `tag` limit; Fyers' orderTag is longer


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"


class OrderType(enum.StrEnum):
    MARKET = "MARKET"
    LIMIT = "LIMIT"
    SL = "SL"
    SL_M = "SL-M"
    GTT = "GTT"  # good-till-triggered: dormant until the trigger is crossed, then a LIMIT at `price`


class Product(enum.StrEnum):
    MIS = "MIS"  # intraday
    NRML = "NRML"  # carry-forward derivatives
    CNC = "CNC"  # delivery


class OrderStatus(enum.StrEnum):
    PENDING = "PENDING"  # sent, not yet acknowledged
    OPEN = "OPEN"
    TRIGGER_PENDING = "TRIGGER PENDING"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    COMPLETE = "COMPLETE"
    CANCELLED = "CANCELLED"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"  # ambiguous submit: resolved by reconciliation, never retried blindly

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({OrderStatus.COMPLETE, OrderStatus.CANCELLED, OrderStatus.REJECTED})


class OrderPurpose(enum.StrEnum):
    """Why an order exists; risk checks and the stop-loss manager treat each differently."""

    ENTRY = "ENTRY"  # opens or increases a position: needs a stop-loss, counts toward exposure
    EXIT = "EXIT"  # reduces or closes a position (strategy target, square-off, flatten)
    STOP = "STOP"  # broker-side backstop stop (SL-M / GTT) placed after an entry fill
    STOP_EXIT = "STOP_EXIT"  # market exit sent by the stop-loss manager when the stop level is hit
    MANUAL = "MANUAL"  # an operator's order from the API / CLI


class TargetPosition(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The signed position a strategy wants in one instrument (0 = flat)."""

    strategy: str
    account: str
    instrument: str
    target_qty: int
    ts_event: int  # time of the candle or tick that produced the signal
    ts_init: int
    signal_id: str  # deterministic: strategy, instrument, signal time, sequence
    reason: str = ""
    stop_loss: float | None = None
    take_profit: float | None = None


class OrderIntent(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A risk-approved order, ready for a venue."""

    client_order_id: str
    account: str
    strategy: str
    instrument: str
    side: Side
    qty: int
    order_type: OrderType
    product: Product
    ts_event: int
    ts_init: int
    price: float | None = None
    trigger_price: float | None = None
    signal_id: str = ""
    reason: str = ""
    purpose: OrderPurpose = OrderPurpose.ENTRY
    stop_loss: float | None = None  # entries: the protective stop the stop-loss manager arms on fill
    take_profit: float | None = None

    def __post_init__(self) -> None:
        if not 0 < len(self.client_order_id) <= MAX_CLIENT_ORDER_ID:
            msg = f"client_order_id must be 1..{MAX_CLIENT_ORDER_ID} characters, got {self.client_order_id!r}"
            raise ValueError(msg)
        if self.qty <= 0:
            msg = f"qty must be positive, got {self.qty}"
            raise ValueError(msg)


class CancelOrder(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Ask the venue to cancel a working order. A terminal order is answered with an
    :class:`OrderUpdate` restating its status (reason "cancel refused: already ..."); an
    unknown order gets no answer."""

    client_order_id: str
    account: str
    instrument: str
    ts_event: int
    ts_init: int
    reason: str = ""


VenueRequest = OrderIntent | CancelOrder
"""What ``ord.intents`` carries: new orders and cancels, keyed by account."""


class OrderUpdate(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A venue status change for one order."""

    client_order_id: str
    venue: str
    venue_order_id: str
    account: str
    instrument: str
    side: Side
    status: OrderStatus
    qty: int
    filled_qty: int
    ts_event: int
    ts_init: int
    avg_price: float | None = None
    price: float | None = None
    trigger_price: float | None = None
    reason: str = ""
    # Copied from the order, so a consumer that sees the update before the intent (they are
    # on different topics) can still record the whole order.
    strategy: str = ""
    order_type: OrderType = OrderType.MARKET
    product: Product = Product.MIS
    purpose: OrderPurpose = OrderPurpose.ENTRY


class Fill(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One execution; ``(venue, trade_id)`` is unique."""

    venue: str
    trade_id: str
    client_order_id: str
    venue_order_id: str
    account: str
    strategy: str
    instrument: str
    side: Side
    qty: int
    price: float
    ts_event: int
    ts_init: int
    charges: float = 0.0


class Position(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Latest position of one strategy in one instrument (qty > 0 long, < 0 short)."""

    account: str
    strategy: str
    instrument: str
    qty: int
    avg_price: float
    realized_pnl: float  # gross: fills math only
    unrealized_pnl: float
    last_price: float
    ts_event: int
    ts_init: int
    charges: float = 0.0  # brokerage, taxes and fees of this position's fills; net = realized - charges
