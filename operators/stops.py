"""Layered stop-loss: a local market stop that fires first, a broker-side backstop behind it, one exit per position.

One :class:`StopManager` per account sees every entry intent, fill, order update and price of that
account, and answers with the orders to send (:class:`~schemas.orders.OrderIntent` or
:class:`~schemas.orders.CancelOrder`). It is a plain picklable object without clock or I/O: times
come from the inputs, so a replay from a recovery snapshot yields the same orders with the same ids.

Rules:

1. **Arming.** ``on_intent`` remembers ENTRY and MANUAL intents that carry a ``stop_loss``. A fill of
   such an intent opens or grows the *arm* (protected position) of its (strategy, instrument): long
   for BUY, short for SELL. The manager keeps the net position of every (strategy, instrument) from
   all fills; an arm's protected qty never exceeds it, so an opposite fill first shrinks the arm and
   only the rest opens a new one. A growing arm keeps the tighter of its stop and the new entry's
   stop, and takes the new entry's take-profit when one is given.
2. **Backstop.** An armed position has at most one broker-side stop order (purpose STOP; SL-M by
   default, SL or GTT with a limit ``backstop_limit_bps`` beyond the trigger; GTT falls back to SL-M
   for MIS, which GTT does not support) for the whole protected qty, in the entry's product. Its
   trigger lies beyond the watched stop by ``max(backstop_offset_ticks * tick, stop *
   backstop_offset_bps / 1e4)``, rounded to the tick away from the price: a long's SELL at
   ``floor_tick(stop - offset)``, a short's BUY at ``ceil_tick(stop + offset)``.
   Without a modify request a change is cancel-and-replace, done **in sequence**: the replacement
   is sent only when the venue reports the old order terminal, so two backstops are never live,
   and changes arriving meanwhile coalesce into one replacement. The backstop is replaced when the
   qty changes, or when the wanted trigger moved by at least ``max(trail_step_ticks * tick,
   trigger * trail_step_bps / 1e4)``. A backstop the venue rejects or cancels unasked is re-placed
   with a new id, at most ``max_backstop_retries`` times per arm (no reset on acknowledgement, so an
   exchange that keeps cancelling it cannot cause a loop); after that only the local watch protects.
3. **Trigger.** A price (a tick, or the fill price when arming) at or through the stop (long:
   ``ltp <= stop``) or the take-profit (long: ``ltp >= take_profit``) turns the arm EXITING; it never
   reacts to prices again. With no backstop working, a MARKET exit (purpose STOP_EXIT) for the
   protected qty goes out at once. If ``exit_first`` is set and the price has not reached the
   backstop's trigger, the exit and a cancel of the backstop go out together. Otherwise (the price is
   through the trigger, so the backstop has probably fired) only the cancel goes out, and the exit
   follows for whatever the venue's final answer shows the backstop did not fill.
4. **Backstop filled.** A fill (or a PARTIALLY_FILLED/COMPLETE update) of the backstop means the
   local watch missed, e.g. on a gap: the arm turns EXITING and no market exit is ever sent for the
   qty the backstop covers. Qty it never covered (the arm grew while a replacement was pending) is
   exited once the backstop is terminal.
5. **One exit at a time.** At most one STOP_EXIT per arm is working. Another is sent only after it is
   terminal and qty is left to exit (rejected, cancelled, partly filled, or the position grew
   meanwhile): ``need = protected qty - qty the arm's own orders took or will take beyond the fills
   seen``. After ``max_exit_attempts`` exits the arm is FAILED and sends nothing more.
6. **Other exits.** Fills of any other order that reduce the position (strategy exit, flatten, an
   external square-off) shrink the protected qty; at zero the backstop is cancelled and the arm
   retires. Its pending orders are still followed until terminal.
7. **Ids.** ``client_order_id = arm id + "B" (backstop) or "X" (exit) + attempt``; the arm id is 12
   base32 characters of ``blake2b(entry client_order_id | venue | trade_id)`` of the fill that opened
   the arm. At most 20 characters, unique per arm, purpose and attempt, equal on replay.
8. **At-least-once input.** Fills are deduplicated by ``(venue, trade_id)`` over the last
   ``dedup_window`` trades; updates of an order already terminal are ignored.

Trailing (``TrailMode``) moves the watched stop with every new best price, never backwards: FIXED
trails ``trail_distance`` behind the best price; RISK trails ``trail_r`` x R, where R is the distance
from the first fill to the entry's stop (a strategy that sets its stop at k x ATR trails by k x ATR);
BREAKEVEN moves the stop once to the entry average (+ ``breakeven_ticks``) when the price has gone
``breakeven_r`` x R beyond the first fill. The local stop moves on every tick; the backstop follows
by rule 2.

Residual risks, which need a broker feature rather than more logic: with ``exit_first`` a backstop
that triggers before its cancel lands doubles the exit; a backstop that has to shrink (rule 6)
covers more than the position until its replacement. Both windows last one cancel round trip.

>>> from schemas.market import Instrument, InstrumentType
>>> from schemas.orders import Fill, OrderIntent, OrderType, Product, Side
>>> infy = Instrument(instrument="NSE:INFY", instrument_token=408065, exchange_token=1594, tradingsymbol="INFY",
...                   name="INFOSYS", exchange="NSE", segment="NSE", instrument_type=InstrumentType.EQ,
...                   tick_size=0.05, lot_size=1)
>>> sm = StopManager({"NSE:INFY": infy}, StopConfig(backstop_offset_ticks=4, backstop_offset_bps=0.0))
>>> sm.on_intent(OrderIntent(client_order_id="e1", account="a1", strategy="s1", instrument="NSE:INFY",
...                          side=Side.BUY, qty=10, order_type=OrderType.MARKET, product=Product.MIS,
...                          ts_event=1, ts_init=1, stop_loss=1490.0))
>>> [(o.side, o.order_type, o.qty, o.trigger_price) for o in sm.on_fill(Fill(
...     venue="paper", trade_id="t1", client_order_id="e1", venue_order_id="v1", account="a1", strategy="s1",
...     instrument="NSE:INFY", side=Side.BUY, qty=10, price=1500.0, ts_event=2, ts_init=2))]
[(<Side.SELL: 'SELL'>, <OrderType.SL_M: 'SL-M'>, 10, 1489.8)]
>>> sm.on_price("NSE:INFY", 1495.0, now=3)
()
>>> [(type(o).__name__, getattr(o, "purpose", None)) for o in sm.on_price("NSE:INFY", 1489.95, now=4)]
[('OrderIntent', <OrderPurpose.STOP_EXIT: 'STOP_EXIT'>), ('CancelOrder', None)]
>>> sm.on_price("NSE:INFY", 1480.0, now=5)
()
"""

