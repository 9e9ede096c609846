"""StopManager: backstop placement, the one market exit, gaps, partial fills, trailing, retries, restarts."""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from operators.stops import StopConfig, StopManager, StopState, TrailMode
from schemas.market import InstrumentType
from schemas.orders import (
    MAX_CLIENT_ORDER_ID,
    CancelOrder,
    Fill,
    OrderIntent,
    OrderPurpose,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Product,
    Side,
    VenueRequest,
)
from tests.stubs import instrument

INFY, USDINR = "NSE:INFY", "CDS:USDINR24DECFUT"

INSTRUMENTS = {INFY: instrument(INFY), USDINR: instrument(USDINR, InstrumentType.FUT, tick=0.0025)}
CFG = StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, trail_step_ticks=2, trail_step_bps=0.0)
BUY, SELL = Side.BUY, Side.SELL


class Desk:
    """A StopManager plus factories for its inputs (account a1, venue paper)."""

    def __init__(self, config: StopConfig = CFG) -> None:
        self.sm = StopManager(INSTRUMENTS, config)
        self.trades = 0
        self.now = 100

    def enter(
        self,
        coid: str,
        side: Side,
        qty: int,
        stop: float | None,
        tp: float | None = None,
        *,
        instrument: str = INFY,
        strategy: str = "s1",
        product: Product = Product.MIS,
        purpose: OrderPurpose = OrderPurpose.ENTRY,
    ) -> None:
        self.sm.on_intent(
            OrderIntent(
                client_order_id=coid,
                account="a1",
                strategy=strategy,
                instrument=instrument,
                side=side,
                qty=qty,
                order_type=OrderType.MARKET,
                product=product,
                ts_event=1,
                ts_init=1,
                purpose=purpose,
                stop_loss=stop,
                take_profit=tp,
            )
        )

    def fill(
        self, coid: str, side: Side, qty: int, price: float, *, instrument: str = INFY, strategy: str = "s1"
    ) -> list[VenueRequest]:
        self.trades += 1
        self.now += 1
        return self.sm.on_fill(
            Fill(
                venue="paper",
                trade_id=f"t{self.trades}",
                client_order_id=coid,
                venue_order_id=f"v-{coid}",
                account="a1",
                strategy=strategy,
                instrument=instrument,
                side=side,
                qty=qty,
                price=price,
                ts_event=self.now,
                ts_init=self.now,
            )
        )

    def fill_order(self, order: OrderIntent, price: float, qty: int | None = None) -> list[VenueRequest]:
        return self.fill(
            order.client_order_id,
            order.side,
            order.qty if qty is None else qty,
            price,
            instrument=order.instrument,
            strategy=order.strategy,
        )

    def status(self, order: OrderIntent, status: OrderStatus, filled: int = 0) -> list[VenueRequest]:
        self.now += 1
        return self.sm.on_order_update(
            OrderUpdate(
                client_order_id=order.client_order_id,
                venue="paper",
                venue_order_id=f"v-{order.client_order_id}",
                account="a1",
                instrument=order.instrument,
                side=order.side,
                status=status,
                qty=order.qty,
                filled_qty=filled,
                ts_event=self.now,
                ts_init=self.now,
            )
        )

    def tick(self, price: float, instrument: str = INFY) -> list[VenueRequest]:
        self.now += 1
        return list(self.sm.on_price(instrument, price, self.now))

    def armed(self, long: bool = True, qty: int = 10, price: float = 1500.0, stop: float = 1490.0) -> OrderIntent:
        """Enter and fill; returns the backstop."""
        side = BUY if long else SELL
        self.enter("e1", side, qty, stop if long else 2 * price - stop)
        (bs,) = self.fill("e1", side, qty, price)
        assert isinstance(bs, OrderIntent)
        self.status(bs, OrderStatus.TRIGGER_PENDING)
        return bs


def only(outs: Sequence[VenueRequest]) -> tuple[list[OrderIntent], list[CancelOrder]]:
    intents = [o for o in outs if isinstance(o, OrderIntent)]
    cancels = [o for o in outs if isinstance(o, CancelOrder)]
    assert len(intents) + len(cancels) == len(outs)
    return intents, cancels


# ---------------------------------------------------------------------- arming


@pytest.mark.parametrize(
    ("instrument", "side", "price", "stop", "config", "want_side", "want_trigger"),
    [
        (INFY, BUY, 1500.0, 1490.0, CFG, SELL, 1489.90),
        (INFY, BUY, 1500.0, 1490.03, CFG, SELL, 1489.90),  # 1489.93 rounds down, away from the price
        (INFY, SELL, 1500.0, 1510.0, CFG, BUY, 1510.10),
        (INFY, SELL, 1500.0, 1510.02, CFG, BUY, 1510.15),  # 1510.12 rounds up, away from the price
        (INFY, BUY, 1000.0, 990.0, StopConfig(backstop_offset_ticks=1, backstop_offset_bps=10.0), SELL, 989.0),
        (INFY, SELL, 1000.0, 1010.0, StopConfig(backstop_offset_ticks=1, backstop_offset_bps=10.0), BUY, 1011.05),
        (INFY, BUY, 100.0, 99.0, StopConfig(backstop_offset_ticks=3, backstop_offset_bps=1.0), SELL, 98.85),  # ticks win
        (USDINR, BUY, 83.50, 83.40, CFG, SELL, 83.395),
        (USDINR, SELL, 83.50, 83.6011, CFG, BUY, 83.6075),
    ],
)
def test_entry_fill_arms_a_backstop_beyond_the_stop(
    instrument: str, side: Side, price: float, stop: float, config: StopConfig, want_side: Side, want_trigger: float
) -> None:
    d = Desk(config)
    d.enter("e1", side, 7, stop, instrument=instrument)
    (bs,) = d.fill("e1", side, 7, price, instrument=instrument)
    assert isinstance(bs, OrderIntent)
    assert (bs.side, bs.qty, bs.order_type, bs.purpose, bs.product) == (
        want_side,
        7,
        OrderType.SL_M,
        OrderPurpose.STOP,
        Product.MIS,
    )
    assert bs.trigger_price == pytest.approx(want_trigger, abs=1e-9)
    assert bs.price is None and bs.signal_id == "e1" and len(bs.client_order_id) <= MAX_CLIENT_ORDER_ID
    (p,) = d.sm.protected()
    assert (p.side, p.qty, p.stop, p.state, p.backstop_id) == (side, 7, stop, StopState.ARMED, bs.client_order_id)


