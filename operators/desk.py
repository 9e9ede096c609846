"""The trading desk of one account: risk gate, stop-loss manager and (paper) simulated venue.

A :class:`TradingDesk` is what the live and backtest flows keep per account. It takes, in
the order each instrument produced them, the ticks of every instrument and the targets its
strategies decided, plus the account's control commands, and returns everything that
happened, in order:

* a **target** goes to the :class:`~operators.risk.RiskGate`, which answers with order
  intents (or a rejection); every intent is shown to the
  :class:`~operators.stops.StopManager` (entries arm a stop when they fill) and, in paper
  mode, submitted to the :class:`~operators.venue.SimVenue`;
* the venue's order updates and fills go back to the gate (positions, loss limits, flatten
  retries) and to the stop manager (backstops, exits), whose follow-up orders go through the
  gate again (:meth:`RiskGate.on_intent`: exits pass in every state, and are throttled) -
  until nothing is left to do. Nothing recurses: a work queue keeps the order stable;
* a **tick** first fills or triggers resting orders at the venue, then marks positions (loss
  limits, square-off, throttle queue) and then lets the stop manager watch the price;
* **commands**: ``Halt`` and ``Resume`` (kill switch), ``ManualOrder`` (through the same
  gate) and its ``CancelManualOrder`` / ``ModifyManualOrder`` (cancel-replace),
  ``ClosePosition`` (a flat target for one position), ``DisableStrategy(flatten=True)`` (a
  flat target for every open position of that strategy). Enable/disable/configure themselves
  are applied where the strategies run.

Everything is pure and deterministic: time comes in as ``now``; in replay it is the event
time of the input, live it is the wall clock. With ``venue=None`` (a live broker) the desk
only emits intents and cancels; the execution connector's updates and fills come back
through :meth:`on_venue_event`.

>>> from schemas.market import Instrument, InstrumentType, Tick
>>> from schemas.orders import TargetPosition
>>> infy = Instrument(instrument="NSE:INFY", instrument_token=1, exchange_token=1, tradingsymbol="INFY",
...                   name="INFOSYS", exchange="NSE", segment="NSE", instrument_type=InstrumentType.EQ,
...                   tick_size=0.05, lot_size=1)
>>> desk = TradingDesk("paper", {"NSE:INFY": infy}, venue=SimVenue({"NSE:INFY": infy}))
>>> t0 = 1_763_610_300 * 10**9 + 60 * 10**9  # 09:16 IST
>>> def tick(ts, px):
...     return Tick(instrument="NSE:INFY", ts_event=ts, ts_init=ts, seq=ts, ltp=px, last_qty=10, volume=ts,
...                 oi=0, bid=px, ask=px, bid_qty=1, ask_qty=1)
>>> out = []
>>> desk.on_ticks([tick(t0, 1500.0)], t0, out)
>>> target = TargetPosition(strategy="s1", account="paper", instrument="NSE:INFY", target_qty=10, ts_event=t0,
...                         ts_init=t0, signal_id="s1|NSE:INFY|1m|1", reason="demo", stop_loss=1490.0)
>>> desk.on_target(target, t0, out)
>>> [type(e).__name__ for e in out]
['OrderIntent', 'OrderUpdate', 'Fill', 'OrderUpdate', 'Position', 'OrderIntent', 'OrderUpdate']
>>> desk.gate.book.qty("s1", "NSE:INFY"), [s.qty for s in desk.stops.protected()]
(10, [10])
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from operators.risk import RiskConfig, RiskGate
from operators.stops import StopConfig, StopManager
from operators.venue import SimVenue
from schemas.control import CancelManualOrder, ClosePosition, DisableStrategy, Halt, ManualOrder, ModifyManualOrder, Resume
from schemas.market import Instrument, Tick
from schemas.orders import CancelOrder, Fill, OrderIntent, OrderPurpose, OrderUpdate, TargetPosition

_GATED = (OrderPurpose.ENTRY, OrderPurpose.MANUAL)


class TradingDesk:
    """Gate, stops and venue of one account (see the module docstring)."""

    # After :meth:`restore`: the newest event time on record. The catch-up after a restart
    # replays ticks the record already covers; acting on them would trigger stops and fill
    # orders at times before the events taken back, so they are passed over (the strategies
    # likewise only trade on new ticks). A class attribute, so older snapshots have it too.
    quiet_until = 0

    def __init__(
        self,
        account: str,
        instruments: Mapping[str, Instrument],
        *,
        risk: RiskConfig | None = None,
        stops: StopConfig | None = None,
        venue: SimVenue | None = None,
    ) -> None:
        self.account = account
        self.gate = RiskGate(account, instruments, risk)
        self.stops = StopManager(instruments, stops)
        self.venue = venue
        self.now = 0  # the desk's time never runs backwards (inputs of many instruments interleave)
        self._work: deque[Any] = deque()

    # ------------------------------------------------------------------ inputs

    def on_ticks(self, ticks: Iterable[Tick], now: int | None, out: list[Any]) -> None:
        """Consecutive ticks of one instrument. ``now=None``: each tick's event time (replay)."""
        for t in ticks:
            self.on_tick(t, now, out)

    def on_tick(self, t: Tick, now: int | None, out: list[Any]) -> None:
        """One tick: fill or trigger resting orders at the venue, mark positions, watch stops."""
        if t.ts_event <= self.quiet_until:
            return
        ts = t.ts_event if now is None else now
        if ts < self.now:  # noqa: PLR1730 (per tick: cheaper than max())
            ts = self.now
        self.now = ts
        venue = self.venue
        if venue is not None:
            events = venue.on_tick(t)
            if events:
                self._run(events, ts, out)
        follow = self.gate.on_price(t.instrument, t.ltp, ts)
        if follow:
            self._run(follow, ts, out)
        orders = self.stops.on_price(t.instrument, t.ltp, ts)
        if orders:
            self._run(orders, ts, out)

    def on_target(self, t: TargetPosition, now: int, out: list[Any]) -> None:
        now = self.now = max(now, self.now)
        self._run(self.gate.on_target(t, self.gate.book.last_price(t.instrument), now), now, out)

    def on_command(self, cmd: Any, now: int, out: list[Any]) -> None:
        now = self.now = max(now, self.now)
        gate = self.gate
        if type(cmd) is Halt:
            self._run(gate.halt(cmd, now), now, out)
        elif type(cmd) is Resume:
            self._run(gate.resume(cmd, now), now, out)
        elif type(cmd) is ManualOrder:
            self._run(gate.on_manual(cmd, self.gate.book.last_price(cmd.instrument), now), now, out)
        elif type(cmd) is CancelManualOrder:
            self._run(gate.cancel_manual(cmd, now), now, out)
        elif type(cmd) is ModifyManualOrder:
            inst = gate.manual_instrument(cmd.client_order_id)
            self._run(gate.modify_manual(cmd, gate.book.last_price(inst) if inst else None, now), now, out)
        elif type(cmd) is ClosePosition:
            self._run(gate.close_position(cmd, gate.book.last_price(cmd.instrument), now), now, out)
        elif type(cmd) is DisableStrategy and cmd.flatten:
            for p in gate.book.positions():
                if p.strategy == cmd.strategy and p.qty != 0:
                    flat = TargetPosition(
                        strategy=p.strategy,
                        account=self.account,
                        instrument=p.instrument,
                        target_qty=0,
                        ts_event=now,
                        ts_init=now,
                        signal_id=f"{cmd.command_id}|{p.instrument}",
                        reason=f"disabled with flatten by {cmd.issued_by}",
                    )
                    self._run(gate.on_target(flat, self.gate.book.last_price(p.instrument), now), now, out)

    def on_venue_event(self, ev: OrderUpdate | Fill, now: int, out: list[Any]) -> None:
        """An update or fill reported by an external venue (live broker)."""
        now = self.now = max(now, self.now)
        self._run((ev,), now, out)

    def on_timer(self, now: int, out: list[Any]) -> None:
        """Do the gate's timed work that is due (see :meth:`next_wake`)."""
        now = self.now = max(now, self.now)
        self._run(self.gate.release(now), now, out)

    def restore(self, published: Iterable[Any], now: int, out: list[Any]) -> int:
        """Take back what this desk already told the world but its state does not hold - after a
        restart from a snapshot older than its last outputs, or from nothing: the day's published
        intents, cancels, order updates and fills (each topic in log order). Positions, working
        orders and stops then agree with the record, so the catch-up neither loses a fill nor
        trades a signal twice (a target is a position, and the position is back). The venue takes
        back its orders too (a working one is worked from now on, a cancel asked for is done, a
        final update lost with the crash is stated again). Returns how
        many events were taken back; what they cause (positions, follow-up orders) goes to ``out``."""
        now = self.now = max(now, self.now)
        gate, stops, venue = self.gate, self.stops, self.venue
        self._run(gate.release(now), now, out)  # the gate is in today's session before it takes anything
        events = list(published)
        self.quiet_until = max(self.quiet_until, max((e.ts_event for e in events), default=0))
        finals = {e.client_order_id: e for e in events if type(e) is OrderUpdate and e.status.terminal}
        taken, adopted = 0, []
        for e in events:
            kind = type(e)
            if (kind is OrderIntent or kind is CancelOrder) and gate.adopt(e):
                taken += 1
                if kind is OrderIntent:
                    stops.on_intent(e)
                    adopted.append(e)
        for e in events:
            kind = type(e)
            if kind is Fill and not gate.book.has_fill(e):
                follow, stop_orders = gate.on_fill(e, now), stops.on_fill(e)
            elif kind is OrderUpdate and e.status.terminal and gate.unsettled(e.client_order_id):
                follow, stop_orders = gate.on_order_update(e, now), stops.on_order_update(e)
            else:
                continue
            taken += 1
            self._run(follow, now, out)
            self._stop_orders(stop_orders, now, self._work)
            self._run((), now, out)
            state = venue.absorb(e) if venue is not None else None
            if state is not None and state.status.terminal and state.client_order_id not in finals:
                self._run((state,), now, out)  # its fill was published, its final update was not
        if venue is not None:  # what the venue was asked but its state does not show
            fills: dict[str, list[Fill]] = {}
            for e in events:
                if type(e) is Fill:
                    fills.setdefault(e.client_order_id, []).append(e)
            for o in adopted:
                coid = o.client_order_id
                self._run(venue.take_back(o, fills.get(coid, []), finals.get(coid), now), now, out)
            for e in events:
                if type(e) is CancelOrder and e.client_order_id not in finals:
                    self._run(venue.cancel(e, now), now, out)
        return taken

    def watching(self, instrument: str) -> bool:
        """True when every tick of ``instrument`` matters here (a position, a working order or
        an armed stop); otherwise only its latest price does."""
        venue = self.venue
        return (
            self.gate.involves(instrument)
            or self.stops.watches(instrument)
            or (venue is not None and venue.has_working(instrument))
        )

    def next_wake(self) -> int | None:
        """When the gate next has timed work (throttle queue, square-off, a flatten at the open)."""
        return self.gate.next_due_at()

    # ------------------------------------------------------------------ routing

    def _run(self, items: Iterable[Any], now: int, out: list[Any]) -> None:
        work = self._work
        work.extend(items)
        gate, stops, venue = self.gate, self.stops, self.venue
        while work:
            ev = work.popleft()
            kind = type(ev)
            if kind is OrderIntent:
                out.append(ev)
                stops.on_intent(ev)
                if venue is not None:
                    work.extend(venue.submit(ev, now))
            elif kind is CancelOrder:
                out.append(ev)
                if venue is not None:
                    work.extend(venue.cancel(ev, now))
            elif kind is OrderUpdate:
                out.append(ev)
                work.extend(gate.on_order_update(ev, now))
                self._stop_orders(stops.on_order_update(ev), now, work)
            elif kind is Fill:
                out.append(ev)
                work.extend(gate.on_fill(ev, now))
                self._stop_orders(stops.on_fill(ev), now, work)
            else:  # Position, RiskRejected, TradingStateChanged
                out.append(ev)
        out.extend(stops.drain_alerts())

    def _stop_orders(self, orders: Iterable[Any], now: int, work: deque[Any]) -> None:
        """The stop manager's orders: cancels go straight out, intents through the gate."""
        for o in orders:
            if type(o) is OrderIntent and o.purpose not in _GATED:
                work.extend(self.gate.on_intent(o, now))
            else:
                work.append(o)