from __future__ import annotations

import base64
import enum
import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from schemas.market import Instrument
from schemas.orders import (
    CancelOrder,
    Fill,
    OrderIntent,
    OrderPurpose,
    OrderType,
    OrderUpdate,
    Product,
    Side,
    VenueRequest,
)
from schemas.risk import StopAlert

__all__ = ["ProtectedStop", "StopConfig", "StopManager", "StopState", "TrailMode"]

_NOTHING: tuple[VenueRequest, ...] = ()
_ARMING = frozenset({OrderPurpose.ENTRY, OrderPurpose.MANUAL})
_EPS = 1e-9
DEFAULT_TICK = 0.05  # NSE equity and F&O; used for an instrument missing from the master
_Ts = tuple[int, int]  # (ts_event, ts_init) for the orders an input produces


class TrailMode(enum.StrEnum):
    NONE = "none"
    FIXED = "fixed"  # trail_distance (price units) behind the best price
    RISK = "risk"  # trail_r x R behind the best price
    BREAKEVEN = "breakeven"  # stop to the entry once the price went breakeven_r x R in favour


class StopState(enum.StrEnum):
    ARMED = "ARMED"  # watching the price, backstop maintained
    EXITING = "EXITING"  # stop, take-profit or backstop hit: exiting, deaf to prices
    FAILED = "FAILED"  # max_exit_attempts used up with qty left: needs an operator