def test_only_entries_with_a_stop_are_protected() -> None:
    d = Desk()
    d.enter("e0", BUY, 5, None)  # no stop: nothing to arm
    d.enter("x0", SELL, 5, 1510.0, purpose=OrderPurpose.EXIT)  # exits never arm
    assert d.fill("e0", BUY, 5, 1500.0) == []
    assert d.fill("x0", SELL, 5, 1500.0) == []
    d.enter("m1", BUY, 5, 1490.0, purpose=OrderPurpose.MANUAL)  # an operator's order with a stop arms
    (bs,) = d.fill("m1", BUY, 5, 1500.0)
    assert isinstance(bs, OrderIntent) and bs.qty == 5


def test_no_protected_position_is_a_dict_lookup_returning_the_shared_empty_tuple() -> None:
    d = Desk()
    a = d.sm.on_price(INFY, 1500.0, 1)
    d.armed()
    assert a == () and a is d.sm.on_price("NSE:TCS", 1.0, 2) and a is d.sm.on_price(INFY, 1495.0, 3)


# ---------------------------------------------------------------------- the stop


@pytest.mark.parametrize("long", [True, False])
def test_touching_the_stop_sends_one_market_exit_and_one_cancel_then_nothing(long: bool) -> None:
    d = Desk()
    bs = d.armed(long)
    s = 1 if long else -1
    assert d.tick(1500.0 - s * 9.95) == []  # inside the stop
    exits, cancels = only(d.tick(1500.0 - s * 10.0))  # touches it exactly
    assert [(x.side, x.qty, x.order_type, x.purpose, x.reason) for x in exits] == [
        (bs.side, 10, OrderType.MARKET, OrderPurpose.STOP_EXIT, "stop_loss")
    ]
    assert [c.client_order_id for c in cancels] == [bs.client_order_id]
    for px in (1500.0 - s * 10.05, 1500.0 - s * 30.0, 1500.0, 1500.0 + s * 50.0):
        assert d.tick(px) == []
    (p,) = d.sm.protected()
    assert p.state is StopState.EXITING
    assert d.fill_order(exits[0], 1489.9) == [] and d.sm.protected() == ()
    assert d.status(bs, OrderStatus.CANCELLED) == []
    assert d.tick(1500.0 - s * 40.0) == []


@pytest.mark.parametrize("long", [True, False])
def test_gap_through_both_levels_when_the_backstop_fills_first_sends_no_market_exit(long: bool) -> None:
    d = Desk()
    bs = d.armed(long)
    gap = 1500.0 - (50.0 if long else -50.0)
    assert d.fill_order(bs, gap) == []
    assert d.tick(gap) == [] and d.tick(gap) == []
    assert d.status(bs, OrderStatus.COMPLETE, filled=10) == []
    assert d.sm.protected() == ()


@pytest.mark.parametrize("long", [True, False])
@pytest.mark.parametrize("fired", [True, False])
def test_a_tick_through_the_backstop_trigger_cancels_first_and_exits_only_what_the_backstop_left(
    long: bool, fired: bool
) -> None:
    d = Desk()
    bs = d.armed(long)
    gap = 1500.0 - (50.0 if long else -50.0)
    exits, cancels = only(d.tick(gap))  # the backstop has probably fired: no market exit yet
    assert exits == [] and [c.client_order_id for c in cancels] == [bs.client_order_id]
    assert d.tick(gap) == []
    if fired:  # the venue answers the cancel with COMPLETE; the fill may come before or after
        assert d.status(bs, OrderStatus.COMPLETE, filled=10) == []
        assert d.fill_order(bs, gap) == []
        assert d.sm.protected() == ()
    else:  # it had not fired: the cancel landed, so the market exit goes now
        (x,) = d.status(bs, OrderStatus.CANCELLED)
        assert isinstance(x, OrderIntent) and (x.qty, x.order_type, x.purpose) == (
            10,
            OrderType.MARKET,
            OrderPurpose.STOP_EXIT,
        )
        assert d.tick(gap) == []


def test_backstop_partly_filled_then_cancelled_leaves_an_exit_for_the_rest() -> None:
    d = Desk()
    bs = d.armed()
    assert only(d.tick(1480.0))[0] == []
    assert d.fill_order(bs, 1480.0, qty=4) == []
    (x,) = d.status(bs, OrderStatus.CANCELLED, filled=4)
    assert isinstance(x, OrderIntent) and x.qty == 6


