"""Indian trading charges per fill: brokerage, STT, exchange transaction charges, SEBI fee, stamp duty, GST.

The defaults are a discount broker's schedule (Zerodha's published charges as of late 2024, after
the 1 Oct 2024 changes: higher F&O STT, SEBI's "true to label" flat exchange charges). Source:
https://zerodha.com/charges, read for NSE/BSE equity and F&O, checked against secondary copies.
Every rate is data in :data:`DEFAULT_RATES` (per segment class) and :data:`EXCHANGE_RATES` (per
exchange and class, checked first), so another broker or a later schedule is a different table,
not different code. Rates are fractions of turnover (``0.0003`` = 0.03 %), brokerage caps are
rupees per executed order.

============  ======================  ===========  =========  ===============  ===========
class         brokerage               STT          exch. txn  stamp (buy)      applies to
============  ======================  ===========  =========  ===============  ===========
EQ_INTRADAY   min(₹20, 0.03 %)        0.025 % sell 0.00297 %  0.003 %          EQ + MIS
EQ_DELIVERY   ₹0                      0.1 % both   0.00297 %  0.015 %          EQ + CNC/NRML
FUTURES       min(₹20, 0.03 %)        0.02 % sell  0.00173 %  0.002 %          FUT
OPTIONS       flat ₹20                0.1 % sell   0.03503 %  0.003 %          CE / PE
============  ======================  ===========  =========  ===============  ===========

All classes add SEBI's fee of ₹10 per crore (0.0001 %) and 18 % GST on brokerage + exchange
transaction charges + SEBI fee. BSE differs only in exchange charges (equity 0.00375 %,
futures on BFO 0, options on BFO 0.0325 %). For options every turnover-based charge is on the
premium (``qty × premium``). Exchanges not in :data:`EXCHANGE_RATES` (e.g. MCX) get the NSE rates
of their class; commodity schedules (CTT etc.) are not modelled. Not modelled either: DP charges
on delivery sells (per scrip per day, not per fill), STT on exercised options, IPFT and clearing
charges, the per-contract-note rounding of stamp duty.

**Brokerage is per executed order.** An order filled in several partial fills pays at most the
cap once: pass what the order has already been charged as ``brokerage_charged`` and a fill pays
``min(cap - brokerage_charged, rate × fill turnover)`` (flat brokerage: ``cap - brokerage_charged``),
so the fills of one order add up to ``min(cap, rate × order turnover)`` (up to paise rounding).

**Rounding.** Money is :class:`~decimal.Decimal`. The turnover is exact (``Decimal(str(price)) × qty``);
each component is rounded half-up to the paisa; GST is 18 % of the *rounded* brokerage +
exchange + SEBI components, rounded the same way; ``total`` is the sum of the rounded components,
so a breakdown always adds up to its total.

>>> from schemas.market import Instrument, InstrumentType
>>> from schemas.orders import Product, Side
>>> infy = Instrument(instrument="NSE:INFY", instrument_token=408065, exchange_token=1594, tradingsymbol="INFY",
...                   name="INFOSYS", exchange="NSE", segment="NSE", instrument_type=InstrumentType.EQ,
...                   tick_size=0.05, lot_size=1)
>>> c = ChargesModel().for_fill(infy, Product.MIS, Side.SELL, 100, 1500.0)
>>> c.brokerage, c.stt, c.exchange_txn, c.sebi, c.stamp_duty, c.gst, c.total
(Decimal('20.00'), Decimal('37.50'), Decimal('4.46'), Decimal('0.15'), Decimal('0.00'), Decimal('4.43'), Decimal('66.54'))

A second partial fill of the same order pays no more brokerage once the ₹20 cap is used up:

>>> ChargesModel().for_fill(infy, Product.MIS, Side.SELL, 100, 1500.0, brokerage_charged=c.brokerage).brokerage
Decimal('0.00')
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from schemas.market import Instrument, InstrumentType
from schemas.orders import Product, Side

__all__ = ["DEFAULT_RATES", "EXCHANGE_RATES", "ChargeClass", "Charges", "ChargesModel", "SegmentRates", "charge_class"]

_PAISA = Decimal("0.01")
_ZERO = Decimal("0.00")


class ChargeClass(enum.StrEnum):
    """The row of the schedule a fill is charged under."""

    EQ_INTRADAY = "EQ_INTRADAY"
    EQ_DELIVERY = "EQ_DELIVERY"
    FUTURES = "FUTURES"
    OPTIONS = "OPTIONS"


@dataclass(frozen=True, slots=True)
class SegmentRates:
    """One row of a charges schedule. Rates are fractions of turnover; ``brokerage_max`` is rupees.

    ``brokerage_rate=None`` means a flat ``brokerage_max`` per executed order (options).
    """

    brokerage_rate: Decimal | None
    brokerage_max: Decimal
    stt_buy: Decimal
    stt_sell: Decimal
    exchange_txn: Decimal
    stamp_buy: Decimal
    sebi: Decimal = Decimal("0.000001")  # ₹10 per crore
    gst: Decimal = Decimal("0.18")  # on brokerage + exchange txn + SEBI fee


def _d(s: str) -> Decimal:
    return Decimal(s)


DEFAULT_RATES: Mapping[ChargeClass, SegmentRates] = {
    ChargeClass.EQ_INTRADAY: SegmentRates(
        brokerage_rate=_d("0.0003"),
        brokerage_max=_d("20"),
        stt_buy=_d("0"),
        stt_sell=_d("0.00025"),
        exchange_txn=_d("0.0000297"),
        stamp_buy=_d("0.00003"),
    ),
    ChargeClass.EQ_DELIVERY: SegmentRates(
        brokerage_rate=_d("0"),
        brokerage_max=_d("0"),
        stt_buy=_d("0.001"),
        stt_sell=_d("0.001"),
        exchange_txn=_d("0.0000297"),
        stamp_buy=_d("0.00015"),
    ),
    ChargeClass.FUTURES: SegmentRates(
        brokerage_rate=_d("0.0003"),
        brokerage_max=_d("20"),
        stt_buy=_d("0"),
        stt_sell=_d("0.0002"),
        exchange_txn=_d("0.0000173"),
        stamp_buy=_d("0.00002"),
    ),
    ChargeClass.OPTIONS: SegmentRates(
        brokerage_rate=None,
        brokerage_max=_d("20"),
        stt_buy=_d("0"),
        stt_sell=_d("0.001"),
        exchange_txn=_d("0.0003503"),
        stamp_buy=_d("0.00003"),
    ),
}
"""Zerodha, late 2024, NSE/NFO exchange charges."""

EXCHANGE_RATES: Mapping[tuple[str, ChargeClass], SegmentRates] = {
    ("BSE", ChargeClass.EQ_INTRADAY): dataclasses.replace(
        DEFAULT_RATES[ChargeClass.EQ_INTRADAY], exchange_txn=_d("0.0000375")
    ),
    ("BSE", ChargeClass.EQ_DELIVERY): dataclasses.replace(
        DEFAULT_RATES[ChargeClass.EQ_DELIVERY], exchange_txn=_d("0.0000375")
    ),
    ("BFO", ChargeClass.FUTURES): dataclasses.replace(DEFAULT_RATES[ChargeClass.FUTURES], exchange_txn=_d("0")),
    ("BFO", ChargeClass.OPTIONS): dataclasses.replace(DEFAULT_RATES[ChargeClass.OPTIONS], exchange_txn=_d("0.000325")),
}
"""Zerodha, late 2024: where BSE's exchange charges differ from NSE's; looked up before :data:`DEFAULT_RATES`."""


@dataclass(frozen=True, slots=True)
class Charges:
    """The charges of one fill, each rounded to the paisa; ``total`` is their sum."""

    turnover: Decimal
    brokerage: Decimal
    stt: Decimal
    exchange_txn: Decimal
    sebi: Decimal
    stamp_duty: Decimal
    gst: Decimal
    total: Decimal


def charge_class(instrument: Instrument, product: Product) -> ChargeClass:
    """Which schedule row a fill in ``instrument`` with ``product`` falls under.

    Equity is intraday only with MIS (CNC and NRML are charged as delivery); derivatives are
    charged the same whatever the product. Indices are not tradable: ``ValueError``.
    """
    kind = instrument.instrument_type
    if kind is InstrumentType.EQ:
        return ChargeClass.EQ_INTRADAY if product is Product.MIS else ChargeClass.EQ_DELIVERY
    if kind is InstrumentType.FUT:
        return ChargeClass.FUTURES
    if kind in (InstrumentType.CE, InstrumentType.PE):
        return ChargeClass.OPTIONS
    msg = f"no charges schedule for {instrument.instrument} of type {kind}: expected EQ, FUT, CE or PE"
    raise ValueError(msg)


def _paise(x: Decimal) -> Decimal:
    return x.quantize(_PAISA, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class ChargesModel:
    """A charges schedule: ``rates`` per class, ``exchange_rates`` per (exchange, class) taking precedence.

    Override a row by passing a modified table, e.g. ``ChargesModel(rates={**DEFAULT_RATES,
    ChargeClass.OPTIONS: dataclasses.replace(DEFAULT_RATES[ChargeClass.OPTIONS], brokerage_max=Decimal(15))})``.
    ``ChargesModel.free()`` charges nothing (frictionless backtests).
    """

    rates: Mapping[ChargeClass, SegmentRates] = field(default_factory=lambda: dict(DEFAULT_RATES))
    exchange_rates: Mapping[tuple[str, ChargeClass], SegmentRates] = field(default_factory=lambda: dict(EXCHANGE_RATES))

    @classmethod
    def free(cls) -> ChargesModel:
        """A schedule with every rate zero."""
        zero = SegmentRates(
            brokerage_rate=_ZERO,
            brokerage_max=_ZERO,
            stt_buy=_ZERO,
            stt_sell=_ZERO,
            exchange_txn=_ZERO,
            stamp_buy=_ZERO,
            sebi=_ZERO,
            gst=_ZERO,
        )
        return cls(rates=dict.fromkeys(ChargeClass, zero), exchange_rates={})

    def rates_for(self, instrument: Instrument, product: Product) -> SegmentRates:
        """The schedule row for a fill in ``instrument`` with ``product``; ``ValueError`` if none applies."""
        cls = charge_class(instrument, product)
        row = self.exchange_rates.get((instrument.exchange, cls))
        if row is None:
            row = self.rates.get(cls)
        if row is None:
            msg = f"no charges rates for class {cls} (instrument {instrument.instrument}); the table has {list(self.rates)}"
            raise ValueError(msg)
        return row

    def for_fill(
        self,
        instrument: Instrument,
        product: Product,
        side: Side,
        qty: int,
        price: float,
        *,
        brokerage_charged: Decimal = _ZERO,
    ) -> Charges:
        """The charges of one fill of ``qty`` at ``price``.

        ``brokerage_charged`` is the brokerage this fill's order has already paid on earlier
        partial fills; the per-order cap is applied to it (see the module docstring).
        """
        r = self.rates_for(instrument, product)
        turnover = Decimal(str(price)) * qty
        headroom = max(r.brokerage_max - brokerage_charged, _ZERO)
        brokerage = _paise(headroom) if r.brokerage_rate is None else _paise(min(headroom, r.brokerage_rate * turnover))
        buy = side is Side.BUY
        stt = _paise((r.stt_buy if buy else r.stt_sell) * turnover)
        exchange_txn = _paise(r.exchange_txn * turnover)
        sebi = _paise(r.sebi * turnover)
        stamp = _paise(r.stamp_buy * turnover) if buy else _ZERO
        gst = _paise(r.gst * (brokerage + exchange_txn + sebi))
        return Charges(
            turnover=turnover,
            brokerage=brokerage,
            stt=stt,
            exchange_txn=exchange_txn,
            sebi=sebi,
            stamp_duty=stamp,
            gst=gst,
            total=brokerage + stt + exchange_txn + sebi + stamp + gst,
        )