@dataclass(frozen=True, slots=True)
class StopConfig:
    """How the manager of one account protects positions (see the module docstring for the rules)."""

    backstop_type: OrderType = OrderType.SL_M
    backstop_offset_ticks: int = 1
    backstop_offset_bps: float = 10.0
    backstop_limit_bps: float = 50.0  # SL/GTT backstops only: limit price beyond the trigger
    trail: TrailMode = TrailMode.NONE
    trail_distance: float = 0.0  # FIXED
    trail_r: float = 1.0  # RISK
    breakeven_r: float = 1.0  # BREAKEVEN
    breakeven_ticks: int = 0  # BREAKEVEN: lock in this many ticks beyond the entry (costs)
    trail_step_ticks: int = 1
    trail_step_bps: float = 10.0
    exit_first: bool = True
    max_backstop_retries: int = 3
    max_exit_attempts: int = 3
    dedup_window: int = 8192

    def __post_init__(self) -> None:
        if self.backstop_type not in (OrderType.SL_M, OrderType.SL, OrderType.GTT):
            msg = f"backstop_type: expected SL-M, SL or GTT, got {self.backstop_type}"
            raise ValueError(msg)
        if self.backstop_offset_ticks < 0 or self.backstop_offset_bps < 0 or self.backstop_limit_bps < 0:
            msg = "backstop offsets and limit: expected >= 0"
            raise ValueError(msg)
        if self.backstop_offset_ticks == 0 and self.backstop_offset_bps == 0:
            msg = "backstop offset: expected ticks or bps > 0, so the local market exit fires first"
            raise ValueError(msg)
        if self.trail is TrailMode.FIXED and not self.trail_distance > 0:
            msg = f"trail_distance: expected > 0 for trail=fixed, got {self.trail_distance}"
            raise ValueError(msg)
        if not (self.trail_r > 0 and self.breakeven_r > 0):
            msg = f"trail_r, breakeven_r: expected > 0, got {self.trail_r}, {self.breakeven_r}"
            raise ValueError(msg)
        if self.trail_step_ticks < 0 or self.trail_step_bps < 0 or self.breakeven_ticks < 0:
            msg = "trail_step_ticks, trail_step_bps, breakeven_ticks: expected >= 0"
            raise ValueError(msg)
        if self.max_backstop_retries < 0 or self.max_exit_attempts < 1 or self.dedup_window < 1:
            msg = "max_backstop_retries: expected >= 0; max_exit_attempts, dedup_window: expected >= 1"
            raise ValueError(msg)