def test_exit_first_off_always_cancels_before_the_market_exit() -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, exit_first=False))
    bs = d.armed()
    exits, cancels = only(d.tick(1490.0))
    assert exits == [] and len(cancels) == 1
    (x,) = d.status(bs, OrderStatus.CANCELLED)
    assert isinstance(x, OrderIntent) and x.qty == 10 and x.purpose is OrderPurpose.STOP_EXIT


def test_a_fill_already_through_the_stop_exits_at_once_without_a_backstop() -> None:
    d = Desk()
    d.enter("e1", BUY, 10, 1490.0)
    (x,) = d.fill("e1", BUY, 10, 1489.0)
    assert isinstance(x, OrderIntent) and (x.purpose, x.side, x.qty) == (OrderPurpose.STOP_EXIT, SELL, 10)


# ---------------------------------------------------------------------- growth and shrinking


def test_partial_entry_fills_grow_the_backstop_by_sequential_cancel_and_replace() -> None:
    d = Desk()
    d.enter("e1", BUY, 100, 1490.0)
    (b1,) = d.fill("e1", BUY, 40, 1500.0)
    assert isinstance(b1, OrderIntent) and b1.qty == 40
    assert [type(o) for o in d.fill("e1", BUY, 30, 1500.0)] == [CancelOrder]
    assert d.fill("e1", BUY, 30, 1501.0) == []  # a replacement is pending: changes coalesce
    assert d.sm.protected()[0].qty == 100
    (b2,) = d.status(b1, OrderStatus.CANCELLED)  # only now the replacement, never two live backstops
    assert isinstance(b2, OrderIntent) and (b2.qty, b2.trigger_price) == (100, b1.trigger_price)
    assert b2.client_order_id != b1.client_order_id and b2.client_order_id[:12] == b1.client_order_id[:12]
    exits, cancels = only(d.tick(1490.0))
    assert [x.qty for x in exits] == [100] and [c.client_order_id for c in cancels] == [b2.client_order_id]


def test_pyramiding_keeps_the_tighter_stop_and_takes_the_new_take_profit() -> None:
    d = Desk()
    bs = d.armed()
    d.enter("e2", BUY, 10, 1480.0, tp=1530.0)  # looser stop: ignored
    d.fill("e2", BUY, 10, 1505.0)
    (p,) = d.sm.protected()
    assert (p.qty, p.stop, p.take_profit) == (20, 1490.0, 1530.0)
    d.enter("e3", BUY, 10, 1495.0)  # tighter stop: taken
    d.fill("e3", BUY, 10, 1510.0)
    assert d.sm.protected()[0].stop == 1495.0
    (b2,) = d.status(bs, OrderStatus.CANCELLED)
    assert isinstance(b2, OrderIntent) and (b2.qty, b2.trigger_price) == (30, 1494.9)


def test_backstop_filling_while_a_grown_replacement_waits_exits_only_the_uncovered_qty() -> None:
    d = Desk()
    d.enter("e1", BUY, 100, 1490.0)
    (b1,) = d.fill("e1", BUY, 40, 1500.0)
    assert isinstance(b1, OrderIntent)
    d.fill("e1", BUY, 60, 1500.0)  # -> cancel b1, replacement pending
    assert d.fill_order(b1, 1480.0) == []  # the gap beat the cancel
    assert d.tick(1480.0) == []
    (x,) = d.status(b1, OrderStatus.COMPLETE, filled=40)
    assert isinstance(x, OrderIntent) and (x.qty, x.purpose, x.reason) == (60, OrderPurpose.STOP_EXIT, "uncovered")


def test_strategy_exit_fills_shrink_then_cancel_the_backstop() -> None:
    d = Desk()
    bs = d.armed(qty=100)
    (c,) = d.fill("x1", SELL, 40, 1505.0)  # the strategy's own exit, unknown to the manager
    assert isinstance(c, CancelOrder) and c.client_order_id == bs.client_order_id
    (b2,) = d.status(bs, OrderStatus.CANCELLED)
    assert isinstance(b2, OrderIntent) and b2.qty == 60
    d.status(b2, OrderStatus.TRIGGER_PENDING)
    (c2,) = d.fill("x2", SELL, 60, 1506.0)  # flat: cancel, nothing new
    assert isinstance(c2, CancelOrder) and c2.client_order_id == b2.client_order_id and c2.reason == "flat"
    assert d.sm.protected() == ()
    assert d.status(b2, OrderStatus.CANCELLED) == []
    assert d.tick(1400.0) == []


def test_a_reversing_entry_retires_the_long_and_arms_the_short_rest() -> None:
    d = Desk()
    bs = d.armed(qty=10)
    d.enter("e2", SELL, 25, 1520.0)
    out = d.fill("e2", SELL, 25, 1500.0)
    assert [type(o) for o in out] == [CancelOrder, OrderIntent]
    new = out[1]
    assert isinstance(new, OrderIntent) and (new.side, new.qty, new.trigger_price) == (BUY, 15, 1520.1)
    assert new.client_order_id[:12] != bs.client_order_id[:12]
    (p,) = d.sm.protected()
    assert (p.side, p.qty) == (SELL, 15)


