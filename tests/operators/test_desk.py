"""TradingDesk with the simulated venue: the operator's order commands end to end (gate → venue
→ gate), as the live flow applies them."""

from __future__ import annotations

import itertools
from typing import Any

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