class ProtectedStop(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of one protected position, for the API and tests."""

    arm_id: str
    account: str
    strategy: str
    instrument: str
    side: Side  # BUY = long position
    qty: int
    stop: float
    take_profit: float | None
    state: StopState
    backstop_id: str | None
    backstop_trigger: float | None


def _round_away(price: float, tick: float, sign: int) -> float:
    """Round to the tick below (sign > 0: a long's sell stop) or above (sign < 0)."""
    n = price / tick
    k = math.floor(n + 1e-6) if sign > 0 else math.ceil(n - 1e-6)
    return round(k * tick, 8)


class _Entry:
    __slots__ = ("filled", "final", "product", "qty", "sign", "stop", "take_profit")

    def __init__(self, intent: OrderIntent, stop: float) -> None:
        self.sign = 1 if intent.side is Side.BUY else -1
        self.stop = stop
        tp = intent.take_profit
        self.take_profit = tp if tp is not None and self.sign * (tp - stop) > 0 else None
        self.product = intent.product
        self.qty = intent.qty
        self.filled = 0
        self.final: int | None = None  # filled_qty of the terminal update


class _Order:
    """One of the manager's own orders: a backstop or a market exit."""

    __slots__ = ("cancel_sent", "coid", "filled", "is_exit", "live", "qty", "seen", "trigger")

    def __init__(self, coid: str, is_exit: bool, qty: int, trigger: float) -> None:
        self.coid, self.is_exit, self.qty, self.trigger = coid, is_exit, qty, trigger
        self.live = True  # not yet reported terminal
        self.cancel_sent = False
        self.seen = 0  # qty of the fills seen
        self.filled = 0  # max(venue's filled_qty, seen)

    def committed(self) -> int:
        """Qty this order took or will still take from the position beyond the fills seen."""
        if self.live:
            return self.qty - self.seen if self.is_exit or self.filled else 0
        return self.filled - self.seen


class _Arm:
    __slots__ = ("account", "arm_id", "avg", "backstop", "be_at", "best", "bs_failures", "bs_given_up",
                 "entry_coid", "exits_sent", "fast", "instrument", "key", "orders", "product", "qty", "reason",
                 "seq", "sign", "state", "stop", "strategy", "take_profit", "tick", "trail")  # fmt: skip

    def __init__(self, fill: Fill, entry: _Entry, qty: int, tick: float, cfg: StopConfig) -> None:
        raw = f"{fill.client_order_id}|{fill.venue}|{fill.trade_id}".encode()
        self.arm_id = base64.b32encode(hashlib.blake2b(raw, digest_size=8).digest()).decode()[:12]
        self.account, self.strategy, self.instrument = fill.account, fill.strategy, fill.instrument
        self.key = (fill.strategy, fill.instrument)
        self.entry_coid, self.product, self.sign, self.tick = fill.client_order_id, entry.product, entry.sign, tick
        self.qty, self.avg, self.best = qty, fill.price, fill.price
        self.stop, self.take_profit = entry.stop, entry.take_profit
        risk = abs(fill.price - entry.stop)
        self.trail = 0.0
        self.be_at: float | None = None
        if cfg.trail is TrailMode.FIXED:
            self.trail = cfg.trail_distance
        elif cfg.trail is TrailMode.RISK:
            self.trail = cfg.trail_r * risk
        elif cfg.trail is TrailMode.BREAKEVEN and risk > 0:
            self.be_at = fill.price + self.sign * cfg.breakeven_r * risk
        self.state = StopState.ARMED
        self.bs_given_up = False
        self.fast = False  # exit allowed while the backstop's cancel is in flight
        self.reason = "stop_loss"
        self.backstop: _Order | None = None  # the one backstop that may be live
        self.orders: list[_Order] = []  # own orders not yet settled (live, or fills still due)
        self.seq = 0
        self.bs_failures = 0
        self.exits_sent = 0


class StopManager:
    """Layered stops of one account (see the module docstring)."""

    def __init__(self, instruments: Mapping[str, Instrument], config: StopConfig | None = None) -> None:
        self.config = config or StopConfig()
        self._ticks = {k: i.tick_size for k, i in instruments.items()}  # not the structs: smaller snapshots
        self._entries: dict[str, _Entry] = {}
        self._arms: dict[tuple[str, str], _Arm] = {}
        self._watch: dict[str, list[_Arm]] = {}  # instrument -> ARMED arms
        self._orders: dict[str, tuple[_Arm, _Order]] = {}
        self._pos: dict[tuple[str, str], int] = {}
        self._trades: OrderedDict[tuple[str, str], None] = OrderedDict()  # FIFO window of (venue, trade_id)
        self._alerts: list[StopAlert] = []  # protection lost, for an operator: see drain_alerts

    def drain_alerts(self) -> list[StopAlert]:
        """Positions whose protection failed since the last call: a FAILED arm (market exits used
        up with qty left) or a backstop that stopped being re-placed. Nothing is silent."""
        out, self._alerts = self._alerts, []
        return out

    # ------------------------------------------------------------------ inputs

    def on_intent(self, intent: OrderIntent) -> None:
        """Remember an entry's stop and take-profit until its fills arrive."""
        if intent.stop_loss is not None and intent.purpose in _ARMING:
            self._entries.setdefault(intent.client_order_id, _Entry(intent, intent.stop_loss))

    def watches(self, instrument: str) -> bool:
        """True while an armed stop watches ``instrument``'s price."""
        return instrument in self._watch

    def on_price(self, instrument: str, ltp: float, now: int) -> Sequence[VenueRequest]:
        """Orders a last traded price calls for; the shared empty tuple when nothing is armed."""
        arms = self._watch.get(instrument)
        if arms is None:
            return _NOTHING
        out: list[VenueRequest] | None = None
        for arm in reversed(arms):  # reversed: a triggered arm leaves the list
            s = arm.sign
            if s * (ltp - arm.stop) <= 0:
                got = self._trigger(arm, ltp, "stop_loss", (now, now))
            elif arm.take_profit is not None and s * (ltp - arm.take_profit) >= 0:
                got = self._trigger(arm, ltp, "take_profit", (now, now))
            elif s * (ltp - arm.best) > 0:
                got = self._favour(arm, ltp, (now, now))
            else:
                continue
            if got:
                out = got if out is None else out + got
        return _NOTHING if out is None else out

    def on_fill(self, fill: Fill) -> list[VenueRequest]:
        """Arm or grow on entry fills, shrink on other reducing fills, stand down on backstop fills."""
        tid = (fill.venue, fill.trade_id)
        if tid in self._trades:
            return []
        self._trades[tid] = None
        if len(self._trades) > self.config.dedup_window:
            self._trades.popitem(last=False)
        ts = (fill.ts_event, fill.ts_init)
        key = (fill.strategy, fill.instrument)
        pos = self._pos.get(key, 0) + (fill.qty if fill.side is Side.BUY else -fill.qty)
        if pos:
            self._pos[key] = pos
        else:
            self._pos.pop(key, None)

        touched: list[_Arm] = []
        mine = self._orders.get(fill.client_order_id)
        if mine is not None:
            own, order = mine
            order.seen += fill.qty
            order.filled = max(order.filled, order.seen)
            if not order.is_exit:
                self._hit(own)
            touched.append(own)
        arm = self._arms.get(key)
        if arm is not None:
            arm.qty = min(arm.qty, max(0, arm.sign * pos))
            if arm not in touched:
                touched.append(arm)
        out: list[VenueRequest] = []
        for a in touched:
            out += self._reconcile(a, ts)  # an arm the fill took to zero retires before a new one opens

        entry = self._entries.get(fill.client_order_id)
        if entry is not None:
            entry.filled += fill.qty
            if entry.filled >= (entry.qty if entry.final is None else min(entry.qty, entry.final)):
                del self._entries[fill.client_order_id]
            grow = min(fill.qty, max(0, entry.sign * pos))
            if grow > 0:
                out += self._grow(fill, entry, grow, ts)
        for a in touched:
            self._purge(a)
        return out

    def on_order_update(self, u: OrderUpdate) -> list[VenueRequest]:
        """Follow the manager's own orders: re-place, retry, replace after a cancel, stand down."""
        mine = self._orders.get(u.client_order_id)
        if mine is None:
            entry = self._entries.get(u.client_order_id)
            if entry is not None and u.status.terminal:
                entry.final = u.filled_qty
                if entry.filled >= u.filled_qty:
                    del self._entries[u.client_order_id]
            return []
        arm, order = mine
        if not order.live:
            return []  # duplicate or stale: the order is already terminal
        order.filled = max(order.filled, u.filled_qty)
        if not order.is_exit and order.filled:
            self._hit(arm)
        if u.status.terminal:
            order.live = False
            if order is arm.backstop:
                arm.backstop = None
                if not order.cancel_sent and not order.filled:
                    arm.bs_failures += 1  # rejected or cancelled unasked: re-placed by _reconcile, bounded
        out = self._reconcile(arm, (u.ts_event, u.ts_init))
        self._purge(arm)
        return out

    def protected(self) -> tuple[ProtectedStop, ...]:
        """Every position the manager protects or is exiting, in arming order."""
        return tuple(
            ProtectedStop(
                arm_id=a.arm_id,
                account=a.account,
                strategy=a.strategy,
                instrument=a.instrument,
                side=Side.BUY if a.sign > 0 else Side.SELL,
                qty=a.qty,
                stop=a.stop,
                take_profit=a.take_profit,
                state=a.state,
                backstop_id=a.backstop.coid if a.backstop else None,
                backstop_trigger=a.backstop.trigger if a.backstop else None,
            )
            for a in self._arms.values()
        )

    # ------------------------------------------------------------------ arm life cycle

    def _grow(self, fill: Fill, entry: _Entry, qty: int, ts: _Ts) -> list[VenueRequest]:
        key = (fill.strategy, fill.instrument)
        arm = self._arms.get(key)
        if arm is None:  # an opposite arm was taken to zero and retired just before
            tick = self._ticks.get(fill.instrument, DEFAULT_TICK)
            arm = self._arms[key] = _Arm(fill, entry, qty, tick, self.config)
            self._watch.setdefault(arm.instrument, []).append(arm)
        else:
            arm.avg = (arm.avg * arm.qty + fill.price * qty) / (arm.qty + qty)
            arm.qty += qty
            if arm.sign * (entry.stop - arm.stop) > 0:
                arm.stop = entry.stop
            if entry.take_profit is not None:
                arm.take_profit = entry.take_profit
        if arm.state is StopState.ARMED:
            s, px = arm.sign, fill.price
            if s * (px - arm.stop) <= 0:
                return self._trigger(arm, px, "stop_loss", ts)
            if arm.take_profit is not None and s * (px - arm.take_profit) >= 0:
                return self._trigger(arm, px, "take_profit", ts)
        return self._reconcile(arm, ts)

    def _trigger(self, arm: _Arm, ltp: float, reason: str, ts: _Ts) -> list[VenueRequest]:
        self._leave_watch(arm)
        arm.state, arm.reason = StopState.EXITING, reason
        bs = arm.backstop
        arm.fast = self.config.exit_first and (bs is None or arm.sign * (ltp - bs.trigger) > 0)
        return self._reconcile(arm, ts)

    def _hit(self, arm: _Arm) -> None:
        """The backstop fired: no market exit for what it covers (rule 4)."""
        if arm.state is StopState.ARMED:
            self._leave_watch(arm)
            arm.state, arm.reason, arm.fast = StopState.EXITING, "uncovered", False

    def _favour(self, arm: _Arm, ltp: float, ts: _Ts) -> list[VenueRequest]:
        arm.best = ltp
        s = arm.sign
        if arm.trail:
            new = ltp - s * arm.trail
        elif arm.be_at is not None and s * (ltp - arm.be_at) >= 0:
            new, arm.be_at = arm.avg + s * self.config.breakeven_ticks * arm.tick, None
        else:
            return []
        if s * (new - arm.stop) <= 0:
            return []
        arm.stop = new
        bs = arm.backstop
        if bs is None or bs.cancel_sent or not self._moved(arm, bs):
            return []
        return self._reconcile(arm, ts)

    def _reconcile(self, arm: _Arm, ts: _Ts) -> list[VenueRequest]:
        """Bring the arm's orders in line with its state: the single place orders are decided."""
        out: list[VenueRequest] = []
        bs = arm.backstop
        if arm.state is StopState.ARMED and arm.qty > 0:
            if bs is None:
                if arm.bs_failures <= self.config.max_backstop_retries:
                    out.append(self._place_backstop(arm, ts))
                elif not arm.bs_given_up:
                    arm.bs_given_up = True
                    self._alert(arm, "BACKSTOP_FAILED", f"backstop refused {arm.bs_failures} times; "
                                f"only the local price watch protects {arm.qty}", ts)  # fmt: skip
            elif not bs.cancel_sent and (bs.qty != arm.qty or self._moved(arm, bs)):
                out.append(self._cancel(arm, bs, "replace", ts))  # the replacement follows its CANCELLED
        else:
            if arm.state is StopState.EXITING:
                out += self._exit_if_due(arm, ts)
            if bs is not None and not bs.cancel_sent and not bs.filled:
                out.append(self._cancel(arm, bs, arm.reason if arm.qty else "flat", ts))
        if arm.qty == 0 and self._arms.get(arm.key) is arm:
            del self._arms[arm.key]
            self._leave_watch(arm)
        return out

    def _exit_if_due(self, arm: _Arm, ts: _Ts) -> list[VenueRequest]:
        if any(o.is_exit and o.live for o in arm.orders):
            return []  # one exit at a time
        if not arm.fast and arm.backstop is not None:
            return []  # wait for the backstop's final answer
        need = arm.qty - sum(o.committed() for o in arm.orders)
        if need <= 0:
            return []
        if arm.exits_sent >= self.config.max_exit_attempts:
            arm.state = StopState.FAILED
            self._alert(arm, "STOP_FAILED", f"{arm.exits_sent} stop exits sent, {need} still open", ts)
            return []
        arm.exits_sent += 1
        order = self._register(arm, "X", need, 0.0)
        return [self._intent(arm, order, OrderType.MARKET, OrderPurpose.STOP_EXIT, None, arm.reason, ts)]

    def _alert(self, arm: _Arm, code: str, detail: str, ts: _Ts) -> None:
        self._alerts.append(
            StopAlert(
                account=arm.account,
                strategy=arm.strategy,
                instrument=arm.instrument,
                code=code,
                detail=detail,
                ts_event=ts[0],
                ts_init=ts[1],
            )
        )

    def _place_backstop(self, arm: _Arm, ts: _Ts) -> OrderIntent:
        cfg, s, tick = self.config, arm.sign, arm.tick
        trigger = self._backstop_trigger(arm)
        otype = cfg.backstop_type
        if otype is OrderType.GTT and arm.product is Product.MIS:
            otype = OrderType.SL_M  # GTT is for CNC/NRML only
        price = None
        if otype is not OrderType.SL_M:
            price = _round_away(trigger - s * max(tick, trigger * cfg.backstop_limit_bps / 1e4), tick, s)
        order = arm.backstop = self._register(arm, "B", arm.qty, trigger)
        return self._intent(arm, order, otype, OrderPurpose.STOP, price, "backstop", ts)

    # ------------------------------------------------------------------ helpers

    def _backstop_trigger(self, arm: _Arm) -> float:
        cfg = self.config
        offset = max(cfg.backstop_offset_ticks * arm.tick, abs(arm.stop) * cfg.backstop_offset_bps / 1e4)
        return _round_away(arm.stop - arm.sign * offset, arm.tick, arm.sign)

    def _moved(self, arm: _Arm, bs: _Order) -> bool:
        cfg = self.config
        d = abs(self._backstop_trigger(arm) - bs.trigger)
        step = max(cfg.trail_step_ticks * arm.tick, bs.trigger * cfg.trail_step_bps / 1e4)
        return d > _EPS and d >= step - _EPS

    def _register(self, arm: _Arm, kind: str, qty: int, trigger: float) -> _Order:
        arm.seq += 1
        order = _Order(f"{arm.arm_id}{kind}{arm.seq}", kind == "X", qty, trigger)
        arm.orders.append(order)
        self._orders[order.coid] = (arm, order)
        return order

    def _intent(
        self,
        arm: _Arm,
        order: _Order,
        otype: OrderType,
        purpose: OrderPurpose,
        price: float | None,
        reason: str,
        ts: _Ts,
    ) -> OrderIntent:
        return OrderIntent(
            client_order_id=order.coid,
            account=arm.account,
            strategy=arm.strategy,
            instrument=arm.instrument,
            side=Side.SELL if arm.sign > 0 else Side.BUY,
            qty=order.qty,
            order_type=otype,
            product=arm.product,
            ts_event=ts[0],
            ts_init=ts[1],
            price=price,
            trigger_price=None if order.is_exit else order.trigger,
            signal_id=arm.entry_coid,
            reason=reason,
            purpose=purpose,
        )

    def _cancel(self, arm: _Arm, bs: _Order, reason: str, ts: _Ts) -> CancelOrder:
        bs.cancel_sent = True
        return CancelOrder(
            client_order_id=bs.coid,
            account=arm.account,
            instrument=arm.instrument,
            ts_event=ts[0],
            ts_init=ts[1],
            reason=reason,
        )

    def _leave_watch(self, arm: _Arm) -> None:
        arms = self._watch.get(arm.instrument)
        if arms is not None and arm in arms:
            arms.remove(arm)
            if not arms:
                del self._watch[arm.instrument]

    def _purge(self, arm: _Arm) -> None:
        """Forget orders that are terminal and whose fills have all been seen."""
        if any(not o.live and o.seen >= o.filled for o in arm.orders):
            keep = []
            for o in arm.orders:
                if o.live or o.seen < o.filled:
                    keep.append(o)
                else:
                    self._orders.pop(o.coid, None)
            arm.orders = keep