def test_late_entry_fill_after_the_stop_is_exited_after_the_working_exit() -> None:
    d = Desk()
    d.enter("e1", BUY, 30, 1490.0)
    (bs,) = d.fill("e1", BUY, 10, 1500.0)
    assert isinstance(bs, OrderIntent)
    (x1, _cancel) = d.tick(1489.95)
    assert isinstance(x1, OrderIntent)
    assert d.fill("e1", BUY, 20, 1489.0) == []  # one exit at a time
    assert d.fill_order(x1, 1489.0) == []
    (x2,) = d.status(x1, OrderStatus.COMPLETE, filled=10)
    assert isinstance(x2, OrderIntent) and x2.qty == 20 and x2.client_order_id != x1.client_order_id


def test_several_strategies_on_one_instrument_each_get_their_exit() -> None:
    d = Desk()
    d.enter("a", BUY, 5, 1490.0, strategy="s1")
    d.enter("b", SELL, 3, 1489.95, strategy="s2")
    d.fill("a", BUY, 5, 1500.0, strategy="s1")
    d.fill("b", SELL, 3, 1480.0, strategy="s2")
    exits, cancels = only(d.tick(1490.0))  # touches both stops, neither backstop trigger
    assert sorted((x.strategy, x.side, x.qty) for x in exits) == [("s1", SELL, 5), ("s2", BUY, 3)]
    assert len(cancels) == 2


# ---------------------------------------------------------------------- take-profit and trailing


@pytest.mark.parametrize("long", [True, False])
def test_take_profit_exits_at_market_and_cancels_the_backstop(long: bool) -> None:
    d = Desk()
    s, side = (1, BUY) if long else (-1, SELL)
    d.enter("e1", side, 10, 1500.0 - s * 10, tp=1500.0 + s * 20)
    (bs,) = d.fill("e1", side, 10, 1500.0)
    assert d.tick(1500.0 + s * 19.95) == []
    exits, cancels = only(d.tick(1500.0 + s * 20.5))
    assert [(x.qty, x.reason) for x in exits] == [(10, "take_profit")] and len(cancels) == 1
    assert cancels[0].client_order_id == bs.client_order_id
    assert d.tick(1500.0 - s * 15) == []


def test_a_take_profit_on_the_wrong_side_of_the_stop_is_ignored() -> None:
    d = Desk()
    d.enter("e1", BUY, 10, 1490.0, tp=1480.0)
    d.fill("e1", BUY, 10, 1500.0)
    assert d.sm.protected()[0].take_profit is None


@pytest.mark.parametrize("long", [True, False])
def test_fixed_trail_moves_the_stop_every_tick_but_replaces_the_backstop_only_past_the_step(long: bool) -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, trail=TrailMode.FIXED,
                        trail_distance=10.0, trail_step_ticks=2, trail_step_bps=0.0))  # fmt: skip
    s = 1 if long else -1
    bs = d.armed(long)
    assert d.tick(1500.0 + s * 0.05) == []  # trigger would move one tick: below the step
    assert d.sm.protected()[0].stop == pytest.approx(1490.05 if long else 1509.95)
    (c,) = d.tick(1500.0 + s * 0.10)  # two ticks: replace
    assert isinstance(c, CancelOrder) and c.client_order_id == bs.client_order_id and c.reason == "replace"
    assert d.tick(1500.0 + s * 0.50) == []  # replacement pending: at most one replace per step
    assert d.tick(1500.0 - s * 5.0) == []  # adverse move: the stop never goes back
    assert d.sm.protected()[0].stop == pytest.approx(1490.50 if long else 1509.50)
    (b2,) = d.status(bs, OrderStatus.CANCELLED)
    assert isinstance(b2, OrderIntent) and b2.trigger_price == pytest.approx(1490.40 if long else 1509.60)
    exits, cancels = only(d.tick(1490.50 if long else 1509.50))
    assert [x.qty for x in exits] == [10] and [c.client_order_id for c in cancels] == [b2.client_order_id]


def test_risk_trail_follows_at_a_multiple_of_the_entry_risk() -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, trail=TrailMode.RISK, trail_r=0.5))
    d.armed()  # R = 10 -> trails 5 behind the best price
    d.tick(1503.0)
    assert d.sm.protected()[0].stop == pytest.approx(1498.0)
    d.tick(1501.0)
    assert d.sm.protected()[0].stop == pytest.approx(1498.0)
    d.tick(1520.0)
    assert d.sm.protected()[0].stop == pytest.approx(1515.0)


def test_breakeven_moves_the_stop_to_the_entry_once_after_one_r() -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, trail=TrailMode.BREAKEVEN,
                        breakeven_r=1.0, breakeven_ticks=1))  # fmt: skip
    bs = d.armed()
    assert d.tick(1509.95) == []
    (c,) = d.tick(1510.0)
    assert isinstance(c, CancelOrder) and d.sm.protected()[0].stop == pytest.approx(1500.05)
    assert d.tick(1530.0) == [] and d.sm.protected()[0].stop == pytest.approx(1500.05)  # once, not a trail
    (b2,) = d.status(bs, OrderStatus.CANCELLED)
    assert isinstance(b2, OrderIntent) and b2.trigger_price == pytest.approx(1499.95)
    exits, _ = only(d.tick(1500.05))
    assert [x.qty for x in exits] == [10]


# ---------------------------------------------------------------------- venue answers


