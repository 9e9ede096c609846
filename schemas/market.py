"""Market-data events: instruments, ticks, depth, candles and rejected input.

>>> from schemas.market import Tick
>>> t = Tick(instrument="NSE:INFY", ts_event=1, ts_init=1, seq=0, ltp=1500.5, last_qty=10,
...          volume=10, oi=0, bid=1500.4, ask=1500.6, bid_qty=5, ask_qty=7)
>>> t.mid
1500.5
"""

from __future__ import annotations

import enum

import msgspec


class InstrumentType(enum.StrEnum):
    """Kite's ``instrument_type`` column, plus INDEX for non-tradable indices."""

    EQ = "EQ"
    FUT = "FUT"
    CE = "CE"
    PE = "PE"
    INDEX = "INDEX"


class Instrument(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """One row of the instrument master, in the columns of Kite's instruments dump.

    ``instrument`` is the canonical key used everywhere else (topic keys, tick fields):
    ``EXCHANGE:TRADINGSYMBOL``, e.g. ``NSE:INFY`` or ``NFO:NIFTY24DEC24000CE``.
    """

    instrument: str
    instrument_token: int
    exchange_token: int
    tradingsymbol: str
    name: str
    exchange: str
    segment: str
    instrument_type: InstrumentType
    tick_size: float
    lot_size: int
    last_price: float = 0.0
    expiry: str | None = None  # ISO date, derivatives only
    strike: float | None = None  # options only
    underlying: str | None = None  # canonical key of the underlying, derivatives only
    freeze_qty: int | None = None  # exchange freeze quantity; orders above it must be split

    @property
    def tradable(self) -> bool:
        return self.instrument_type is not InstrumentType.INDEX


class Tick(msgspec.Struct, frozen=True, kw_only=True, tag=True, gc=False):
    """A normalized trade/quote update for one instrument.

    ``volume`` is the cumulative day volume as brokers send it (Kite full mode); per-bar
    volume is derived from its deltas. ``seq`` is a per-instrument feed sequence number,
    so ticks that share an exchange timestamp (Kite stamps whole seconds) stay distinct.
    """

    instrument: str
    ts_event: int
    ts_init: int
    seq: int
    ltp: float
    last_qty: int
    volume: int
    oi: int
    bid: float
    ask: float
    bid_qty: int
    ask_qty: int

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2.0


class DepthLevel(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One price level: ``[price, quantity, orders]`` on the wire."""

    price: float
    qty: int
    orders: int


class DepthSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Five-level order book, best level first on each side."""

    instrument: str
    ts_event: int
    ts_init: int
    bids: tuple[DepthLevel, ...]
    asks: tuple[DepthLevel, ...]
    total_bid_qty: int
    total_ask_qty: int


class Candle(msgspec.Struct, frozen=True, kw_only=True, tag=True, gc=False):
    """An OHLC bar of one timeframe; ``final`` is False for in-progress updates."""

    instrument: str
    timeframe: str
    open_time: int  # ns, inclusive bar start
    ts_event: int  # ns, exchange time of the last tick folded in (or the close time)
    ts_init: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    trade_count: int
    vwap: float
    oi: int
    final: bool


class RejectReason(enum.StrEnum):
    """Why ingest refused a market-data event; stable codes for metrics and the DLQ."""

    MALFORMED = "malformed"  # could not be decoded or a field has the wrong type
    NON_POSITIVE_PRICE = "non_positive_price"
    NON_FINITE = "non_finite"  # NaN or infinity in a numeric field
    NEGATIVE_QUANTITY = "negative_quantity"
    VOLUME_BACKWARDS = "volume_backwards"  # cumulative day volume decreased
    CROSSED_BOOK = "crossed_book"  # best bid above best ask
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    LATE = "late"  # older than the open bar: belongs to a candle that already closed


class RejectedEvent(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A market-data event ingest refused, published to the dead-letter topic.

    ``payload`` is the offending event as JSON text (or the raw text if it never decoded),
    so nothing is lost and the event can be inspected or replayed after a fix.
    """

    source_topic: str
    instrument: str | None
    reason: RejectReason
    detail: str
    payload: str
    ts_event: int
    ts_init: int


def rejected(
    source_topic: str, instrument: str | None, reason: RejectReason, detail: str, payload: bytes, ts: int
) -> RejectedEvent:
    """A dead-letter event for ``payload`` (the offending record's bytes, kept as text)."""
    return RejectedEvent(
        source_topic=source_topic,
        instrument=instrument,
        reason=reason,
        detail=detail,
        payload=payload.decode("utf-8", "replace"),
        ts_event=ts,
        ts_init=ts,
    )
