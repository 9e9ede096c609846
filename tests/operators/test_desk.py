"""TradingDesk with the simulated venue: the operator's order commands end to end (gate → venue
→ gate), as the live flow applies them."""

from __future__ import annotations

import itertools
import pickle
from typing import Any

import msgspec

from operators.desk import TradingDesk
from operators.venue import SimVenue
from schemas.control import CancelManualOrder, ClosePosition, ManualOrder, ModifyManualOrder
from schemas.market import Tick
from schemas.orders import Fill, OrderIntent, OrderStatus, OrderType, OrderUpdate, Side
from schemas.risk import RiskRejected
from tests.stubs import instrument

SEC = 10**9
T0 = 1_763_613_000 * SEC  # 2025-11-20 10:00 IST
INFY = instrument("NSE:INFY")
_ids = itertools.count()


def desk() -> TradingDesk:
    d = TradingDesk("paper", {INFY.instrument: INFY}, venue=SimVenue({INFY.instrument: INFY}))
    d.on_ticks([tick(T0, 1500.0)], None, [])
    return d


def tick(ts: int, px: float) -> Tick:
    return Tick(instrument="NSE:INFY", ts_event=ts, ts_init=ts, seq=ts, ltp=px, last_qty=10, volume=ts, oi=0,
                bid=px - 0.05, ask=px + 0.05, bid_qty=100, ask_qty=100)  # fmt: skip


def cmd(kind: type, **kw: Any) -> Any:
    return kind(command_id=f"c{next(_ids)}", account="paper", issued_by="api", ts_event=T0, ts_init=T0, **kw)


def updates(out: list[Any]) -> list[tuple[str, OrderStatus]]:
    return [(u.client_order_id, u.status) for u in out if type(u) is OrderUpdate]


def test_a_resting_operator_order_is_modified_then_cancelled_at_the_venue() -> None:
    d, out = desk(), []
    d.on_command(cmd(ManualOrder, instrument="NSE:INFY", side=Side.BUY, qty=5, order_type=OrderType.LIMIT,
                     price=1490.0), T0, out)  # fmt: skip
    [first] = [o for o in out if type(o) is OrderIntent]
    assert updates(out) == [(first.client_order_id, OrderStatus.OPEN)]  # rests below the market

    out.clear()
    d.on_command(cmd(ModifyManualOrder, client_order_id=first.client_order_id, price=1495.0, qty=8), T0, out)
    [second] = [o for o in out if type(o) is OrderIntent]
    assert (second.price, second.qty) == (1495.0, 8)
    assert updates(out) == [(first.client_order_id, OrderStatus.CANCELLED), (second.client_order_id, OrderStatus.OPEN)]

    out.clear()
    d.on_command(cmd(CancelManualOrder, client_order_id=second.client_order_id), T0, out)
    assert updates(out) == [(second.client_order_id, OrderStatus.CANCELLED)]
    out.clear()
    d.on_ticks([tick(T0 + SEC, 1480.0)], None, out)  # the market trades through both old prices: nothing fills
    assert not [f for f in out if type(f) is Fill]
    assert not d.watching("NSE:INFY")


def test_close_position_exits_at_the_market_and_refuses_when_flat() -> None:
    d, out = desk(), []
    d.on_command(cmd(ManualOrder, instrument="NSE:INFY", side=Side.BUY, qty=5, order_type=OrderType.MARKET), T0, out)
    assert d.gate.book.qty("manual", "NSE:INFY") == 5
    out.clear()
    d.on_command(cmd(ClosePosition, strategy="manual", instrument="NSE:INFY"), T0, out)
    assert [(f.side, f.qty) for f in out if type(f) is Fill] == [(Side.SELL, 5)]
    assert d.gate.book.qty("manual", "NSE:INFY") == 0
    out.clear()
    d.on_command(cmd(ClosePosition, strategy="manual", instrument="NSE:INFY"), T0, out)
    assert [(r.reason_code, r.strategy) for r in out if type(r) is RiskRejected] == [("EXCEEDS_POSITION", "manual")]


def _target(qty: int, n: int, ts: int) -> Any:
    from schemas.orders import TargetPosition

    return TargetPosition(strategy="s1", account="paper", instrument="NSE:INFY", target_qty=qty, ts_event=ts,
                          ts_init=ts, signal_id=f"s1|{n}", stop_loss=1400.0 if qty > 0 else None)  # fmt: skip