def test_a_lost_backstop_is_replaced_with_a_new_id_a_bounded_number_of_times() -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, max_backstop_retries=3))
    bs = d.armed()  # acknowledged (TRIGGER_PENDING)
    ids = [bs.client_order_id]
    for status in (OrderStatus.CANCELLED, OrderStatus.REJECTED, OrderStatus.REJECTED):  # e.g. self-trade prevention
        (bs,) = d.status(bs, status)  # type: ignore[assignment]
        assert isinstance(bs, OrderIntent) and (bs.purpose, bs.qty, bs.trigger_price) == (OrderPurpose.STOP, 10, 1489.9)
        ids.append(bs.client_order_id)
        d.status(bs, OrderStatus.TRIGGER_PENDING)  # an acknowledgement does not reset the count: no loop
    assert d.sm.drain_alerts() == []
    assert d.status(bs, OrderStatus.CANCELLED) == []  # fourth loss: give up on the backstop
    assert d.status(bs, OrderStatus.CANCELLED) == []  # duplicate update: ignored
    assert len(set(ids)) == 4 and d.sm.protected()[0].backstop_id is None
    (alert,) = d.sm.drain_alerts()  # said once, not silently
    assert (alert.code, alert.strategy, alert.instrument) == ("BACKSTOP_FAILED", "s1", "NSE:INFY")
    assert d.sm.drain_alerts() == []
    (x,) = d.tick(1490.0)  # the local watch still protects: an exit, nothing to cancel
    assert isinstance(x, OrderIntent) and x.purpose is OrderPurpose.STOP_EXIT


def test_no_retries_means_one_backstop() -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, max_backstop_retries=0))
    bs = d.armed()
    assert d.status(bs, OrderStatus.REJECTED) == []


@pytest.mark.parametrize("status", [OrderStatus.REJECTED, OrderStatus.CANCELLED])
def test_a_rejected_exit_is_retried_with_a_new_id_then_the_arm_fails(status: OrderStatus) -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, max_exit_attempts=3))
    d.armed()
    (x1, _) = d.tick(1490.0)
    assert isinstance(x1, OrderIntent)
    ids = [x1.client_order_id]
    x = x1
    for _ in range(2):
        (x,) = d.status(x, status)  # type: ignore[assignment]
        assert isinstance(x, OrderIntent) and x.qty == 10 and x.purpose is OrderPurpose.STOP_EXIT
        ids.append(x.client_order_id)
    assert d.sm.drain_alerts() == []
    assert d.status(x, status) == []
    assert len(set(ids)) == 3 and d.sm.protected()[0].state is StopState.FAILED
    (alert,) = d.sm.drain_alerts()
    assert alert.code == "STOP_FAILED" and "10 still open" in alert.detail
    assert d.tick(1400.0) == []


def test_an_exit_partly_filled_then_cancelled_is_retried_for_the_rest_whatever_the_order_of_events() -> None:
    for fill_first in (True, False):
        d = Desk()
        d.armed()
        (x1, _) = d.tick(1490.0)
        assert isinstance(x1, OrderIntent)
        if fill_first:
            assert d.fill_order(x1, 1489.0, qty=3) == []
            (x2,) = d.status(x1, OrderStatus.CANCELLED, filled=3)
        else:
            (x2,) = d.status(x1, OrderStatus.CANCELLED, filled=3)
            assert d.fill_order(x1, 1489.0, qty=3) == []
        assert isinstance(x2, OrderIntent) and x2.qty == 7


def test_unknown_status_is_never_retried_blindly() -> None:
    d = Desk()
    d.armed()
    (x1, _) = d.tick(1490.0)
    assert isinstance(x1, OrderIntent)
    assert d.status(x1, OrderStatus.UNKNOWN) == []


def test_gtt_backstops_carry_a_limit_price_and_fall_back_to_sl_m_for_mis() -> None:
    cfg = StopConfig(backstop_type=OrderType.GTT, backstop_offset_ticks=2, backstop_offset_bps=0.0, backstop_limit_bps=50.0)
    d = Desk(cfg)
    d.enter("e1", BUY, 10, 1490.0, product=Product.NRML)
    (g,) = d.fill("e1", BUY, 10, 1500.0)
    assert isinstance(g, OrderIntent) and (g.order_type, g.product, g.trigger_price) == (OrderType.GTT, Product.NRML, 1489.9)
    assert g.price == pytest.approx(1482.45)  # 1489.90 - 0.5 % = 1482.4505, rounded down
    d.enter("e2", BUY, 10, 83.4, instrument=USDINR, product=Product.MIS)
    (m,) = d.fill("e2", BUY, 10, 83.5, instrument=USDINR)
    assert isinstance(m, OrderIntent) and m.order_type is OrderType.SL_M and m.price is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backstop_type": OrderType.MARKET},
        {"backstop_offset_ticks": 0, "backstop_offset_bps": 0.0},
        {"backstop_offset_ticks": -1},
        {"trail": TrailMode.FIXED},
        {"trail_r": 0.0},
        {"trail_step_bps": -1.0},
        {"max_exit_attempts": 0},
        {"max_backstop_retries": -1},
        {"dedup_window": 0},
    ],
)
def test_config_refuses_unsafe_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="expected"):
        StopConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- idempotence and restarts


def test_duplicate_fills_and_updates_change_nothing() -> None:
    d = Desk()
    d.enter("e1", BUY, 10, 1490.0)
    f = Fill(venue="paper", trade_id="T1", client_order_id="e1", venue_order_id="v", account="a1", strategy="s1",
             instrument=INFY, side=BUY, qty=10, price=1500.0, ts_event=1, ts_init=1)  # fmt: skip
    (bs,) = d.sm.on_fill(f)
    assert d.sm.on_fill(f) == [] and d.sm.protected()[0].qty == 10
    assert isinstance(bs, OrderIntent)
    assert [type(o) for o in d.fill("x1", SELL, 4, 1501.0)] == [CancelOrder]
    assert d.status(bs, OrderStatus.CANCELLED) and d.status(bs, OrderStatus.CANCELLED) == []


