"""SimVenue: table tests per order type and edge, partial fills, charges on fills, pickling, and a
Hypothesis state machine over random submits, cancels and ticks checking the venue's invariants."""

from __future__ import annotations

import math
import pickle
import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from operators.charges import ChargesModel
from operators.venue import NO_SLIPPAGE, TRANSITIONS, WORKING, PartialFills, SimVenue, SlippageModel, VenueEvent
from schemas.market import InstrumentType, Tick
from schemas.orders import CancelOrder, Fill, OrderIntent, OrderStatus, OrderType, OrderUpdate, Product, Side
from tests.stubs import instrument as _inst

S = OrderStatus
BUY, SELL = Side.BUY, Side.SELL
MKT, LMT, SL, SLM, GTT = OrderType.MARKET, OrderType.LIMIT, OrderType.SL, OrderType.SL_M, OrderType.GTT

EQ = "NSE:INFY"
FUT = "NFO:NIFTYFUT"  # a 0.1 grid, to test rounding off the usual 0.05
OPT = "NFO:NIFTYCE"
IDX = "NSE:NIFTY 50"
INSTRUMENTS = {
    EQ: _inst(EQ, InstrumentType.EQ),
    FUT: _inst(FUT, InstrumentType.FUT, lot=25, tick=0.1, freeze=1800),
    OPT: _inst(OPT, InstrumentType.CE, lot=25),
    IDX: _inst(IDX, InstrumentType.INDEX),
}


def intent(
    cid: str,
    side: Side,
    qty: int,
    kind: OrderType = MKT,
    price: float | None = None,
    trigger: float | None = None,
    *,
    inst: str = EQ,
    product: Product | None = None,
    account: str = "ACC",
) -> OrderIntent:
    if product is None:
        product = Product.MIS
    return OrderIntent(
        client_order_id=cid,
        account=account,
        strategy="strat",
        instrument=inst,
        side=side,
        qty=qty,
        order_type=kind,
        product=product,
        ts_event=0,
        ts_init=0,
        price=price,
        trigger_price=trigger,
    )