def test_restore_takes_back_what_was_published_after_the_snapshot() -> None:
    """A restart from a snapshot older than the last outputs: the published intents and fills
    come back into the state; re-deciding the same signal trades nothing; positions agree."""
    d, published = desk(), []
    d.on_target(_target(10, 1, T0), T0, published)
    snapshot, mark = pickle.dumps(d), len(published)
    d.on_ticks([tick(T0 + SEC, 1501.0)], None, published)
    d.on_target(_target(25, 2, T0 + 2 * SEC), T0 + 2 * SEC, published)  # published, then the crash
    after_snapshot = published[mark:]
    assert d.gate.book.qty("s1", "NSE:INFY") == 25

    restored: TradingDesk = pickle.loads(snapshot)
    assert restored.gate.book.qty("s1", "NSE:INFY") == 10
    out: list[Any] = []
    taken = restored.restore(published, T0 + 3 * SEC, out)  # everything of the day: known parts are skipped
    # the entry, its fill, and the backstop grown from 10 to 25 (cancel and re-place)
    assert [type(e).__name__ for e in after_snapshot if type(e) is not OrderUpdate] == [
        "OrderIntent", "Fill", "Position", "CancelOrder", "OrderIntent"]  # fmt: skip
    assert taken == 5  # the two intents, the cancel, the entry's fill and its COMPLETE (the old backstop is cancelled again)
    assert restored.gate.book.qty("s1", "NSE:INFY") == 25
    assert [s.qty for s in restored.stops.protected()] == [s.qty for s in d.stops.protected()] == [25]
    assert [u.client_order_id for u in restored.venue.working()] == [u.client_order_id for u in d.venue.working()]
    assert not [e for e in out if type(e) in (OrderIntent, Fill, RiskRejected)]  # nothing new, nothing refused
    assert restored.restore(published, T0 + 3 * SEC, []) == 0  # idempotent
    again: list[Any] = []
    restored.on_target(_target(25, 2, T0 + 2 * SEC), T0 + 3 * SEC, again)  # the catch-up re-decides the signal
    assert not [e for e in again if type(e) in (OrderIntent, Fill)]
    restored.on_ticks([tick(T0 + 4 * SEC, 1502.0)], None, again)
    assert not [e for e in again if type(e) is Fill]  # the venue does not fill the taken-back order again


def test_restore_hands_an_unfinished_order_to_the_venue() -> None:
    d, published = desk(), []
    snapshot = pickle.dumps(d)
    d.on_command(cmd(ManualOrder, instrument="NSE:INFY", side=Side.BUY, qty=5, order_type=OrderType.LIMIT,
                     price=1490.0), T0, published)  # fmt: skip
    restored: TradingDesk = pickle.loads(snapshot)
    out: list[Any] = []
    assert restored.restore(published, T0, out) == 1
    assert updates(out) == [(published[0].client_order_id, OrderStatus.OPEN)]  # resting at the venue again
    restored.on_ticks([tick(T0 + SEC, 1489.0)], None, out)
    assert [(f.client_order_id, f.qty) for f in out if type(f) is Fill] == [(published[0].client_order_id, 5)]


def test_restore_completes_an_order_whose_final_update_was_lost() -> None:
    d, published = desk(), []
    d.on_command(cmd(ManualOrder, instrument="NSE:INFY", side=Side.BUY, qty=5, order_type=OrderType.LIMIT,
                     price=1490.0), T0, published)  # fmt: skip
    snapshot = pickle.dumps(d)
    d.on_ticks([tick(T0 + SEC, 1489.0)], None, published)
    coid = published[0].client_order_id
    assert updates(published)[-1] == (coid, OrderStatus.COMPLETE)
    lost = [e for e in published if not (type(e) is OrderUpdate and e.status is OrderStatus.COMPLETE)]
    restored: TradingDesk = pickle.loads(snapshot)
    out: list[Any] = []
    restored.restore(lost, T0 + 2 * SEC, out)
    assert updates(out) == [(coid, OrderStatus.COMPLETE)]
    assert restored.gate.book.qty("manual", "NSE:INFY") == 5 and not restored.venue.has_working("NSE:INFY")
    out.clear()
    restored.on_ticks([tick(T0 + 3 * SEC, 1488.0)], None, out)
    assert not [f for f in out if type(f) is Fill]


def test_after_a_restore_ticks_the_record_already_covers_are_passed_over() -> None:
    """The restart resumes from a snapshot behind the record, and the catch-up replays ticks the
    record covers. Acting on them would trigger a taken-back order before it existed and stamp
    its events older than the record; only ticks after the record's newest event count."""
    d, published = desk(), []
    snapshot = pickle.dumps(d)
    d.on_ticks([tick(T0 + 10 * SEC, 1500.0)], None, published)
    order = cmd(ManualOrder, instrument="NSE:INFY", side=Side.BUY, qty=5, order_type=OrderType.SL_M, trigger_price=1510.0)
    d.on_command(msgspec.structs.replace(order, ts_event=T0 + 10 * SEC, ts_init=T0 + 10 * SEC), T0 + 10 * SEC, published)
    intent = next(e for e in published if type(e) is OrderIntent)
    restored: TradingDesk = pickle.loads(snapshot)
    out: list[Any] = []
    restored.restore(published, T0 + SEC, out)  # the catch-up is at T0 + 1 s
    out.clear()
    restored.on_ticks([tick(T0 + 2 * SEC, 1515.0)], None, out)  # through the trigger, but before the order existed
    assert out == []
    restored.on_ticks([tick(T0 + 11 * SEC, 1515.0)], None, out)
    fills = [f for f in out if type(f) is Fill]
    assert [(f.client_order_id, f.qty) for f in fills] == [(intent.client_order_id, 5)]
    assert all(e.ts_event >= intent.ts_event for e in out if type(e) in (Fill, OrderUpdate))