def test_the_dedup_window_is_bounded_and_forgets_the_oldest_trade() -> None:
    d = Desk(StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, dedup_window=2))
    fills = [Fill(venue="paper", trade_id=f"T{n}", client_order_id="u", venue_order_id="v", account="a1",
                  strategy="s9", instrument=INFY, side=BUY, qty=1, price=1.0, ts_event=n, ts_init=n)
             for n in range(3)]  # fmt: skip
    for f in fills:
        d.sm.on_fill(f)
    d.sm.on_fill(fills[0])  # forgotten: counted again
    d.sm.on_fill(fills[2])  # still in the window: ignored
    d.enter("e1", SELL, 4, 2.0, strategy="s9")
    (bs,) = d.fill("e1", SELL, 8, 1.5, strategy="s9")  # net +4 -> -4: only 4 open a short
    assert isinstance(bs, OrderIntent) and bs.qty == 4


def test_an_instrument_missing_from_the_master_uses_the_nse_tick() -> None:
    d = Desk()
    d.enter("e1", BUY, 1, 99.0, instrument="NSE:NEWLIST")
    (bs,) = d.fill("e1", BUY, 1, 100.0, instrument="NSE:NEWLIST")
    assert isinstance(bs, OrderIntent) and bs.trigger_price == 98.9


def test_ids_are_deterministic_short_and_distinct_per_arm() -> None:
    def run() -> list[str]:
        d = Desk()
        ids = []
        for _ in range(3):  # the same entry id re-opens a position: a new arm, new ids
            d.enter("e1", BUY, 10, 1490.0)
            (bs,) = d.fill("e1", BUY, 10, 1500.0)
            assert isinstance(bs, OrderIntent)
            d.status(bs, OrderStatus.TRIGGER_PENDING)
            (x, _c) = d.tick(1490.0)
            assert isinstance(x, OrderIntent)
            d.fill_order(x, 1489.0)
            d.status(x, OrderStatus.COMPLETE, filled=10)
            d.status(bs, OrderStatus.CANCELLED)
            ids += [bs.client_order_id, x.client_order_id]
        return ids

    ids = run()
    assert ids == run()
    assert len(set(ids)) == len(ids) and all(0 < len(i) <= MAX_CLIENT_ORDER_ID and i.isalnum() for i in ids)
    assert len({i[:12] for i in ids}) == 3


STEPS: list[Callable[[Desk], object]] = [
    lambda d: d.enter("e1", BUY, 101, 1490.0, tp=1530.0),
    lambda d: d.fill("e1", BUY, 40, 1500.0),
    lambda d: d.tick(1501.0),
    lambda d: d.fill("e1", BUY, 60, 1501.0),
    lambda d: d.enter("e9", SELL, 5, 83.6, instrument=USDINR),
    lambda d: d.fill("e9", SELL, 5, 83.5, instrument=USDINR),
    lambda d: d.tick(1512.0),
    lambda d: d.sm.on_order_update(OrderUpdate(  # the first backstop's cancel (replace after growth) lands
        client_order_id=d.sm.protected()[0].backstop_id or "-", venue="paper", venue_order_id="v", account="a1",
        instrument=INFY, side=SELL, status=OrderStatus.CANCELLED, qty=40, filled_qty=0, ts_event=5, ts_init=5)),
    lambda d: d.tick(1520.0),
    lambda d: d.fill("x1", SELL, 30, 1519.0),
    lambda d: d.tick(1505.0),
    lambda d: d.tick(1501.5),
    lambda d: d.tick(1480.0),
    lambda d: d.fill("e1", BUY, 1, 1480.0),  # a late entry fill while exiting
    lambda d: d.sm.protected(),
]  # fmt: skip


@pytest.mark.parametrize("split", range(len(STEPS) + 1))
def test_pickle_round_trip_mid_stream_gives_identical_subsequent_outputs(split: int) -> None:
    cfg = StopConfig(backstop_offset_ticks=2, backstop_offset_bps=0.0, trail=TrailMode.FIXED, trail_distance=8.0)
    straight, restored = Desk(cfg), Desk(cfg)
    want = [step(straight) for step in STEPS]
    got = [step(restored) for step in STEPS[:split]]
    restored = pickle.loads(pickle.dumps(restored))
    got += [step(restored) for step in STEPS[split:]]
    assert got == want
    assert any(want)  # the script does produce orders


# ---------------------------------------------------------------------- property: the manager against a venue

TICK = 0.05
STOPS = (OrderPurpose.STOP, OrderPurpose.STOP_EXIT)


def _crossed(o: OrderIntent, price: float) -> bool:
    assert o.trigger_price is not None
    return price <= o.trigger_price if o.side is SELL else price >= o.trigger_price