class Feed:
    """Ticks with increasing per-instrument seq and event time."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}

    def __call__(self, ltp: float, inst: str = EQ, last_qty: int = 1000) -> Tick:
        seq = self.seq[inst] = self.seq.get(inst, 0) + 1
        ts = 1_000 + seq
        return Tick(
            instrument=inst, ts_event=ts, ts_init=ts + 1, seq=seq, ltp=ltp, last_qty=last_qty,
            volume=seq * last_qty, oi=0, bid=ltp, ask=ltp, bid_qty=1, ask_qty=1,
        )  # fmt: skip


def cancel(cid: str, account: str = "ACC", reason: str = "") -> CancelOrder:
    return CancelOrder(client_order_id=cid, account=account, instrument=EQ, ts_event=0, ts_init=0, reason=reason)


def shape(events: list[VenueEvent] | list[OrderUpdate]) -> list[tuple[object, ...]]:
    """Fills as ("F", qty, price), updates as (status, filled_qty)."""
    return [("F", e.qty, e.price) if isinstance(e, Fill) else (e.status.value, e.filled_qty) for e in events]


def venue(*, slippage: SlippageModel = NO_SLIPPAGE, partial_fills: PartialFills | None = None) -> SimVenue:
    return SimVenue(INSTRUMENTS, slippage=slippage, partial_fills=partial_fills, charges=ChargesModel.free())


def primed(
    ltp: float = 100.0, inst: str = EQ, *, slippage: SlippageModel = NO_SLIPPAGE, partial_fills: PartialFills | None = None
) -> tuple[SimVenue, Feed]:
    v, feed = venue(slippage=slippage, partial_fills=partial_fills), Feed()
    assert v.on_tick(feed(ltp, inst)) == []
    return v, feed


OPEN, TP, PART, DONE = ("OPEN", 0), ("TRIGGER PENDING", 0), "PARTIALLY_FILLED", "COMPLETE"


# ---- MARKET -----------------------------------------------------------------------------------------------------


def test_market_with_a_price_fills_at_once_with_now_as_time() -> None:
    v, _ = primed(100.0)
    out = v.submit(intent("m1", BUY, 10), now=5_000)
    assert shape(out) == [OPEN, ("F", 10, 100.0), (DONE, 10)]
    fill, done = out[1], out[2]
    assert isinstance(fill, Fill) and isinstance(done, OrderUpdate)
    assert (fill.ts_event, fill.ts_init, done.ts_event) == (5_000, 5_000, 5_000)
    assert (fill.trade_id, fill.venue_order_id, fill.venue, fill.strategy, fill.account) == (
        "sim-m1-1", "sim-m1", "sim", "strat", "ACC",
    )  # fmt: skip
    assert done.avg_price == 100.0 and v.working() == []


def test_market_without_a_price_waits_and_fills_on_the_first_tick() -> None:
    v, feed = venue(), Feed()
    assert shape(v.submit(intent("m1", SELL, 5), now=1)) == [OPEN]
    assert [w.client_order_id for w in v.working()] == ["m1"]
    t = feed(101.5)
    out = v.on_tick(t)
    assert shape(out) == [("F", 5, 101.5), (DONE, 5)]
    assert all((e.ts_event, e.ts_init) == (t.ts_event, t.ts_init) for e in out)


# side, instrument, ltp, qty, slippage, expected fill price
SLIPPAGE = [
    (BUY, EQ, 100.0, 1, SlippageModel(ticks=2), 100.10),  # buys pay up
    (SELL, EQ, 100.0, 1, SlippageModel(ticks=2), 99.90),  # sells receive less
    (BUY, EQ, 100.0, 1, SlippageModel(bps=7), 100.10),  # 100.07 rounds up to the grid (against the buyer)
    (SELL, EQ, 100.0, 1, SlippageModel(bps=7), 99.90),  # 99.93 rounds down (against the seller)
    (BUY, EQ, 100.0, 1000, SlippageModel(impact_bps_per_lakh=5), 100.05),  # notional 1 lakh -> 5 bps
    (BUY, EQ, 100.0, 2000, SlippageModel(ticks=1, impact_bps_per_lakh=5), 100.15),  # 1 tick + 10 bps
    (BUY, FUT, 24000.0, 25, SlippageModel(bps=0.3), 24000.8),  # 0.72 on a 0.1 grid -> +0.8
    (SELL, FUT, 24000.0, 25, SlippageModel(bps=0.3), 23999.2),
    (SELL, OPT, 0.05, 25, SlippageModel(ticks=3), 0.05),  # never below one tick
    (BUY, EQ, 100.03, 1, SlippageModel(), 100.05),  # an off-grid LTP still fills on the grid
]


@pytest.mark.parametrize(("side", "inst", "ltp", "qty", "model", "expected"), SLIPPAGE)
def test_market_slippage_direction_and_tick_rounding(
    side: Side, inst: str, ltp: float, qty: int, model: SlippageModel, expected: float
) -> None:
    v, _ = primed(ltp, inst, slippage=model)
    fill = v.submit(intent("m", side, qty, inst=inst, product=Product.NRML if inst != EQ else None), now=1)[1]
    assert isinstance(fill, Fill)
    assert fill.price == expected


# ---- LIMIT ------------------------------------------------------------------------------------------------------

# side, limit, slippage ticks, expected price: marketable on arrival -> the better of limit and (slipped) LTP
MARKETABLE = [
    (BUY, 101.0, 0, 100.0),
    (BUY, 101.0, 3, 100.15),
    (BUY, 101.0, 30, 101.0),  # slippage capped by the limit
    (BUY, 100.0, 0, 100.0),  # touching is marketable
    (SELL, 99.0, 0, 100.0),
    (SELL, 99.0, 3, 99.85),
    (SELL, 99.0, 30, 99.0),
]


@pytest.mark.parametrize(("side", "limit", "ticks", "expected"), MARKETABLE)
def test_marketable_limit_fills_on_arrival(side: Side, limit: float, ticks: int, expected: float) -> None:
    v, _ = primed(100.0, slippage=SlippageModel(ticks=ticks))
    assert shape(v.submit(intent("l", side, 3, LMT, limit), now=1)) == [OPEN, ("F", 3, expected), (DONE, 3)]


# side, limit, LTPs of later ticks, index of the tick that fills (None: never), fill price
RESTING = [
    (BUY, 99.0, [99.5, 99.05, 99.0], 2, 99.0),  # fills when LTP touches the limit, not before
    (BUY, 99.0, [99.5, 97.0], 1, 99.0),  # a gap through the limit fills at the limit: no price improvement
    (BUY, 99.0, [100.5, 101.0], None, None),
    (SELL, 101.0, [100.95, 101.2], 1, 101.0),
    (SELL, 101.0, [99.0, 100.95], None, None),
]


@pytest.mark.parametrize(("side", "limit", "ltps", "at", "price"), RESTING)
def test_resting_limit_fills_at_its_price_on_cross_and_not_before(
    side: Side, limit: float, ltps: list[float], at: int | None, price: float | None
) -> None:
    v, feed = primed(100.0, slippage=SlippageModel(ticks=5))  # slippage never applies to a resting limit
    assert shape(v.submit(intent("l", side, 4, LMT, limit), now=1)) == [OPEN]
    outs = [shape(v.on_tick(feed(p))) for p in ltps]
    for i, out in enumerate(outs):
        assert out == ([("F", 4, price), (DONE, 4)] if i == at else [])


# ---- SL-M, SL, GTT ----------------------------------------------------------------------------------------------

# kind, side, price, trigger, LTPs of later ticks, expected shapes per tick
TRIGGERED = [
    # SL-M buy: fires at LTP >= trigger, then fills like MARKET on that tick
    (SLM, BUY, None, 105.0, [104.95, 105.5], [[], [OPEN, ("F", 2, 105.5), (DONE, 2)]]),
    # SL-M sell: fires at LTP <= trigger
    (SLM, SELL, None, 95.0, [95.05, 94.8], [[], [OPEN, ("F", 2, 94.8), (DONE, 2)]]),
    # SL buy: fires, arrives as LIMIT 106 and is marketable on the trigger tick
    (SL, BUY, 106.0, 105.0, [104.0, 105.2], [[], [OPEN, ("F", 2, 105.2), (DONE, 2)]]),
    # SL buy gapping past its limit: OPEN, rests, fills at the limit when LTP comes back
    (SL, BUY, 105.5, 105.0, [107.0, 106.0, 105.5], [[OPEN], [], [("F", 2, 105.5), (DONE, 2)]]),
    # SL sell: triggered at 94 below its limit 94.5 -> rests; later 94.6 crosses -> fills at the limit
    (SL, SELL, 94.5, 95.0, [94.0, 94.6], [[OPEN], [("F", 2, 94.5), (DONE, 2)]]),
    # GTT sell above the LTP (a target): fires on LTP >= 110, sells at the better of limit 109.9 and LTP
    (GTT, SELL, 109.9, 110.0, [105.0, 110.0], [[], [OPEN, ("F", 2, 110.0), (DONE, 2)]]),
    # GTT sell below the LTP (a stop): fires on LTP <= 95, limit 94.9 marketable at 94.95
    (GTT, SELL, 94.9, 95.0, [96.0, 94.95], [[], [OPEN, ("F", 2, 94.95), (DONE, 2)]]),
    # GTT buy below the LTP (buy the dip) - an SL buy would fire upwards instead
    (GTT, BUY, 95.1, 95.0, [97.0, 94.9], [[], [OPEN, ("F", 2, 94.9), (DONE, 2)]]),
    # GTT whose limit the market has run past when it fires: OPEN, then a resting LIMIT
    (GTT, BUY, 105.0, 104.0, [106.0, 105.0], [[OPEN], [("F", 2, 105.0), (DONE, 2)]]),
]


@pytest.mark.parametrize(("kind", "side", "price", "trigger", "ltps", "expected"), TRIGGERED)
def test_trigger_orders(
    kind: OrderType, side: Side, price: float | None, trigger: float, ltps: list[float], expected: list[list[object]]
) -> None:
    v, feed = primed(100.0)
    assert shape(v.submit(intent("t", side, 2, kind, price, trigger), now=1)) == [TP]
    assert [shape(v.on_tick(feed(p))) for p in ltps] == expected


@pytest.mark.parametrize(
    ("kind", "side", "price", "trigger"),
    [(SLM, SELL, None, 101.0), (SL, BUY, 100.5, 99.0), (GTT, BUY, 100.0, 100.0)],
    ids=["slm-sell-above-ltp", "sl-buy-below-ltp", "gtt-at-ltp"],
)
def test_a_trigger_already_reached_on_arrival_fires_at_once(
    kind: OrderType, side: Side, price: float | None, trigger: float
) -> None:
    v, _ = primed(100.0)
    assert shape(v.submit(intent("t", side, 1, kind, price, trigger), now=1)) == [TP, OPEN, ("F", 1, 100.0), (DONE, 1)]


def test_gtt_without_a_price_seen_fires_like_an_sl_of_its_side() -> None:
    v, feed = venue(), Feed()
    assert shape(v.submit(intent("g", SELL, 1, GTT, 94.9, 95.0), now=1)) == [TP]
    assert v.on_tick(feed(100.0)) == []  # above the trigger: a sell stop waits
    assert shape(v.on_tick(feed(95.0))) == [OPEN, ("F", 1, 95.0), (DONE, 1)]


# ---- cancels and idempotency ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "order",
    [intent("c", BUY, 5, LMT, 90.0), intent("c", SELL, 5, SLM, None, 90.0), intent("c", SELL, 5, GTT, 89.0, 90.0)],
    ids=["open-limit", "trigger-pending-slm", "dormant-gtt"],
)
def test_cancel_a_working_order(order: OrderIntent) -> None:
    v, feed = primed(100.0)
    v.submit(order, now=1)
    out = v.cancel(cancel("c", reason="kill switch"), now=7)
    assert shape(out) == [("CANCELLED", 0)]
    assert (out[0].reason, out[0].ts_event) == ("kill switch", 7)
    assert v.working() == []
    assert v.on_tick(feed(80.0)) == []  # would have filled or triggered: nothing happens


def test_cancel_a_partially_filled_order_keeps_its_fills() -> None:
    v, feed = primed(24000.0, FUT, partial_fills=PartialFills(0.5))
    v.submit(intent("p", BUY, 200, inst=FUT, product=Product.NRML), now=1)  # 50% of 1000 -> 500: fills at once
    v.submit(intent("q", BUY, 100, LMT, 23990.0, inst=FUT, product=Product.NRML), now=1)
    assert shape(v.on_tick(feed(23990.0, FUT, last_qty=100))) == [("F", 50, 23990.0), (PART, 50)]
    out = v.cancel(cancel("q"), now=9)
    assert shape(out) == [("CANCELLED", 50)] and out[0].avg_price == 23990.0 and out[0].reason == "cancelled"


def test_cancel_a_terminal_order_restates_it_without_change() -> None:
    v, _ = primed(100.0)
    v.submit(intent("d", BUY, 1), now=1)
    before = v.order("d")
    out = v.cancel(cancel("d"), now=9)
    assert shape(out) == [(DONE, 1)] and out[0].reason == "cancel refused: already COMPLETE"
    assert v.order("d") == before
    v.submit(intent("r", BUY, 1, LMT, 90.0), now=1)
    assert shape(v.cancel(cancel("r"), now=2)) == [("CANCELLED", 0)]
    assert shape(v.cancel(cancel("r"), now=3)) == [("CANCELLED", 0)]  # cancelling twice: restated


@pytest.mark.parametrize(("cid", "account"), [("nope", "ACC"), ("w", "OTHER")], ids=["unknown", "other-account"])
def test_cancel_an_unknown_order_answers_nothing_and_burns_nothing(cid: str, account: str) -> None:
    v, _ = primed(100.0)
    v.submit(intent("w", BUY, 1, LMT, 90.0), now=1)
    assert v.cancel(cancel(cid, account), now=4) == []
    assert [w.client_order_id for w in v.working()] == ["w"]  # nothing cancelled
    assert shape(v.submit(intent("nope", BUY, 1), now=5)) == [OPEN, ("F", 1, 100.0), (DONE, 1)]  # the id is still free


@pytest.mark.parametrize(
    "first",
    [intent("dup", BUY, 5, LMT, 90.0), intent("dup", BUY, 5), intent("dup", BUY, 5, LMT, 90.01)],
    ids=["working", "complete", "rejected"],
)
def test_duplicate_submit_is_a_no_op(first: OrderIntent) -> None:
    v, _ = primed(100.0)
    v.submit(first, now=1)
    state = (v.order("dup"), v.working())
    assert v.submit(first, now=2) == []
    assert v.submit(intent("dup", SELL, 50), now=3) == []  # same id, different content: still the first order
    assert (v.order("dup"), v.working()) == state


# ---- validation -------------------------------------------------------------------------------------------------

REJECTS = [
    (intent("x", BUY, 1, inst="NSE:NOPE"), "unknown instrument NSE:NOPE"),
    (intent("x", BUY, 1, inst=IDX), "is an index"),
    (intent("x", BUY, 30, inst=FUT, product=Product.NRML), "not a multiple of the lot size 25"),
    (intent("x", BUY, 1825, inst=FUT, product=Product.NRML), "above the freeze quantity 1800"),
    (intent("x", BUY, 25, inst=OPT, product=Product.CNC), "CNC is for equity delivery"),
    (intent("x", BUY, 1, product=Product.NRML), "NRML is for derivatives"),
    (intent("x", BUY, 1, LMT), "LIMIT order needs a price"),
    (intent("x", BUY, 1, GTT, None, 99.0), "GTT order needs a price"),
    (intent("x", BUY, 1, SL, 101.0), "SL order needs a trigger_price"),
    (intent("x", BUY, 1, SLM), "SL-M order needs a trigger_price"),
    (intent("x", BUY, 1, LMT, 100.03), "price 100.03 is not a multiple of the tick size 0.05"),
    (intent("x", BUY, 25, LMT, 24000.05, inst=FUT, product=Product.NRML), "not a multiple of the tick size 0.1"),
    (intent("x", SELL, 1, SLM, None, 99.99), "trigger_price 99.99 is not a multiple"),
    (intent("x", BUY, 1, LMT, -5.0), "price must be positive and finite, got -5.0"),
    (intent("x", BUY, 1, LMT, 0.0), "price must be positive and finite"),
    (intent("x", BUY, 1, LMT, math.nan), "price must be positive and finite, got nan"),
    (intent("x", BUY, 1, SL, 101.0, math.inf), "trigger_price must be positive and finite, got inf"),
    (intent("x", BUY, 1, SL, 101.0, 101.5), "SL buy needs trigger_price <= price"),
    (intent("x", SELL, 1, SL, 99.0, 98.5), "SL sell needs trigger_price >= price"),
]


@pytest.mark.parametrize(("order", "reason"), REJECTS)
def test_rejects_with_a_reason(order: OrderIntent, reason: str) -> None:
    v, feed = primed(100.0)
    (out,) = v.submit(order, now=3)
    assert isinstance(out, OrderUpdate)
    assert out.status is S.REJECTED and reason in out.reason
    assert (out.venue_order_id, out.filled_qty, out.ts_event) == ("sim-x", 0, 3)
    assert v.working() == [] and v.order("x") == out
    assert v.on_tick(feed(50.0)) == [] and v.on_tick(feed(150.0)) == []


def test_price_and_trigger_are_ignored_where_they_do_not_apply() -> None:
    v, _ = primed(100.0)
    assert shape(v.submit(intent("a", BUY, 1, MKT, 100.03, 5.0), now=1))[1] == ("F", 1, 100.0)
    assert shape(v.submit(intent("b", SELL, 1, SLM, -1.0, 101.0), now=1))[2] == ("F", 1, 100.0)


# ---- ticks ------------------------------------------------------------------------------------------------------


def test_stale_or_duplicate_ticks_and_unknown_instruments_are_ignored() -> None:
    v, feed = primed(100.0)
    v.submit(intent("l", BUY, 1, LMT, 99.0), now=1)
    stale = feed(99.0)
    v.on_tick(feed(100.5))
    assert v.on_tick(stale) == [] and v.last_price(EQ) == 100.5  # older seq: neither fills nor moves the LTP
    assert v.on_tick(Tick(instrument="NSE:OTHER", ts_event=1, ts_init=1, seq=99, ltp=1.0, last_qty=1, volume=1,
                          oi=0, bid=1.0, ask=1.0, bid_qty=1, ask_qty=1)) == []  # fmt: skip
    assert v.last_price("NSE:OTHER") is None


def test_orders_of_one_instrument_are_worked_in_submission_order() -> None:
    v, feed = primed(100.0)
    for cid, limit in (("a", 98.0), ("b", 99.0), ("c", 98.5)):
        v.submit(intent(cid, BUY, 1, LMT, limit), now=1)
    out = v.on_tick(feed(97.0))
    assert [e.client_order_id for e in out if isinstance(e, Fill)] == ["a", "b", "c"]
    assert [e.price for e in out if isinstance(e, Fill)] == [98.0, 99.0, 98.5]


# ---- partial fills ----------------------------------------------------------------------------------------------


def test_partial_fills_share_each_ticks_allowance_and_never_overfill() -> None:
    v, feed = primed(24000.0, FUT, partial_fills=PartialFills(0.5))
    v.on_tick(feed(24000.0, FUT, last_qty=100))  # allowance 50
    a = intent("a", BUY, 200, inst=FUT, product=Product.NRML)
    assert shape(v.submit(a, now=1)) == [OPEN, ("F", 50, 24000.0), (PART, 50)]
    b = intent("b", SELL, 100, inst=FUT, product=Product.NRML)
    assert shape(v.submit(b, now=1)) == [OPEN]  # the last tick's allowance is used up
    # 50% of 300 = 150 = 6 lots: all to the older order
    assert shape(v.on_tick(feed(24010.0, FUT, last_qty=300))) == [("F", 150, 24010.0), (DONE, 200)]
    # 50% of 10 rounds to no lot: at least one lot per tick
    assert shape(v.on_tick(feed(24005.0, FUT, last_qty=10))) == [("F", 25, 24005.0), (PART, 25)]
    # 50% of 1000 = 500, but only 75 left: no overfill
    assert shape(v.on_tick(feed(24004.0, FUT, last_qty=1000))) == [("F", 75, 24004.0), (DONE, 100)]
    done_a, done_b = v.order("a"), v.order("b")
    assert done_a is not None and done_b is not None
    assert done_a.avg_price == pytest.approx((50 * 24000.0 + 150 * 24010.0) / 200)  # 24007.5
    assert done_b.avg_price == pytest.approx((25 * 24005.0 + 75 * 24004.0) / 100)  # 24004.25


def test_partial_fills_of_a_marketable_limit_rest_at_the_limit() -> None:
    v, feed = primed(100.0, partial_fills=PartialFills(0.5), slippage=SlippageModel(ticks=1))
    v.on_tick(feed(100.0, last_qty=4))  # allowance 2
    assert shape(v.submit(intent("l", BUY, 5, LMT, 101.0), now=1)) == [OPEN, ("F", 2, 100.05), (PART, 2)]
    assert shape(v.on_tick(feed(100.5, last_qty=4))) == [("F", 2, 101.0), (PART, 4)]  # resting now: at the limit
    assert v.on_tick(feed(101.5, last_qty=4)) == []
    assert shape(v.on_tick(feed(99.0, last_qty=100))) == [("F", 1, 101.0), (DONE, 5)]


@pytest.mark.parametrize(
    ("p", "last_qty", "lot", "expected"), [(0.5, 700, 75, 300), (0.5, 10, 75, 75), (1.0, 7, 1, 7), (0.1, 0, 1, 1)]
)
def test_partial_fill_allowance(p: float, last_qty: int, lot: int, expected: int) -> None:
    assert PartialFills(p).allowance(last_qty, lot) == expected


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, math.nan])
def test_partial_fills_validate_participation(bad: float) -> None:
    with pytest.raises(ValueError, match="max_participation"):
        PartialFills(bad)


def test_slippage_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        SlippageModel(bps=-1.0)


# ---- charges on fills -------------------------------------------------------------------------------------------


def test_fills_carry_charges_with_the_brokerage_cap_once_per_order() -> None:
    feed = Feed()
    v = SimVenue(INSTRUMENTS, partial_fills=PartialFills(0.5))
    v.on_tick(feed(24000.0, FUT, last_qty=50))  # allowance 25 per tick
    model, charged, expected = ChargesModel(), Decimal(0), []
    out = v.submit(intent("f", BUY, 75, inst=FUT, product=Product.NRML), now=1)
    for _ in range(2):
        out += v.on_tick(feed(24000.0, FUT, last_qty=50))
    fills = [e for e in out if isinstance(e, Fill)]
    assert [f.qty for f in fills] == [25, 25, 25]
    for f in fills:
        c = model.for_fill(INSTRUMENTS[FUT], Product.NRML, Side.BUY, f.qty, f.price, brokerage_charged=charged)
        charged += c.brokerage
        expected.append(float(c.total))
    # each fill: turnover 6,00,000; brokerage 20 on the first only (0.03% = 180 > cap); exch 10.38; SEBI 0.60;
    # stamp 12.00; GST 0.18*(20+10.38+0.60) = 5.58 on the first, 0.18*(10.38+0.60) = 1.98 after
    assert [f.charges for f in fills] == expected == [48.56, 24.96, 24.96]


# ---- determinism and pickling -----------------------------------------------------------------------------------


def _script(seed: int, n: int) -> list[tuple[str, object]]:
    rng, feed, steps, ids = random.Random(seed), Feed(), [], []
    price = {EQ: 100.0, OPT: 20.0}
    for i in range(n):
        inst = rng.choice([EQ, OPT])
        roll = rng.random()
        if roll < 0.55:
            price[inst] = max(0.05, round(price[inst] + rng.randint(-4, 4) * 0.05, 2))
            steps.append(("tick", feed(price[inst], inst, last_qty=rng.randint(1, 200))))
        elif roll < 0.9:
            kind = rng.choice(list(OrderType))
            side = rng.choice([BUY, SELL])
            off = rng.randint(-6, 6) * 0.05
            px = round(price[inst] + off, 2) if kind in (LMT, SL, GTT) else None
            trig = round(price[inst] + (abs(off) if side is BUY else -abs(off)), 2) if kind in (SL, SLM, GTT) else None
            if kind is SL and px is not None and trig is not None:
                px = max(px, trig) if side is BUY else min(px, trig)
            ids.append(f"o{i}")
            lot = 25 if inst == OPT else 1
            steps.append(("submit", intent(f"o{i}", side, lot * rng.randint(1, 8), kind, px, trig, inst=inst)))
        elif ids:
            steps.append(("cancel", cancel(rng.choice(ids))))
    return steps


def _play(v: SimVenue, steps: list[tuple[str, object]], start: int = 0) -> list[VenueEvent]:
    out: list[VenueEvent] = []
    for i, (what, item) in enumerate(steps, start):
        if what == "tick":
            assert isinstance(item, Tick)
            out += v.on_tick(item)
        elif what == "submit":
            assert isinstance(item, OrderIntent)
            out += v.submit(item, now=i)
        else:
            assert isinstance(item, CancelOrder)
            out += v.cancel(item, now=i)
    return out


def test_pickle_round_trip_mid_stream_gives_identical_output() -> None:
    steps = _script(seed=7, n=600)

    def make() -> SimVenue:
        return SimVenue(INSTRUMENTS, partial_fills=PartialFills(0.3), slippage=SlippageModel(ticks=1, bps=2))

    a = make()
    first = _play(a, steps[:300])
    b = pickle.loads(pickle.dumps(a))
    rest_a, rest_b = _play(a, steps[300:], 300), _play(b, steps[300:], 300)
    assert rest_a == rest_b and sum(isinstance(e, Fill) for e in rest_a) > 10
    assert a.working() == b.working()
    # and a fresh run of the whole script is byte-for-byte the same (no hidden clock or randomness)
    assert _play(make(), steps) == first + rest_a


# ---- state machine ----------------------------------------------------------------------------------------------

PRICE_TICKS = {EQ: (1800, 2200), OPT: (1, 400)}  # prices as whole ticks of 0.05


class _OrderModel:
    def __init__(self, it: OrderIntent) -> None:
        self.intent = it
        self.status: OrderStatus | None = None
        self.filled = 0
        self.notional = 0.0
        self.fill_qty = 0


class VenueMachine(RuleBasedStateMachine):
    """Random submits, cancels, duplicate submits, stale ticks and pickle round trips; every event is
    checked against a model of each order built from the venue's own output."""

    def __init__(self) -> None:
        super().__init__()
        self.venue = venue()
        self.orders: dict[str, _OrderModel] = {}
        self.seq: dict[str, int] = {EQ: 0, OPT: 0}
        self.ltp: dict[str, float] = {}
        self.n = 0

    @initialize(partial=st.sampled_from([None, 0.2, 1.0]), ticks=st.integers(0, 2), bps=st.sampled_from([0.0, 5.0]))
    def configure(self, partial: float | None, ticks: int, bps: float) -> None:
        self.venue = SimVenue(
            INSTRUMENTS,
            slippage=SlippageModel(ticks=ticks, bps=bps),
            partial_fills=None if partial is None else PartialFills(partial),
        )

    # -- checks on every event ------------------------------------------------------------------------------

    def _apply(self, events: list[VenueEvent] | list[OrderUpdate]) -> None:
        for e in events:
            if isinstance(e, Fill):
                m = self.orders.get(e.client_order_id)
                assert m is not None and m.status in WORKING, f"fill without a working order: {e}"
                inst = INSTRUMENTS[e.instrument]
                n = e.price / inst.tick_size
                assert abs(n - round(n)) < 1e-6 and e.price > 0, f"fill off the tick grid: {e}"
                assert e.qty > 0 and e.qty % inst.lot_size == 0
                it = m.intent
                if it.order_type in (LMT, SL, GTT):
                    assert it.price is not None
                    assert (e.price <= it.price + 1e-9) if it.side is BUY else (e.price >= it.price - 1e-9), e
                m.fill_qty += e.qty
                m.notional += e.qty * e.price
                assert m.fill_qty <= it.qty, f"overfilled: {e}"
                assert e.trade_id == f"sim-{it.client_order_id}-{e.trade_id.rsplit('-', 1)[1]}"
                continue
            m = self.orders[e.client_order_id]
            it = m.intent
            assert (e.strategy, e.order_type, e.product, e.purpose, e.price, e.trigger_price) == (
                it.strategy, it.order_type, it.product, it.purpose, it.price, it.trigger_price,
            )  # fmt: skip
            assert (e.venue, e.venue_order_id, e.account, e.instrument, e.side) == (
                "sim", f"sim-{it.client_order_id}", it.account, it.instrument, it.side,
            )  # fmt: skip
            if m.status is not None and m.status.terminal:
                assert (e.status, e.filled_qty) == (m.status, m.filled), f"terminal order changed: {m.status} -> {e}"
                continue
            assert e.status in TRANSITIONS[m.status], f"{m.status} -> {e.status} is not an allowed edge"
            assert e.filled_qty == m.fill_qty <= e.qty == m.intent.qty
            if e.filled_qty:
                assert e.avg_price == pytest.approx(m.notional / m.fill_qty)
            assert (e.status is S.COMPLETE) == (e.filled_qty == e.qty), f"COMPLETE exactly when filled: {e}"
            m.status, m.filled = e.status, e.filled_qty

    # -- rules ----------------------------------------------------------------------------------------------

    @rule(inst=st.sampled_from([EQ, OPT]), step=st.integers(-8, 8), last_qty=st.integers(0, 300))
    def tick(self, inst: str, step: int, last_qty: int) -> None:
        lo, hi = PRICE_TICKS[inst]
        now = round(self.ltp.get(inst, (lo + hi) / 2 * 0.05) / 0.05)
        px = round(min(max(now + step, lo), hi) * 0.05, 2)
        self.seq[inst] += 1
        self.ltp[inst] = px
        self.n += 1
        t = Tick(instrument=inst, ts_event=self.n, ts_init=self.n, seq=self.seq[inst], ltp=px, last_qty=last_qty,
                 volume=0, oi=0, bid=px, ask=px, bid_qty=1, ask_qty=1)  # fmt: skip
        self._apply(self.venue.on_tick(t))

    @rule(inst=st.sampled_from([EQ, OPT]), back=st.integers(0, 3))
    def stale_tick(self, inst: str, back: int) -> None:
        if self.seq[inst] == 0:
            return
        t = Tick(instrument=inst, ts_event=0, ts_init=0, seq=self.seq[inst] - back, ltp=0.05, last_qty=1,
                 volume=0, oi=0, bid=0.05, ask=0.05, bid_qty=1, ask_qty=1)  # fmt: skip
        assert self.venue.on_tick(t) == []

    @rule(
        inst=st.sampled_from([EQ, OPT]),
        side=st.sampled_from([BUY, SELL]),
        kind=st.sampled_from(list(OrderType)),
        lots=st.integers(1, 6),
        odd_qty=st.booleans(),
        off=st.integers(-10, 10),
        toff=st.integers(-10, 10),
        off_grid=st.booleans(),
    )
    def submit(
        self, inst: str, side: Side, kind: OrderType, lots: int, odd_qty: bool, off: int, toff: int, off_grid: bool
    ) -> None:
        lo, hi = PRICE_TICKS[inst]
        base = round(self.ltp.get(inst, (lo + hi) / 2 * 0.05) / 0.05)
        price = round(max(base + off, 1) * 0.05, 2) + (0.01 if off_grid else 0.0)
        trig = round(max(base + toff, 1) * 0.05, 2)
        lot = INSTRUMENTS[inst].lot_size
        qty = lots * lot + (1 if odd_qty and lot > 1 else 0)
        self.n += 1
        cid = f"o{self.n}"
        it = intent(cid, side, qty, kind, price, trig, inst=inst)
        self.orders[cid] = _OrderModel(it)
        self._apply(self.venue.submit(it, now=self.n))
        assert self.orders[cid].status is not None

    @rule(data=st.data())
    def resubmit(self, data: st.DataObject) -> None:
        if self.orders:
            cid = data.draw(st.sampled_from(sorted(self.orders)))
            assert self.venue.submit(self.orders[cid].intent, now=self.n) == []

    @rule(data=st.data(), unknown=st.booleans())
    def cancel(self, data: st.DataObject, unknown: bool) -> None:
        self.n += 1
        if unknown or not self.orders:
            assert self.venue.cancel(cancel("zz-unknown"), now=self.n) == []
            return
        cid = data.draw(st.sampled_from(sorted(self.orders)))
        out = self.venue.cancel(cancel(cid), now=self.n)
        assert len(out) == 1
        self._apply(out)

    @rule()
    def pickle_round_trip(self) -> None:
        self.venue = pickle.loads(pickle.dumps(self.venue))

    # -- invariants -----------------------------------------------------------------------------------------

    @invariant()
    def venue_agrees_with_the_model(self) -> None:
        working = {cid for cid, m in self.orders.items() if m.status in WORKING}
        assert {w.client_order_id for w in self.venue.working()} == working
        for cid, m in self.orders.items():
            snap = self.venue.order(cid)
            assert snap is not None and snap.status is m.status and snap.filled_qty == m.filled == m.fill_qty


VenueMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_venue_state_machine = VenueMachine.TestCase