class StopsOnAVenue(RuleBasedStateMachine):
    """One strategy in INFY against a small venue: market orders fill at the last price, stop orders
    rest until the price crosses their trigger (and are refused if it already has), cancels are
    answered with the order's status. Entries, partial fills, strategy exits, rejections, duplicate
    events, restarts (pickle round trips) and price paths are drawn at random.

    Checked: never two backstops or two market exits working for one arm; no order for an arm whose
    backstop filled the whole position; the manager's orders never take the position through
    zero; protected qty <= the position; after the venue drained, the manager's backstops are exactly
    the ones resting at the venue and an armed position is protected in full."""

    config = StopConfig(backstop_offset_ticks=8, backstop_offset_bps=0.0)
    drain_before_tick = True  # the venue handles every request before the price moves again

    def __init__(self) -> None:
        super().__init__()
        self.sm = StopManager(INSTRUMENTS, self.config)
        self.price, self.now, self.pos, self.trades, self.entries = 1000.0, 0, 0, 0, 0
        self.queue: deque[VenueRequest] = deque()  # sent by the manager, not yet at the venue
        self.resting: dict[str, OrderIntent] = {}
        self.final: dict[str, tuple[OrderIntent, OrderStatus, int]] = {}
        self.pending: dict[str, tuple[OrderIntent, int]] = {}  # entries with qty still to fill
        self.reject_next = False
        self.fills: list[Fill] = []
        self.updates: list[OrderUpdate] = []
        self.closed_by_backstop: set[str] = set()

    # -------------------------------------------------------------- plumbing

    def _send(self, outs: Sequence[VenueRequest]) -> None:
        for o in outs:
            if isinstance(o, OrderIntent):
                arm = o.client_order_id[:12]
                assert o.purpose in STOPS and len(o.client_order_id) <= MAX_CLIENT_ORDER_ID
                assert not self._working(arm, o.purpose), f"two {o.purpose} working for one arm"
                assert arm not in self.closed_by_backstop, f"{o.purpose} after the backstop closed the position"
            self.queue.append(o)

    def _working(self, arm: str, purpose: OrderPurpose) -> bool:
        return any(
            isinstance(q, OrderIntent) and q.purpose is purpose and q.client_order_id[:12] == arm for q in self.queue
        ) or any(o.purpose is purpose and c[:12] == arm for c, o in self.resting.items())

    def _feed(self, events: list[Fill | OrderUpdate]) -> None:
        for e in events:
            if isinstance(e, Fill):
                self.fills.append(e)
                self._send(self.sm.on_fill(e))
            else:
                self.updates.append(e)
                self._send(self.sm.on_order_update(e))

    def _update(self, o: OrderIntent, status: OrderStatus, filled: int) -> OrderUpdate:
        if status.terminal:
            self.final[o.client_order_id] = (o, status, filled)
        self.now += 1
        return OrderUpdate(client_order_id=o.client_order_id, venue="sim", venue_order_id=o.client_order_id,
                           account="a1", instrument=INFY, side=o.side, status=status, qty=o.qty, filled_qty=filled,
                           ts_event=self.now, ts_init=self.now)  # fmt: skip

    def _execute(self, o: OrderIntent, qty: int) -> Fill:
        before = self.pos
        self.pos += qty if o.side is BUY else -qty
        if o.purpose in STOPS:
            assert before != 0 and self.pos * before >= 0, f"over-exit {before} -> {self.pos} by {o.client_order_id}"
        self.trades += 1
        self.now += 1
        return Fill(venue="sim", trade_id=f"T{self.trades}", client_order_id=o.client_order_id,
                    venue_order_id=o.client_order_id, account="a1", strategy="s1", instrument=INFY, side=o.side,
                    qty=qty, price=self.price, ts_event=self.now, ts_init=self.now)  # fmt: skip

    def _filled(self, o: OrderIntent, qty: int, done: bool, fill_first: bool) -> None:
        f = self._execute(o, qty)
        events: list[Fill | OrderUpdate] = [f]
        if done:
            u = self._update(o, OrderStatus.COMPLETE, o.qty)
            events = [f, u] if fill_first else [u, f]
        self._feed(events)

    def _deliver(self, fill_first: bool) -> None:
        o = self.queue.popleft()
        if isinstance(o, CancelOrder):
            live = self.resting.pop(o.client_order_id, None)
            if live is not None:
                self._feed([self._update(live, OrderStatus.CANCELLED, 0)])
            else:  # already terminal: answered with its status
                self._feed([self._update(*self.final[o.client_order_id])])
        elif self.reject_next:
            self.reject_next = False
            self._feed([self._update(o, OrderStatus.REJECTED, 0)])
        elif o.order_type is OrderType.MARKET:
            self._filled(o, o.qty, True, fill_first)
        elif _crossed(o, self.price):  # an exchange refuses a stop whose trigger the price has passed
            self._feed([self._update(o, OrderStatus.REJECTED, 0)])
        else:
            self.resting[o.client_order_id] = o
            self._feed([self._update(o, OrderStatus.TRIGGER_PENDING, 0)])

    def _drain(self, fill_first: bool) -> None:
        for _ in range(1000):
            if not self.queue:
                return
            self._deliver(fill_first)
        raise AssertionError("the manager keeps sending orders")

    def _trigger_resting(self, fill_first: bool) -> None:
        for coid, o in list(self.resting.items()):
            if _crossed(o, self.price):
                del self.resting[coid]
                if o.qty == abs(self.pos):
                    self.closed_by_backstop.add(coid[:12])
                self._filled(o, o.qty, True, fill_first)

    def _idle(self) -> bool:
        return not self.queue and not self.resting

    # -------------------------------------------------------------- rules

    @rule(path=st.lists(st.integers(-6, 6) | st.integers(-80, 80), min_size=1, max_size=8),
          venue_first=st.booleans(), fill_first=st.booleans())  # fmt: skip
    def move(self, path: list[int], venue_first: bool, fill_first: bool) -> None:
        for ticks in path:
            if self.drain_before_tick:
                self._drain(fill_first)
            self.price = max(100.0, round(self.price + ticks * TICK, 2))
            self.now += 1
            if venue_first:
                self._trigger_resting(fill_first)
            self._send(self.sm.on_price(INFY, self.price, self.now))
            if not venue_first:
                self._trigger_resting(fill_first)

    @precondition(lambda self: self.pos != 0 or self._idle())
    @rule(long=st.booleans(), qty=st.integers(1, 40), part=st.integers(1, 40), stop_ticks=st.integers(1, 30),
          tp_ticks=st.none() | st.integers(1, 60), fill_first=st.booleans())  # fmt: skip
    def enter(self, long: bool, qty: int, part: int, stop_ticks: int, tp_ticks: int | None, fill_first: bool) -> None:
        side = BUY if self.pos > 0 or (self.pos == 0 and long) else SELL
        s = 1 if side is BUY else -1
        self.entries += 1
        o = OrderIntent(client_order_id=f"E{self.entries}", account="a1", strategy="s1", instrument=INFY, side=side,
                        qty=qty, order_type=OrderType.MARKET, product=Product.MIS, ts_event=self.now,
                        ts_init=self.now, stop_loss=round(self.price - s * stop_ticks * TICK, 2),
                        take_profit=None if tp_ticks is None else round(self.price + s * tp_ticks * TICK, 2))  # fmt: skip
        self.sm.on_intent(o)
        part = min(part, qty)
        if part < qty:
            self.pending[o.client_order_id] = (o, qty - part)
        self._filled(o, part, part == qty, fill_first)

    @precondition(lambda self: bool(self.pending))
    @rule(fill_first=st.booleans())
    def entry_rest(self, fill_first: bool) -> None:
        coid, (o, rest) = next(iter(self.pending.items()))
        if (self.pos == 0 and not self._idle()) or self.pos * (1 if o.side is BUY else -1) < 0:
            return
        del self.pending[coid]
        self._filled(o, rest, True, fill_first)

    @precondition(lambda self: self.pos != 0 and not self.queue)
    @rule(frac=st.floats(0.05, 1.0), fill_first=st.booleans())
    def strategy_exit(self, frac: float, fill_first: bool) -> None:
        self.entries += 1
        o = OrderIntent(client_order_id=f"S{self.entries}", account="a1", strategy="s1", instrument=INFY,
                        side=SELL if self.pos > 0 else BUY, qty=max(1, round(abs(self.pos) * frac)),
                        order_type=OrderType.MARKET, product=Product.MIS, ts_event=self.now, ts_init=self.now,
                        purpose=OrderPurpose.EXIT)  # fmt: skip
        self.sm.on_intent(o)
        self._filled(o, o.qty, True, fill_first)
        self._drain(fill_first)  # the shrink window (rule 6) closes before the price moves

    @precondition(lambda self: bool(self.queue))
    @rule(fill_first=st.booleans())
    def deliver(self, fill_first: bool) -> None:
        self._deliver(fill_first)

    @rule()
    def reject_next_order(self) -> None:
        self.reject_next = True

    @rule()
    def restart(self) -> None:
        self.sm = pickle.loads(pickle.dumps(self.sm))

    @precondition(lambda self: bool(self.fills))
    @rule(i=st.integers(0, 10**6), update=st.booleans())
    def duplicate(self, i: int, update: bool) -> None:
        if update and self.updates:
            assert self.sm.on_order_update(self.updates[i % len(self.updates)]) == []
        else:
            assert self.sm.on_fill(self.fills[i % len(self.fills)]) == []

    @rule(fill_first=st.booleans())
    def settle(self, fill_first: bool) -> None:
        self.reject_next = False
        self._drain(fill_first)
        arms = self.sm.protected()
        assert {p.backstop_id for p in arms if p.backstop_id} == set(self.resting), "orphan or missing backstop"
        for p in arms:
            assert p.state is not StopState.EXITING, "an exit still pending with nothing in flight"
            if p.state is StopState.ARMED:
                assert p.qty == abs(self.pos)

    @invariant()
    def protected_qty_never_exceeds_the_position(self) -> None:
        arms = self.sm.protected()
        assert len(arms) <= 1
        for p in arms:
            assert p.qty <= abs(self.pos) and (p.qty == 0 or (p.side is BUY) == (self.pos > 0))


class CancelFirstOnAVenue(StopsOnAVenue):
    """exit_first off: prices may move while requests are still on their way, and no exit doubles."""

    config = StopConfig(backstop_offset_ticks=4, backstop_offset_bps=0.0, trail=TrailMode.BREAKEVEN, exit_first=False,
                        max_backstop_retries=2)  # fmt: skip
    drain_before_tick = False


class TrailingOnAVenue(StopsOnAVenue):
    config = StopConfig(backstop_offset_ticks=4, backstop_offset_bps=0.0, trail=TrailMode.FIXED, trail_distance=2.0,
                        trail_step_ticks=3, trail_step_bps=0.0, max_backstop_retries=2)  # fmt: skip


_PROPERTY = settings(max_examples=60, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
TestStopsOnAVenue = StopsOnAVenue.TestCase
TestStopsOnAVenue.settings = _PROPERTY
TestCancelFirstOnAVenue = CancelFirstOnAVenue.TestCase
TestCancelFirstOnAVenue.settings = _PROPERTY
TestTrailingOnAVenue = TrailingOnAVenue.TestCase
TestTrailingOnAVenue.settings = _PROPERTY
