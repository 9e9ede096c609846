"""The pre-trade risk gate of one account: targets to orders, checks, throttle, kill switch.

A :class:`RiskGate` is pure and deterministic: time comes in as ``now`` (UTC epoch ns, IST
sessions), never from a clock; it is picklable and two gates fed the same calls return the
same outputs. Every signal becomes :class:`~schemas.orders.OrderIntent` s or a
:class:`~schemas.risk.RiskRejected` with a :class:`Reason` code. Rules, exactly:

**Targets to orders.** ``expected = position + Σ signed remaining qty of the strategy's
working orders in that instrument`` (broker-side ``STOP`` orders excluded: they are
contingent). The target is rounded toward zero to whole lots (never more risk than asked; a
non-zero target below one lot is refused, ``LOT_SIZE``). Going from ``expected`` to the target
is an **EXIT** leg when ``|position|`` shrinks and an **ENTRY** leg when it grows; a flip
(long → short) is an EXIT of ``|expected|`` plus an ENTRY of ``|target|``. An exit never
exceeds what is held once the working exits are done; the rest of a reduction withdraws the
strategy's working entries on that side (CancelOrder, or ``SUPERSEDED`` while queued), so no
"exit" can open a position. Each leg is split into orders of at most the instrument's
``freeze_qty`` (whole lots). Orders are MARKET, ``RiskConfig.product`` (MIS), entries carry
the signal's ``stop_loss``/``take_profit``. Because the difference is taken against position
*and* working orders, a repeated target adds nothing; a replayed signal (same ``signal_id``,
same content) is dropped silently and counted in ``duplicates``; the same ``signal_id`` with
different content is ``DUPLICATE``.

**client_order_id** = 2-letter kind + 16 base32 chars of BLAKE2b over the account and the
order's origin (18 characters, under Kite's 20): ``TG`` (signal_id, leg), ``MN`` (command_id,
leg), ``FL`` (flatten scope - its kind, number and start time -, strategy, instrument,
attempt, leg), ``SX`` (a split stop-loss-manager intent). Replays give the same ids; every leg
and attempt gets its own.

**Checks, in order.** Signal level (exits too): ``DUPLICATE``, ``STALE_SIGNAL`` (``now -
ts_event > max_signal_age_ns``), ``UNKNOWN_INSTRUMENT`` (not in the master, or an index),
``MARKET_CLOSED`` (outside 09:15-15:30 IST), ``LOT_SIZE``. Entry legs only: ``HALTED``,
``DAILY_LOSS_LIMIT`` (account day PnL at or below ``-daily_loss_limit``), ``REDUCING``,
``STRATEGY_LOSS_LIMIT`` (strategy stopped for the day), ``SQUARE_OFF`` (at or after 15:15
IST), ``NO_PRICE`` (LTP missing, not finite or ≤ 0), ``MISSING_STOP_LOSS`` (no stop, or not
below a buy / above a sell), ``POSITION_SIZE`` (sizing leaves less than a lot),
``MAX_ORDER_QTY`` and ``MAX_ORDER_VALUE`` (the whole leg, before freeze splitting),
``PRICE_COLLAR`` (LIMIT/SL price and trigger within ``max(pct·LTP, abs)`` of LTP; manual
orders, which are also collared when they reduce), ``MAX_OPEN_POSITIONS``,
``STRATEGY_EXPOSURE``, ``PORTFOLIO_EXPOSURE`` (gross ``|expected qty| × price`` after the
order, working orders included). Then per order: ``DUPLICATE`` (id already issued today) and
``RATE_LIMIT``. **Exits skip every entry check** - they pass while REDUCING or HALTED, after
square-off and over any exposure or loss limit - and are never rejected by the throttle.

**Manual and outside orders.** :meth:`on_manual` books operator orders under the strategy
``manual``; it is idempotent by ``command_id`` and stale-checked like a signal. Its qty must
be a whole number of lots (``LOT_SIZE``, never rounded). An order that reduces the manual book
without flipping it acts as an exit (no entry checks, still collared); any other gets the
entry checks but the stop-loss and sizing ones. :meth:`on_intent` takes the stop-loss
manager's EXIT, STOP and STOP_EXIT orders (anything else is ``UNSUPPORTED``) so that the
throttle and the working-order book see every order of the account.

**Throttle.** Every order and cancel the gate emits goes through sliding windows of
``orders_per_second`` per second and ``orders_per_minute`` per minute (a sliding window,
not a token bucket: a bucket of burst *B* admits *B + rate* orders in some 1-second window,
which breaks invariant I5). What does not fit waits in a queue drained by :meth:`release`
at :meth:`next_release_at`: cancels first, then exits, then entries, FIFO within each.
Entries wait at most ``max_queue_delay_ns`` and at most ``max_queue`` of them queue, past
either they are ``RATE_LIMIT``; past ``orders_per_day`` orders, new entries are too.

**Sizing** (cap, never raise): with ``risk_per_trade`` (₹) or ``risk_per_trade_pct`` (of
``capital``) set, an entry's position is capped at :func:`position_size` - ``budget × scale /
per-unit risk`` rounded down to lots, per-unit risk ``atr × atr_multiple`` when ``atr`` is
given else ``|price - stop_loss|`` - with ``scale = max(min_size_scale, loss_streak_scale **
losing round trips in a row × (drawdown_scale if the account is drawdown_scale_at × capital
below its intraday PnL peak))``. The strategy's qty is the upper bound; the intent's reason
says when it was cut.

**States and flattening.** ACTIVE → REDUCING when the account day PnL reaches
``-daily_loss_limit`` (or on :meth:`reduce`): entries are refused, exits pass, nothing is
flattened. → HALTED at ``-daily_loss_halt``, on an overfill, or on a :class:`Halt` command:
queued entries are refused (``HALTED``), every working non-exit order (entries, manual and
broker-side STOP orders, whose backstop would reverse the position once the flatten fills)
gets a :class:`CancelOrder`, and every position gets EXIT market orders. Only :meth:`resume`
returns to ACTIVE. Loss limits are evaluated on every price of a held instrument, every fill
and every target, so a limit still breached after a resume (realized losses stay) trips again
at the next of those; raise the limit to trade on. A strategy at ``-strategy_loss_limit`` day
PnL is stopped until the next IST day: its entries are refused, its working non-exits
cancelled and its positions flattened. At 15:15 IST every MIS position is flattened the same
way. A flatten is **kept**: a late fill re-flattens, a rejected or cancelled exit is re-issued
for the remainder with the next attempt number (at most ``max_flatten_attempts`` failures,
then ``FLATTEN_FAILED`` is reported); a flatten due outside market hours waits for the open.
Halt and resume are idempotent by ``command_id``; a resume older than ``max_signal_age_ns`` is
refused (``STALE_SIGNAL``).

**Days.** At the first event of a new IST day the book starts a new day, and the dedup sets,
strategy stops, square-off and order counter reset; the trading state does not.
Timed work (square-off, a flatten waiting for the open, the throttle queue) runs in whichever
call comes first at or after its time; a flow without ticks calls :meth:`release` at
:meth:`next_due_at`.

>>> from schemas.market import Instrument, InstrumentType
>>> from schemas.orders import TargetPosition
>>> inst = Instrument(instrument="NSE:INFY", instrument_token=1, exchange_token=1, tradingsymbol="INFY",
...                   name="INFY", exchange="NSE", segment="NSE", instrument_type=InstrumentType.EQ,
...                   tick_size=0.05, lot_size=1)
>>> gate = RiskGate("acc", {"NSE:INFY": inst})
>>> now = 1_763_613_000 * 10**9  # 2025-11-20 10:00 IST
>>> t = TargetPosition(strategy="s1", account="acc", instrument="NSE:INFY", target_qty=10, ts_event=now,
...                    ts_init=now, signal_id="s1|NSE:INFY|5m|1", stop_loss=1480.0)
>>> [entry] = gate.on_target(t, 1500.0, now)
>>> (entry.side, entry.qty, entry.purpose, entry.stop_loss, len(entry.client_order_id))
(<Side.BUY: 'BUY'>, 10, <OrderPurpose.ENTRY: 'ENTRY'>, 1480.0, 18)
>>> gate.on_target(t, 1500.0, now)  # the same signal again: nothing
[]
>>> from schemas.orders import Fill
>>> f = Fill(venue="sim", trade_id="T1", client_order_id=entry.client_order_id, venue_order_id="V1", account="acc",
...          strategy="s1", instrument="NSE:INFY", side=entry.side, qty=10, price=1500.0, ts_event=now, ts_init=now)
>>> [(p.qty, p.avg_price) for p in gate.on_fill(f)]
[(10, 1500.0)]
>>> t2 = msgspec.structs.replace(t, target_qty=-5, signal_id="s1|NSE:INFY|5m|2", stop_loss=1520.0)
>>> [(o.side, o.qty, o.purpose) for o in gate.on_target(t2, 1500.0, now)]  # flip: exit, then entry
[(<Side.SELL: 'SELL'>, 10, <OrderPurpose.EXIT: 'EXIT'>), (<Side.SELL: 'SELL'>, 5, <OrderPurpose.ENTRY: 'ENTRY'>)]
"""

from __future__ import annotations

import base64
import enum
import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from operators.candles import DAY_NS, IST_OFFSET_NS, SESSION_CLOSE_NS, SESSION_OPEN_NS
from operators.portfolio import Key, PositionBook
from schemas.control import CancelManualOrder, ClosePosition, Halt, ManualOrder, ModifyManualOrder, Resume
from schemas.market import Instrument
from schemas.orders import (
    CancelOrder,
    Fill,
    OrderIntent,
    OrderPurpose,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Position,
    Product,
    Side,
    TargetPosition,
)
from schemas.risk import RiskRejected, TradingState, TradingStateChanged

_S = 10**9
MANUAL_STRATEGY = "manual"  # book key of operator orders

RiskOutput = OrderIntent | CancelOrder | RiskRejected | TradingStateChanged | Position


class Reason(enum.StrEnum):
    """Stable reason codes of :class:`~schemas.risk.RiskRejected` (and state-change causes)."""

    MAX_ORDER_QTY = "MAX_ORDER_QTY"
    MAX_ORDER_VALUE = "MAX_ORDER_VALUE"
    PRICE_COLLAR = "PRICE_COLLAR"
    NO_PRICE = "NO_PRICE"
    STRATEGY_EXPOSURE = "STRATEGY_EXPOSURE"
    PORTFOLIO_EXPOSURE = "PORTFOLIO_EXPOSURE"
    MAX_OPEN_POSITIONS = "MAX_OPEN_POSITIONS"
    STRATEGY_LOSS_LIMIT = "STRATEGY_LOSS_LIMIT"
    DAILY_LOSS_LIMIT = "DAILY_LOSS_LIMIT"
    RATE_LIMIT = "RATE_LIMIT"
    DUPLICATE = "DUPLICATE"
    STALE_SIGNAL = "STALE_SIGNAL"
    MARKET_CLOSED = "MARKET_CLOSED"
    SQUARE_OFF = "SQUARE_OFF"
    MISSING_STOP_LOSS = "MISSING_STOP_LOSS"
    REDUCING = "REDUCING"
    HALTED = "HALTED"
    UNKNOWN_INSTRUMENT = "UNKNOWN_INSTRUMENT"
    LOT_SIZE = "LOT_SIZE"
    POSITION_SIZE = "POSITION_SIZE"  # risk-based sizing leaves less than one lot
    EXCEEDS_POSITION = "EXCEEDS_POSITION"  # a reducing intent with nothing left to reduce
    UNSUPPORTED = "UNSUPPORTED"  # on_intent only takes EXIT / STOP / STOP_EXIT
    SUPERSEDED = "SUPERSEDED"  # a queued entry withdrawn because a newer target wants less
    FLATTEN_FAILED = "FLATTEN_FAILED"  # max_flatten_attempts exits rejected or cancelled
    OVERFILL = "OVERFILL"  # a fill beyond the order's qty (state-change cause)
    ORDER_NOT_WORKING = "ORDER_NOT_WORKING"  # cancel/modify of an order that is not a working operator order
    OPERATOR_CANCEL = "OPERATOR_CANCEL"  # a queued operator order withdrawn before it was sent


class RiskConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of one account; ₹ amounts are rupees, ``None`` switches a limit off."""

    capital: float = 500_000.0  # base of risk_per_trade_pct and of the drawdown rule
    max_order_qty: int = 5_000  # units per entry leg, before freeze splitting (fat finger)
    max_order_value: float = 200_000.0  # ₹ notional per entry leg (R4: ₹2 L)
    price_collar_pct: float = 0.03  # LIMIT/SL prices within ±3 % of LTP (R5, equity) ...
    price_collar_abs: float = 1.0  # ... or ±₹1, whichever is wider (cheap options)
    max_strategy_exposure: float = 500_000.0  # ₹ gross per strategy, working orders included
    max_portfolio_exposure: float = 1_000_000.0  # ₹ gross per account, working orders included
    max_open_positions: int = 10  # (strategy, instrument) pairs with a position or working entry
    strategy_loss_limit: float | None = 5_000.0  # ₹ day loss that stops and flattens a strategy
    daily_loss_limit: float | None = 10_000.0  # ₹ account day loss that sets REDUCING
    daily_loss_halt: float | None = 15_000.0  # ₹ account day loss that sets HALTED and flattens
    max_signal_age_ns: int = 5 * _S  # older signals (and resumes, manual orders) are STALE_SIGNAL
    orders_per_second: int = 8  # below SEBI's 10 OPS threshold (R2)
    orders_per_minute: int = 300  # Kite: 400/min
    orders_per_day: int = 4_000  # Kite: 5,000/day; entries past it are refused, exits still go
    max_queue: int = 50  # entries waiting for the throttle
    max_queue_delay_ns: int = 1 * _S  # longest wait of a queued entry (R2: queue up to 1 s)
    square_off_s: int = 15 * 3600 + 15 * 60  # 15:15 IST, seconds after midnight: flatten MIS, refuse entries
    product: Product = Product.MIS  # product of strategy and flatten orders
    require_stop_loss: bool = True  # entries need a stop on the protective side of the price
    risk_per_trade: float | None = None  # ₹ risked per entry (sizing cap); None: no sizing ...
    risk_per_trade_pct: float | None = None  # ... or this fraction of capital (e.g. 0.005)
    atr_multiple: float = 2.0  # per-unit risk = atr × this when on_target gets an atr
    loss_streak_scale: float = 0.5  # size × this per consecutive losing round trip of the strategy
    drawdown_scale_at: float = 0.02  # account drawdown from its intraday PnL peak, fraction of capital ...
    drawdown_scale: float = 0.5  # ... at which sizes are scaled by this
    min_size_scale: float = 0.25  # floor of the combined scale
    max_flatten_attempts: int = 5  # rejected/cancelled flatten exits per position before FLATTEN_FAILED

    def __post_init__(self) -> None:
        if not (0 < self.orders_per_second <= self.orders_per_minute and self.max_queue >= 0):
            msg = f"rates: expected 0 < orders_per_second <= orders_per_minute, got {self.orders_per_second}"
            raise ValueError(msg)
        if not SESSION_OPEN_NS <= self.square_off_s * _S <= SESSION_CLOSE_NS:
            msg = f"square_off_s: expected a time within 09:15-15:30 IST, got {self.square_off_s}"
            raise ValueError(msg)
        if not 0 < self.min_size_scale <= 1:
            msg = f"min_size_scale: expected 0 < scale <= 1, got {self.min_size_scale}"
            raise ValueError(msg)


def client_order_id(kind: str, *parts: object) -> str:
    """``kind`` (2 letters) + 16 base32 characters of a BLAKE2b hash of ``parts``.

    >>> client_order_id("TG", "acc", "s1|NSE:INFY|5m|1", 0)
    'TGNJDIVRFVLOA52UFO'
    """
    raw = "\x1f".join(map(str, parts)).encode()
    return kind + base64.b32encode(hashlib.blake2b(raw, digest_size=10).digest()).decode()


def position_size(
    budget: float,
    price: float,
    stop_loss: float | None,
    lot_size: int,
    *,
    atr: float | None = None,
    atr_multiple: float = 2.0,
    scale: float = 1.0,
) -> int:
    """Units whose stop-out loses at most ``budget × scale``, rounded down to whole lots.

    Per-unit risk is ``atr × atr_multiple`` when ``atr`` is given, else ``|price - stop_loss|``;
    0 when neither is usable.

    >>> position_size(1_000.0, 100.0, 98.0, 1)
    500
    >>> position_size(1_000.0, 100.0, 98.0, 75)  # 500 units: 6 lots of 75
    450
    >>> position_size(1_000.0, 100.0, None, 1, atr=1.0, scale=0.5)
    250
    """
    per_unit = atr * atr_multiple if atr is not None else abs(price - stop_loss) if stop_loss is not None else 0.0
    if not (per_unit > 0 and math.isfinite(per_unit)):
        return 0
    return int(budget * scale / per_unit / lot_size + 1e-9) * lot_size


class _Order:
    """A working order: emitted (maybe still queued) and not yet fully accounted for by fills."""

    __slots__ = ("cancel_sent", "filled", "final", "instrument", "purpose", "qty", "sent", "sign", "strategy")

    def __init__(self, o: OrderIntent) -> None:
        self.strategy, self.instrument, self.purpose = o.strategy, o.instrument, o.purpose
        self.sign = 1 if o.side is Side.BUY else -1
        self.qty, self.filled = o.qty, 0
        self.final: int | None = None  # filled qty reported by a terminal update
        self.sent = self.cancel_sent = False

    @property
    def remaining(self) -> int:
        return max(0, (self.qty if self.final is None else self.final) - self.filled)


class _Working(dict[str, _Order]):
    """Working orders by client order id, also indexed by (strategy, instrument), counted by
    instrument and - stops aside - counted by (strategy, instrument): the checks of every
    target and the desk's "does this instrument matter" of every batch read those, and a scan
    of every working order (a stop per open position) made both grow with the book."""

    __slots__ = ("by_instrument", "by_key", "pending")

    def __init__(self, items: Iterable[tuple[str, _Order]] = ()) -> None:
        super().__init__()
        self.by_key: dict[Key, dict[str, _Order]] = {}
        self.by_instrument: dict[str, int] = {}
        self.pending: dict[Key, int] = {}  # working entries and exits per key (stops never count)
        for coid, w in items:
            self[coid] = w

    def __setitem__(self, coid: str, w: _Order) -> None:
        if coid in self:  # replaced: out of the indexes first
            self._unindex(coid, self[coid])
        super().__setitem__(coid, w)
        key = (w.strategy, w.instrument)
        self.by_key.setdefault(key, {})[coid] = w
        self.by_instrument[w.instrument] = self.by_instrument.get(w.instrument, 0) + 1
        if w.purpose is not OrderPurpose.STOP:
            self.pending[key] = self.pending.get(key, 0) + 1

    def __delitem__(self, coid: str) -> None:
        self._unindex(coid, self[coid])
        super().__delitem__(coid)

    def pop(self, coid: str, *default: Any) -> Any:
        if coid not in self:
            if default:
                return default[0]
            raise KeyError(coid)
        w = self[coid]
        del self[coid]
        return w

    def _unindex(self, coid: str, w: _Order) -> None:
        key = (w.strategy, w.instrument)
        of_key = self.by_key[key]
        del of_key[coid]
        if not of_key:
            del self.by_key[key]
        n = self.by_instrument[w.instrument] - 1
        if n:
            self.by_instrument[w.instrument] = n
        else:
            del self.by_instrument[w.instrument]
        if w.purpose is not OrderPurpose.STOP:
            n = self.pending[key] - 1
            if n:
                self.pending[key] = n
            else:
                del self.pending[key]

    def __reduce__(self) -> tuple[Any, ...]:  # the indexes are rebuilt, not pickled
        return _Working, (list(self.items()),)

    def _refuse(self, *_: Any, **__: Any) -> None:
        msg = "_Working keeps indexes: set, delete or pop one order at a time"
        raise TypeError(msg)

    clear = popitem = setdefault = update = __ior__ = _refuse  # type: ignore[assignment]


_EXITS = frozenset({OrderPurpose.EXIT, OrderPurpose.STOP_EXIT})
_CANCEL, _EXIT, _ENTRY = 0, 1, 2  # queue priorities


def _tick_round(px: float | None, tick: float) -> float | None:
    return None if px is None or tick <= 0 else round(round(px / tick) * tick, 10)


class RiskGate:
    """Portfolio and pre-trade risk of one account (see the module docstring)."""

    def __init__(self, account: str, instruments: Mapping[str, Instrument], config: RiskConfig | None = None) -> None:
        self.account = account
        self.instruments = dict(instruments)
        self.config = cfg = config or RiskConfig()
        self.book = PositionBook(account)
        self.state = TradingState.ACTIVE
        self.duplicates = 0  # exact replays dropped silently
        inf = math.inf
        self._reduce_at = -cfg.daily_loss_limit if cfg.daily_loss_limit is not None else -inf
        self._halt_at = -cfg.daily_loss_halt if cfg.daily_loss_halt is not None else -inf
        self._strategy_at = -cfg.strategy_loss_limit if cfg.strategy_loss_limit is not None else -inf
        self._working = _Working()
        self._product: dict[Key, Product] = {}
        self._ref_px: dict[str, float] = {}  # price given with the last entry, for exposure before any tick
        self._signals: dict[str, tuple[str, str, int, float | None]] = {}
        self._ids: set[str] = set()
        self._commands: set[str] = set()
        self._manual: dict[str, OrderIntent] = {}  # operator orders of the day, for cancel / modify
        self._adopted: set[str] = set()  # taken back from the published record (adopt)
        self._locked: dict[str, str] = {}  # strategy -> flatten scope, until the next day
        self._flatten_all: str | None = None  # scope while HALTED
        self._sq_scope: str | None = None  # scope after square-off (MIS only)
        self._flatten_pending = False  # a flatten fell outside market hours ...
        self._pending_open = -1  # ... and waits for this session open
        self._attempts: dict[tuple[str, Key], int] = {}
        self._failures: dict[tuple[str, Key], int] = {}
        self._scopes = 0
        self._peak = 0.0
        self._orders_today = 0
        self._windows = ((_S, cfg.orders_per_second), (60 * _S, cfg.orders_per_minute))
        self._sent = tuple(deque[int](maxlen=cap) for _, cap in self._windows)  # only the newest `cap` matter
        self._queues: tuple[deque[tuple[int, OrderIntent | CancelOrder]], ...] = (deque(), deque(), deque())
        self._day = self._open_ns = self._close_ns = self._sq_ns = self._next_day_ns = -1
        self._wake_ns = -1  # on_price takes the slow path at or after this time; early is harmless, late is not

    # ------------------------------------------------------------------ inputs

    def involves(self, instrument: str) -> bool:
        """True while the account holds ``instrument`` or has a working order in it."""
        return self.book.holds(instrument) or instrument in self._working.by_instrument

    def __setstate__(self, state: dict[str, Any]) -> None:
        if type(state["_working"]) is dict:  # a snapshot from before the index
            state["_working"] = _Working(state["_working"].items())
        self.__dict__.update(state)

    def on_price(self, instrument: str, ltp: float, now: int) -> list[RiskOutput]:
        """Mark ``instrument``; loss limits, square-off and the throttle queue. Cheap when nothing is due."""
        if now >= self._wake_ns:
            out: list[RiskOutput] = []
            self._advance(now, out)
            if ltp > 0:
                self._check_losses(self.book.mark(instrument, ltp, now), now, out)
            self._update_wake(now)
            return out
        if ltp > 0:
            held = self.book.mark(instrument, ltp, now)
            if held:
                out = []
                self._check_losses(held, now, out)
                if out:
                    self._update_wake(now)
                return out
        return []

    def on_target(self, t: TargetPosition, price: float | None, now: int, *, atr: float | None = None) -> list[RiskOutput]:
        """Orders (or rejections) that move the strategy from its expected position to ``t``."""
        self._own(t.account)
        out: list[RiskOutput] = []
        self._advance(now, out)
        self._check_losses((t.strategy,), now, out)

        def reject(code: Reason, detail: str) -> list[RiskOutput]:
            out.append(self._rejected(t.strategy, t.instrument, code, detail, t.ts_event, now, t.signal_id))
            self._update_wake(now)
            return out

        fp = (t.strategy, t.instrument, t.target_qty, t.stop_loss)
        seen = self._signals.get(t.signal_id)
        if seen is not None:
            if seen == fp:
                self.duplicates += 1
                return out
            return reject(Reason.DUPLICATE, f"signal_id {t.signal_id!r} was seen with other content {seen}")
        self._signals[t.signal_id] = fp
        inst = self._signal_checks(t.instrument, t.ts_event, now)
        if isinstance(inst, tuple):
            return reject(*inst)
        lot = inst.lot_size
        target = int(t.target_qty / lot) * lot
        if target == 0 and t.target_qty != 0:
            return reject(Reason.LOT_SIZE, f"target {t.target_qty} is below one lot of {lot}")
        key = (t.strategy, t.instrument)
        exit_qty, entry_qty = _legs(self._expected(key), target)
        leg = 0
        note = t.reason if target == t.target_qty else f"{t.reason} (target {t.target_qty} rounded to lots: {target})"
        if exit_qty:
            held = self._held(key)  # an exit never sells what is not held: working entries are cancelled instead
            from_held = min(abs(exit_qty), abs(held)) if held and (held > 0) != (exit_qty > 0) else 0
            if from_held:
                exit_leg = from_held if exit_qty > 0 else -from_held
                leg = self._orders(key, exit_leg, OrderPurpose.EXIT, inst, t, now, out, leg, note)
            if abs(exit_qty) > from_held:
                self._supersede(key, Side.SELL if exit_qty > 0 else Side.BUY, t.signal_id, now, out)
        if entry_qty:
            qty, code, detail = self._entry_checks(key, entry_qty, inst, price, t.stop_loss, now, atr=atr)
            if code is not None:
                return reject(code, detail)
            self._orders(key, qty, OrderPurpose.ENTRY, inst, t, now, out, leg, note + detail)
        self._update_wake(now)
        return out

    def on_manual(self, cmd: ManualOrder, price: float | None, now: int) -> list[RiskOutput]:
        """An operator's order through the same gate (book key ``manual``; reducing ones act as exits)."""
        return self._once(cmd, now, lambda out: self._place_manual(cmd, price, now, out))

    def cancel_manual(self, cmd: CancelManualOrder, now: int) -> list[RiskOutput]:
        """Withdraw a working operator order: a queued one never leaves (``OPERATOR_CANCEL``), a
        sent one gets a :class:`CancelOrder`."""

        def apply(out: list[RiskOutput]) -> None:
            w = self._manual_working(cmd.client_order_id, cmd, now, out)
            if w is not None:
                self._withdraw(cmd.client_order_id, w, f"cancelled by {cmd.issued_by} ({cmd.command_id})", now, out)

        return self._once(cmd, now, apply)

    def modify_manual(self, cmd: ModifyManualOrder, price: float | None, now: int) -> list[RiskOutput]:
        """Cancel and replace a working operator order. The replacement (the old order with the
        new qty / price / trigger) passes every check of a new manual order, as if the old one
        were gone; if the old order fills before its cancel lands, both execute - as at any
        venue without a native modify."""

        def apply(out: list[RiskOutput]) -> None:
            coid = cmd.client_order_id
            w = self._manual_working(coid, cmd, now, out)
            if w is None:
                return
            old = self._manual[coid]
            new = ManualOrder(
                command_id=cmd.command_id, account=cmd.account, issued_by=cmd.issued_by, ts_event=cmd.ts_event,
                ts_init=cmd.ts_init, instrument=old.instrument, side=old.side,
                qty=cmd.qty if cmd.qty is not None else w.remaining, order_type=old.order_type,
                product=old.product, price=cmd.price if cmd.price is not None else old.price,
                trigger_price=cmd.trigger_price if cmd.trigger_price is not None else old.trigger_price,
            )  # fmt: skip
            self._withdraw(coid, w, f"replaced by {cmd.command_id}", now, out)
            hidden = self._working.pop(coid, None)  # checked as if gone; kept for its fills and final update
            try:
                self._place_manual(new, price, now, out)
            finally:
                if hidden is not None:
                    self._working[coid] = hidden

        return self._once(cmd, now, apply)

    def close_position(self, cmd: ClosePosition, price: float | None, now: int) -> list[RiskOutput]:
        """Flatten one (strategy, instrument) position: a flat target through the gate."""

        def apply(out: list[RiskOutput]) -> None:
            if self.book.qty(cmd.strategy, cmd.instrument) == 0:
                detail = f"no open position of {cmd.strategy} in {cmd.instrument}"
                out.append(self._rejected(cmd.strategy, cmd.instrument, Reason.EXCEEDS_POSITION, detail, cmd.ts_event,
                                          now, cmd.command_id))  # fmt: skip
                return
            flat = TargetPosition(strategy=cmd.strategy, account=self.account, instrument=cmd.instrument,
                                  target_qty=0, ts_event=now, ts_init=now, signal_id=cmd.command_id,
                                  reason=f"closed by {cmd.issued_by}")  # fmt: skip
            out.extend(self.on_target(flat, price, now))

        return self._once(cmd, now, apply)

    def adopt(self, item: OrderIntent | CancelOrder) -> bool:
        """Take back an intent or cancel this gate issued but its state does not hold (a restart
        from an older snapshot): the order is working and sent, and counts toward exposure, the
        day's order count and the duplicate check. False when it is already known."""
        self._own(item.account)
        coid = item.client_order_id
        if type(item) is CancelOrder:
            w = self._working.get(coid)
            if w is None or w.cancel_sent:
                return False
            w.cancel_sent = True
            return True
        assert type(item) is OrderIntent
        if coid in self._ids:
            return False
        self._ids.add(coid)
        self._adopted.add(coid)
        w = self._working[coid] = _Order(item)
        w.sent = True
        self._orders_today += 1
        if item.purpose is OrderPurpose.MANUAL:
            self._manual[coid] = item
        if item.purpose in (OrderPurpose.ENTRY, OrderPurpose.MANUAL):
            self._product[item.strategy, item.instrument] = item.product
        return True

    def unsettled(self, coid: str) -> bool:
        """True while ``coid`` is working with no terminal update yet."""
        w = self._working.get(coid)
        return w is not None and w.final is None

    def manual_instrument(self, coid: str) -> str | None:
        """The instrument of operator order ``coid`` (None when unknown)."""
        o = self._manual.get(coid)
        return o.instrument if o is not None else None

    def _once(self, cmd: Halt | ManualOrder | CancelManualOrder | ModifyManualOrder | ClosePosition, now: int,
              apply: Callable[[list[RiskOutput]], None]) -> list[RiskOutput]:  # fmt: skip
        """A command's outputs: ``apply`` runs once per command id (a repeat counts as a duplicate)."""
        self._own(cmd.account)
        out: list[RiskOutput] = []
        self._advance(now, out)
        if not self._seen(cmd.command_id):
            apply(out)
        self._update_wake(now)
        return out

    def _seen(self, command_id: str) -> bool:
        """True for a command already applied (counted as a duplicate); records it otherwise."""
        if command_id in self._commands:
            self.duplicates += 1
            return True
        self._commands.add(command_id)
        return False

    def _manual_working(self, coid: str, cmd: CancelManualOrder | ModifyManualOrder, now: int,
                        out: list[RiskOutput]) -> _Order | None:  # fmt: skip
        """The working operator order ``coid`` (not already being cancelled), or None and a rejection."""
        w = self._working.get(coid)
        if w is None or coid not in self._manual or not w.remaining or w.cancel_sent:
            why = "is being cancelled" if w is not None and w.cancel_sent else "is not a working operator order"
            out.append(self._rejected(MANUAL_STRATEGY, w.instrument if w else "", Reason.ORDER_NOT_WORKING,
                                      f"{coid} {why}", cmd.ts_event, now, cmd.command_id, coid))  # fmt: skip
            return None
        return w

    def _withdraw(self, coid: str, w: _Order, reason: str, now: int, out: list[RiskOutput]) -> None:
        if w.sent:
            w.cancel_sent = True
            cancel = CancelOrder(client_order_id=coid, account=self.account, instrument=w.instrument, ts_event=now,
                                 ts_init=now, reason=reason)  # fmt: skip
            self._submit(cancel, _CANCEL, now, out)
            return
        for q in self._queues:
            for item in q:
                if type(item[1]) is OrderIntent and item[1].client_order_id == coid:
                    q.remove(item)
                    self._drop(item[1], Reason.OPERATOR_CANCEL, reason, now, out)
                    return

    def _place_manual(self, cmd: ManualOrder, price: float | None, now: int, out: list[RiskOutput]) -> None:
        key = (MANUAL_STRATEGY, cmd.instrument)

        def reject(code: Reason, detail: str) -> None:
            out.append(self._rejected(MANUAL_STRATEGY, cmd.instrument, code, detail, cmd.ts_event, now, cmd.command_id))

        inst = self._signal_checks(cmd.instrument, cmd.ts_event, now)
        if isinstance(inst, tuple):
            return reject(*inst)
        if cmd.qty <= 0 or cmd.qty % inst.lot_size:
            return reject(Reason.LOT_SIZE, f"qty {cmd.qty} is not a positive multiple of the lot size {inst.lot_size}")
        signed = cmd.qty if cmd.side is Side.BUY else -cmd.qty
        e = self._expected(key)
        reducing = e != 0 and (e > 0) != (signed > 0) and cmd.qty <= abs(e)
        priced = cmd.order_type in (OrderType.LIMIT, OrderType.SL, OrderType.SL_M, OrderType.GTT)
        qty = cmd.qty
        if not reducing:
            qty, code, detail = self._entry_checks(key, signed, inst, price, None, now, manual=True)
            if code is not None:
                return reject(code, detail)
            qty = abs(qty)
        if priced:
            code2, detail2 = self._collar(cmd.order_type, cmd.price, cmd.trigger_price, price)
            if code2 is not None:
                return reject(code2, detail2)
        self._product[key] = cmd.product
        for leg, q in enumerate(_chunks(qty, inst)):
            intent = OrderIntent(
                client_order_id=client_order_id("MN", self.account, cmd.command_id, leg),
                account=self.account,
                strategy=MANUAL_STRATEGY,
                instrument=cmd.instrument,
                side=cmd.side,
                qty=q,
                order_type=cmd.order_type,
                product=cmd.product,
                ts_event=cmd.ts_event,
                ts_init=now,
                price=_tick_round(cmd.price, inst.tick_size),
                trigger_price=_tick_round(cmd.trigger_price, inst.tick_size),
                signal_id=cmd.command_id,
                reason=f"manual by {cmd.issued_by}",
                purpose=OrderPurpose.MANUAL,
            )
            self._manual[intent.client_order_id] = intent
            self._emit(intent, _EXIT if reducing else _ENTRY, now, out)
        return None

    def on_intent(self, intent: OrderIntent, now: int) -> list[RiskOutput]:
        """A reducing order made elsewhere (the stop-loss manager's EXIT / STOP / STOP_EXIT).

        It passes in every state, is capped at what is held once the working exits are done
        (``EXCEEDS_POSITION`` when nothing; STOP orders are contingent and not capped), split by
        freeze quantity and throttled like the gate's own orders.
        """
        self._own(intent.account)
        out: list[RiskOutput] = []
        self._advance(now, out)

        def reject(code: Reason, detail: str) -> list[RiskOutput]:
            out.append(self._rejected(intent.strategy, intent.instrument, code, detail, intent.ts_event, now,
                                      intent.signal_id, intent.client_order_id))  # fmt: skip
            self._update_wake(now)
            return out

        if intent.client_order_id in self._adopted:  # made again after a restart: it is already out there
            self.duplicates += 1
            return out
        if intent.client_order_id in self._ids:
            return reject(Reason.DUPLICATE, f"client_order_id {intent.client_order_id!r} was already issued")
        if intent.purpose not in (OrderPurpose.EXIT, OrderPurpose.STOP, OrderPurpose.STOP_EXIT):
            return reject(Reason.UNSUPPORTED, f"purpose {intent.purpose} must go through on_target / on_manual")
        inst = self._signal_checks(intent.instrument, now, now)  # never stale: a stop must not wait
        if isinstance(inst, tuple):
            return reject(*inst)
        key = (intent.strategy, intent.instrument)
        qty = intent.qty
        if intent.purpose is not OrderPurpose.STOP:
            held = self._held(key)
            room = abs(held) if held != 0 and (held > 0) != (intent.side is Side.BUY) else 0
            if room == 0:
                return reject(Reason.EXCEEDS_POSITION, f"nothing to reduce: {held} held once working exits are done")
            qty = min(qty, room)
        sizes = _chunks(qty, inst)
        for leg, q in enumerate(sizes):
            coid = (
                intent.client_order_id
                if len(sizes) == 1
                else client_order_id("SX", self.account, intent.client_order_id, leg)
            )
            self._emit(msgspec.structs.replace(intent, client_order_id=coid, qty=q), _EXIT, now, out)
        self._update_wake(now)
        return out

    def on_fill(self, fill: Fill, now: int | None = None) -> list[RiskOutput]:
        """Apply a fill: the new Position, then loss-limit and flatten follow-ups. ``now`` defaults to ``ts_init``."""
        self._own(fill.account)
        now = fill.ts_init if now is None else now
        out: list[RiskOutput] = []
        self._advance(now, out)
        if self.book.has_fill(fill):
            self.duplicates += 1
            return out
        key = (fill.strategy, fill.instrument)
        w = self._working.get(fill.client_order_id)
        overfill = False
        if w is not None:  # kept until its terminal update, so an overfill is caught
            w.filled += fill.qty
            overfill = w.filled > w.qty
            if w.final is not None and w.remaining == 0:
                del self._working[fill.client_order_id]
        out.append(self.book.apply_fill(fill))
        if overfill:
            self._enter_halt(Reason.OVERFILL, f"fill {fill.trade_id} overfills {fill.client_order_id}", now, out)
        self._check_losses((fill.strategy,), now, out)
        self._flatten_key(key, now, out)
        self._update_wake(now)
        return out

    def on_order_update(self, u: OrderUpdate, now: int | None = None) -> list[RiskOutput]:
        """Working-order bookkeeping; a flatten exit that ends rejected or cancelled is re-issued."""
        self._own(u.account)
        now = u.ts_init if now is None else now
        out: list[RiskOutput] = []
        self._advance(now, out)
        w = self._working.get(u.client_order_id)
        if w is not None and u.status.terminal:
            q_cancel = self._queues[_CANCEL]
            if w.cancel_sent and q_cancel:  # a cancel still queued for a finished order would waste a slot
                keep = [(at, c) for at, c in q_cancel if c.client_order_id != u.client_order_id]
                q_cancel.clear()
                q_cancel.extend(keep)
            w.final = u.filled_qty
            if w.remaining == 0:
                del self._working[u.client_order_id]
            if u.status is not OrderStatus.COMPLETE and w.purpose in _EXITS:
                key = (w.strategy, w.instrument)
                scope = self._scope(key)
                if scope is not None:
                    self._failures[scope, key] = self._failures.get((scope, key), 0) + 1
                    self._flatten_key(key, now, out)
        self._update_wake(now)
        return out

    # ------------------------------------------------------------------ commands

    def halt(self, cmd: Halt, now: int) -> list[RiskOutput]:
        """Kill switch: HALTED, queued entries refused, working non-exits cancelled, everything flattened."""
        return self._once(cmd, now, lambda out: self._enter_halt(Reason.HALTED, f"{cmd.reason} (by {cmd.issued_by})",
                                                                 now, out))  # fmt: skip

    def resume(self, cmd: Resume, now: int) -> list[RiskOutput]:
        """Back to ACTIVE; the only way out of REDUCING or HALTED."""
        self._own(cmd.account)
        out: list[RiskOutput] = []
        self._advance(now, out)
        if cmd.command_id in self._commands:
            return out
        self._commands.add(cmd.command_id)
        if now - cmd.ts_event > self.config.max_signal_age_ns:
            detail = f"resume {cmd.command_id!r} is {(now - cmd.ts_event) / _S:.1f} s old"
            out.append(self._rejected("", "", Reason.STALE_SIGNAL, detail, cmd.ts_event, now, cmd.command_id))
            return out
        self._flatten_all = None
        self._set_state(TradingState.ACTIVE, f"RESUME: {cmd.reason} (by {cmd.issued_by})", now, out)
        self._update_wake(now)
        return out

    def reduce(self, reason: str, now: int) -> list[RiskOutput]:
        """ACTIVE → REDUCING for an outside cause (stale feed, reconciliation mismatch)."""
        out: list[RiskOutput] = []
        self._advance(now, out)
        if self.state is TradingState.ACTIVE:
            self._set_state(TradingState.REDUCING, f"{Reason.REDUCING}: {reason}", now, out)
        self._update_wake(now)
        return out

    def release(self, now: int) -> list[RiskOutput]:
        """Queued orders whose turn has come (and queued entries that waited too long, refused)."""
        out: list[RiskOutput] = []
        self._advance(now, out)
        self._update_wake(now)
        return out

    def next_release_at(self) -> int | None:
        """When :meth:`release` has something to do, or None when nothing is queued."""
        q_cancel, q_exit, q_entry = self._queues
        if not (q_cancel or q_exit or q_entry):
            return None
        at = self._free_at()
        if q_entry:  # a queued entry past its wait is refused at this time
            at = min(at, q_entry[0][0] + self.config.max_queue_delay_ns + 1)
        return at

    def next_due_at(self) -> int | None:
        """When the gate next has timed work - a throttled order, the square-off, a flatten waiting
        for the open - so a flow without ticks can call :meth:`release` then."""
        due = [t for t in (self.next_release_at(),) if t is not None]
        if self._sq_scope is None and self._sq_ns >= 0:
            due.append(self._sq_ns)
        if self._flatten_pending:
            due.append(self._pending_open)
        return min(due) if due else None

    # ------------------------------------------------------------------ order making

    def _orders(
        self, key: Key, signed: int, purpose: OrderPurpose, inst: Instrument, t: TargetPosition,
        now: int, out: list[RiskOutput], leg: int, note: str,
    ) -> int:  # fmt: skip
        side = Side.BUY if signed > 0 else Side.SELL
        entry = purpose is OrderPurpose.ENTRY
        if entry:
            self._product[key] = self.config.product
        for q in _chunks(abs(signed), inst):
            intent = OrderIntent(
                client_order_id=client_order_id("TG", self.account, t.signal_id, leg),
                account=self.account,
                strategy=t.strategy,
                instrument=t.instrument,
                side=side,
                qty=q,
                order_type=OrderType.MARKET,
                product=self._product.get(key, self.config.product),
                ts_event=t.ts_event,
                ts_init=now,
                signal_id=t.signal_id,
                reason=note,
                purpose=purpose,
                stop_loss=_tick_round(t.stop_loss, inst.tick_size) if entry else None,
                take_profit=_tick_round(t.take_profit, inst.tick_size) if entry else None,
            )
            self._emit(intent, _ENTRY if entry else _EXIT, now, out)
            leg += 1
        return leg

    def _emit(self, o: OrderIntent, prio: int, now: int, out: list[RiskOutput]) -> None:
        if o.client_order_id in self._adopted:  # made again after a restart: it is already out there
            self.duplicates += 1
            return
        if o.client_order_id in self._ids:
            detail = f"client_order_id {o.client_order_id!r} was already issued"
            out.append(self._rejected(o.strategy, o.instrument, Reason.DUPLICATE, detail, o.ts_event, now,
                                      o.signal_id, o.client_order_id))  # fmt: skip
            return
        if prio == _ENTRY and self._orders_today >= self.config.orders_per_day:
            detail = f"{self._orders_today} orders today (cap {self.config.orders_per_day})"
            out.append(self._rejected(o.strategy, o.instrument, Reason.RATE_LIMIT, detail, o.ts_event, now,
                                      o.signal_id, o.client_order_id))  # fmt: skip
            return
        self._ids.add(o.client_order_id)
        self._working[o.client_order_id] = _Order(o)
        self._submit(o, prio, now, out)

    def _submit(self, item: OrderIntent | CancelOrder, prio: int, now: int, out: list[RiskOutput]) -> None:
        queued = any(self._queues)
        if not queued and self._free_at() <= now:
            self._send(item, now, out)
            return
        if prio == _ENTRY and len(self._queues[_ENTRY]) >= self.config.max_queue:
            assert isinstance(item, OrderIntent)
            self._drop(item, Reason.RATE_LIMIT, f"throttle queue full ({self.config.max_queue} entries)", now, out)
            return
        self._queues[prio].append((now, item))
        self._wake_ns = min(self._wake_ns, self.next_release_at() or now)  # the wake may run early, never late

    def _send(self, item: OrderIntent | CancelOrder, now: int, out: list[RiskOutput]) -> None:
        for d in self._sent:
            d.append(now)
        self._orders_today += 1
        if isinstance(item, OrderIntent):
            w = self._working.get(item.client_order_id)
            if w is not None:
                w.sent = True
        out.append(item)

    def _free_at(self) -> int:
        at = -1
        for (window, cap), d in zip(self._windows, self._sent, strict=True):
            if len(d) >= cap:
                at = max(at, d[-cap] + window)
        return at

    def _release(self, now: int, out: list[RiskOutput]) -> None:
        q_entry = self._queues[_ENTRY]
        limit = now - self.config.max_queue_delay_ns
        while q_entry and q_entry[0][0] < limit:
            _, o = q_entry.popleft()
            assert isinstance(o, OrderIntent)
            self._drop(o, Reason.RATE_LIMIT, f"waited over {self.config.max_queue_delay_ns / _S:g} s", now, out)
        while any(self._queues) and self._free_at() <= now:
            q = next(q for q in self._queues if q)
            self._send(q.popleft()[1], now, out)

    def _drop(self, o: OrderIntent, code: Reason, detail: str, now: int, out: list[RiskOutput]) -> None:
        self._working.pop(o.client_order_id, None)
        out.append(self._rejected(o.strategy, o.instrument, code, detail, o.ts_event, now, o.signal_id, o.client_order_id))

    # ------------------------------------------------------------------ checks

    def _signal_checks(self, instrument: str, ts_event: int, now: int) -> Instrument | tuple[Reason, str]:
        """The instrument, or why the signal is refused whatever its legs."""
        age = now - ts_event
        if age > self.config.max_signal_age_ns:
            return Reason.STALE_SIGNAL, f"signal is {age / _S:.1f} s old (max {self.config.max_signal_age_ns / _S:g} s)"
        inst = self.instruments.get(instrument)
        if inst is None or not inst.tradable:
            return Reason.UNKNOWN_INSTRUMENT, f"{instrument!r} is not a tradable instrument of the master"
        if not self._open_ns <= now < self._close_ns:
            return Reason.MARKET_CLOSED, "outside the 09:15-15:30 IST session"
        return inst

    def _entry_checks(
        self, key: Key, signed: int, inst: Instrument, price: float | None, stop: float | None, now: int,
        *, atr: float | None = None, manual: bool = False,
    ) -> tuple[int, Reason | None, str]:  # fmt: skip
        """(signed qty, possibly cut by sizing; None or the reason code; detail)."""
        cfg, book = self.config, self.book
        if self.state is TradingState.HALTED:
            return signed, Reason.HALTED, "trading is HALTED: only an explicit resume re-enables entries"
        day = book.day_pnl()
        if day <= self._reduce_at:
            return signed, Reason.DAILY_LOSS_LIMIT, f"account day PnL {day:,.2f} at or below {self._reduce_at:,.2f}"
        if self.state is TradingState.REDUCING:
            return signed, Reason.REDUCING, "trading is REDUCING: only risk-reducing orders pass"
        if key[0] in self._locked:
            return signed, Reason.STRATEGY_LOSS_LIMIT, f"strategy {key[0]!r} hit its loss limit today"
        if now >= self._sq_ns:
            return signed, Reason.SQUARE_OFF, "no new entries after the square-off time"
        if price is None or not (0 < price < math.inf):
            return signed, Reason.NO_PRICE, f"no usable last price for {key[1]} ({price})"
        self._ref_px[key[1]] = price
        buy = signed > 0
        if not manual and cfg.require_stop_loss and not (stop is not None and (stop < price if buy else stop > price)):
            return (
                signed,
                Reason.MISSING_STOP_LOSS,
                f"{'buy' if buy else 'sell'} at {price} needs a stop {'below' if buy else 'above'}, got {stop}",
            )
        note = ""
        budget = cfg.risk_per_trade if cfg.risk_per_trade is not None else (
            cfg.risk_per_trade_pct * cfg.capital if cfg.risk_per_trade_pct is not None else None)  # fmt: skip
        if budget is not None and not manual:
            scale = self.size_scale(key[0])
            cap = position_size(budget, price, stop, inst.lot_size, atr=atr, atr_multiple=cfg.atr_multiple, scale=scale)
            e = self._expected(key)
            held = abs(e) if e and (e > 0) == buy else 0
            room = max(0, cap - held)
            if room < inst.lot_size:
                return (
                    signed,
                    Reason.POSITION_SIZE,
                    f"risk budget {budget:,.2f} × {scale:g} sizes {cap} units, holding {held}",
                )
            if room < abs(signed):
                note = f"; sized {abs(signed)} → {room} (budget {budget:,.2f} × {scale:g})"
                signed = room if buy else -room
        qty = abs(signed)
        if qty > cfg.max_order_qty:
            return signed, Reason.MAX_ORDER_QTY, f"qty {qty} > {cfg.max_order_qty}"
        if qty * price > cfg.max_order_value:
            return signed, Reason.MAX_ORDER_VALUE, f"value {qty * price:,.2f} > {cfg.max_order_value:,.2f}"
        was, opened, strat, gross = self._exposure(key, signed, price)
        if was == 0 and opened >= cfg.max_open_positions:
            return signed, Reason.MAX_OPEN_POSITIONS, f"{cfg.max_open_positions} positions already open"
        if strat > cfg.max_strategy_exposure:
            return signed, Reason.STRATEGY_EXPOSURE, f"strategy gross {strat:,.2f} > {cfg.max_strategy_exposure:,.2f}"
        if gross > cfg.max_portfolio_exposure:
            return signed, Reason.PORTFOLIO_EXPOSURE, f"account gross {gross:,.2f} > {cfg.max_portfolio_exposure:,.2f}"
        return signed, None, note

    def _collar(
        self, order_type: OrderType, px: float | None, trigger: float | None, ltp: float | None
    ) -> tuple[Reason | None, str]:
        if ltp is None or not (0 < ltp < math.inf):
            return Reason.NO_PRICE, f"a {order_type} order needs a last price to check its price against"
        needs_px = order_type in (OrderType.LIMIT, OrderType.SL, OrderType.GTT)
        needs_trigger = order_type in (OrderType.SL, OrderType.SL_M)
        band = max(ltp * self.config.price_collar_pct, self.config.price_collar_abs)
        for name, v, needed in (("price", px, needs_px), ("trigger", trigger, needs_trigger)):
            if needed and (v is None or not abs(v - ltp) <= band):
                return Reason.PRICE_COLLAR, f"{name} {v} outside {ltp} ± {band:g}"
        return None, ""

    def size_scale(self, strategy: str) -> float:
        """The sizing scale of ``strategy`` now (see the module docstring)."""
        cfg = self.config
        scale = cfg.loss_streak_scale ** self.book.loss_streak(strategy)
        if max(self._peak, self.book.day_pnl()) - self.book.day_pnl() >= cfg.drawdown_scale_at * cfg.capital:
            scale *= cfg.drawdown_scale
        return max(cfg.min_size_scale, scale)

    def _check_losses(self, strategies: tuple[str, ...], now: int, out: list[RiskOutput]) -> None:
        day = self.book.day_pnl()
        self._peak = max(self._peak, day)
        if day <= self._halt_at and self.state is not TradingState.HALTED:
            self._enter_halt(
                Reason.DAILY_LOSS_LIMIT, f"account day PnL {day:,.2f} at or below {self._halt_at:,.2f}", now, out
            )
        elif day <= self._reduce_at and self.state is TradingState.ACTIVE:
            detail = f"{Reason.DAILY_LOSS_LIMIT}: account day PnL {day:,.2f} at or below {self._reduce_at:,.2f}"
            self._set_state(TradingState.REDUCING, detail, now, out)
        for s in strategies:
            if s not in self._locked and self.book.day_pnl(s) <= self._strategy_at:
                self._lock(s, now, out)

    def _lock(self, strategy: str, now: int, out: list[RiskOutput]) -> None:
        """Stop ``strategy`` for the day: refuse its entries, cancel its non-exits, flatten it."""
        self._locked[strategy] = scope = self._new_scope("SL", now)
        pnl = self.book.day_pnl(strategy)
        detail = f"strategy day PnL {pnl:,.2f} at or below {self._strategy_at:,.2f}: flattened, no entries today"
        out.append(self._rejected(strategy, "", Reason.STRATEGY_LOSS_LIMIT, detail, now, now, scope))
        self._drop_queued(lambda o: o.strategy == strategy, Reason.STRATEGY_LOSS_LIMIT, now, out)
        self._cancel(lambda w: w.strategy == strategy, scope, now, out)
        for key in self._keys():
            if key[0] == strategy:
                self._flatten_key(key, now, out)

    # ------------------------------------------------------------------ state and flattening

    def _set_state(self, state: TradingState, reason: str, now: int, out: list[RiskOutput]) -> None:
        if state is not self.state:
            out.append(TradingStateChanged(account=self.account, previous=self.state, current=state, reason=reason,
                                           ts_event=now, ts_init=now))  # fmt: skip
            self.state = state

    def _enter_halt(self, cause: Reason, detail: str, now: int, out: list[RiskOutput]) -> None:
        self._set_state(TradingState.HALTED, f"{cause}: {detail}", now, out)
        self._flatten_all = scope = self._new_scope("HL", now)
        self._drop_queued(lambda o: True, Reason.HALTED, now, out)
        self._cancel(lambda w: True, scope, now, out)
        for key in self._keys():
            self._flatten_key(key, now, out)

    def _square_off(self, now: int, out: list[RiskOutput]) -> None:
        self._sq_scope = scope = self._new_scope("SQ", now)
        mis = Product.MIS

        def is_mis(strategy: str, instrument: str) -> bool:
            return self._product.get((strategy, instrument), self.config.product) is mis

        self._drop_queued(lambda o: is_mis(o.strategy, o.instrument), Reason.SQUARE_OFF, now, out)
        self._cancel(lambda w: is_mis(w.strategy, w.instrument), scope, now, out)
        for key in self._keys():
            self._flatten_key(key, now, out)

    def _drop_queued(self, pred: Callable[[OrderIntent], bool], code: Reason, now: int, out: list[RiskOutput]) -> None:
        q = self._queues[_ENTRY]
        keep: deque[tuple[int, OrderIntent | CancelOrder]] = deque()
        for at, o in q:
            if isinstance(o, OrderIntent) and pred(o):
                self._drop(o, code, "refused while queued", now, out)
            else:
                keep.append((at, o))
        q.clear()
        q.extend(keep)

    def _cancel(self, pred: Callable[[_Order], bool], scope: str, now: int, out: list[RiskOutput]) -> None:
        """CancelOrder for each sent, unfinished, non-exit working order matching ``pred``."""
        for coid, w in list(self._working.items()):
            if w.sent and not w.cancel_sent and w.purpose not in _EXITS and w.remaining and pred(w):
                w.cancel_sent = True
                c = CancelOrder(client_order_id=coid, account=self.account, instrument=w.instrument, ts_event=now,
                                ts_init=now, reason=scope)  # fmt: skip
                self._submit(c, _CANCEL, now, out)

    def _supersede(self, key: Key, side: Side, signal_id: str, now: int, out: list[RiskOutput]) -> None:
        """Withdraw the working ``side`` entries of ``key``: a newer target wants less than they add."""
        sign = 1 if side is Side.BUY else -1

        def mine(strategy: str, instrument: str, purpose: OrderPurpose) -> bool:
            return (strategy, instrument) == key and purpose is OrderPurpose.ENTRY

        self._drop_queued(
            lambda o: mine(o.strategy, o.instrument, o.purpose) and o.side is side, Reason.SUPERSEDED, now, out
        )
        self._cancel(
            lambda w: mine(w.strategy, w.instrument, w.purpose) and w.sign == sign, f"superseded by {signal_id}", now, out
        )

    def _new_scope(self, kind: str, now: int) -> str:
        """A flatten's name; its time keeps flatten ids unique across days and a restart that lost the state."""
        self._scopes += 1
        return f"{kind}{self._scopes}@{now}"

    def _scope(self, key: Key) -> str | None:
        if self._flatten_all is not None:
            return self._flatten_all
        scope = self._locked.get(key[0])
        if scope is None and self._sq_scope is not None and self._product.get(key, self.config.product) is Product.MIS:
            scope = self._sq_scope
        return scope

    def _flatten_key(self, key: Key, now: int, out: list[RiskOutput]) -> None:
        scope = self._scope(key)
        if scope is None:
            return
        if not self._open_ns <= now < self._close_ns:
            self._flatten_pending = True
            self._pending_open = self._open_ns if self._open_ns > now else self._open_ns + DAY_NS
            self._wake_ns = min(self._wake_ns, self._pending_open)
            return
        p = self.book.qty(*key)
        need = -self._held(key)
        if p == 0 or need == 0 or (need > 0) == (p > 0):
            return
        sk = (scope, key)
        if self._failures.get(sk, 0) >= self.config.max_flatten_attempts:
            if self._failures[sk] == self.config.max_flatten_attempts:
                self._failures[sk] += 1  # report once
                detail = f"{self.config.max_flatten_attempts} exits rejected or cancelled; position {p} left open"
                out.append(self._rejected(key[0], key[1], Reason.FLATTEN_FAILED, detail, now, now, scope))
            return
        attempt = self._attempts.get(sk, 0)
        self._attempts[sk] = attempt + 1
        inst = self.instruments.get(key[1])
        sizes = _chunks(abs(need), inst) if inst is not None else [abs(need)]
        for leg, q in enumerate(sizes):
            intent = OrderIntent(
                client_order_id=client_order_id("FL", self.account, scope, key[0], key[1], attempt, leg),
                account=self.account,
                strategy=key[0],
                instrument=key[1],
                side=Side.BUY if need > 0 else Side.SELL,
                qty=q,
                order_type=OrderType.MARKET,
                product=self._product.get(key, self.config.product),
                ts_event=now,
                ts_init=now,
                signal_id=scope,
                reason=f"flatten {scope} attempt {attempt}",
                purpose=OrderPurpose.EXIT,
            )
            self._emit(intent, _EXIT, now, out)

    # ------------------------------------------------------------------ time

    def _advance(self, now: int, out: list[RiskOutput]) -> None:
        if now < self._wake_ns:
            return
        if now >= self._next_day_ns:
            self._roll_day(now)
        if now >= self._sq_ns and self._sq_scope is None:
            self._square_off(now, out)
        if self._flatten_pending and self._open_ns <= now < self._close_ns:
            self._flatten_pending = False
            for key in self._keys():
                self._flatten_key(key, now, out)
        if any(self._queues):
            self._release(now, out)

    def _update_wake(self, now: int) -> None:
        w = self._next_day_ns
        if self._sq_scope is None:
            w = min(w, self._sq_ns)
        if self._flatten_pending and self._pending_open > now:
            w = min(w, self._pending_open)
        r = self.next_release_at()
        self._wake_ns = w if r is None else min(w, max(r, now + 1))

    def _roll_day(self, now: int) -> None:
        self._day = (now + IST_OFFSET_NS) // DAY_NS
        start = self._day * DAY_NS - IST_OFFSET_NS
        self._open_ns, self._close_ns = start + SESSION_OPEN_NS, start + SESSION_CLOSE_NS
        self._sq_ns, self._next_day_ns = start + self.config.square_off_s * _S, start + DAY_NS
        self.book.start_day()
        self._signals.clear()
        self._ids = set(self._working)
        self._adopted &= self._ids
        self._manual = {coid: o for coid, o in self._manual.items() if coid in self._working}
        self._locked.clear()
        self._sq_scope = None
        self._attempts.clear()
        self._failures.clear()
        self._peak = max(0.0, self.book.day_pnl())
        self._orders_today = 0
        if self.book.open_keys():
            self._flatten_pending = self._flatten_pending or self._flatten_all is not None

    # ------------------------------------------------------------------ helpers

    def _own(self, account: str) -> None:
        if account != self.account:
            msg = f"RiskGate of {self.account!r} got an event of account {account!r}: the flow must key by account"
            raise ValueError(msg)

    def _working_of(self, key: Key) -> Iterable[_Order]:
        of_key = self._working.by_key.get(key)
        return () if of_key is None else of_key.values()

    def _held(self, key: Key) -> int:
        """The position once the working exits are done (entries aside)."""
        return self.book.qty(*key) + sum(w.sign * w.remaining for w in self._working_of(key) if w.purpose in _EXITS)

    def _expected(self, key: Key) -> int:
        return self.book.qty(*key) + sum(
            w.sign * w.remaining for w in self._working_of(key) if w.purpose is not OrderPurpose.STOP
        )

    def _exposure(self, key: Key, signed: int, price: float) -> tuple[int, int, float, float]:
        """(expected position of ``key``, how many keys have an expected position, and the
        strategy's and the account's gross exposure once ``signed`` more of ``key`` is working).

        Gross exposure is Σ |expected position| × price over every key, ``key``'s instrument
        at ``price`` and the others at their last price. The book keeps that sum over held
        positions (:meth:`PositionBook.gross_exposure`); only the keys where it can differ are
        visited and corrected: those with working entries or exits, and the holders of
        ``key``'s instrument. In sorted order, so the sum never depends on history.
        """
        book, inst = self.book, key[1]
        adjust = set(self._working.pending)
        adjust.add(key)
        adjust.update((s, inst) for s in book.holders(inst))
        was, opened = 0, book.open_count()
        strat, gross = book.gross_exposure(key[0]), book.gross_exposure()
        for k in sorted(adjust):
            expected = self._expected(k)
            opened += (expected != 0) - (book.qty(*k) != 0)  # the count before this order
            if k == key:
                was = expected
                expected += signed
            d = abs(expected) * (price if k[1] == inst else self._price(k)) - book.value(*k)
            gross += d
            if k[0] == key[0]:
                strat += d
        return was, opened, strat, gross

    def _keys(self) -> list[Key]:
        return sorted(self.book.open_keys())

    def _price(self, key: Key) -> float:
        px = self.book.last_price(key[1])
        if px is None:
            pos = self.book.position(*key)
            px = pos.last_price if pos is not None else self._ref_px.get(key[1], 0.0)
        return px

    def _rejected(
        self, strategy: str, instrument: str, code: Reason, detail: str, ts_event: int, now: int,
        signal_id: str = "", coid: str = "",
    ) -> RiskRejected:  # fmt: skip
        return RiskRejected(account=self.account, strategy=strategy, instrument=instrument, reason_code=code.value,
                            detail=detail, ts_event=ts_event, ts_init=now, signal_id=signal_id,
                            client_order_id=coid)  # fmt: skip


def _legs(expected: int, target: int) -> tuple[int, int]:
    """(signed exit qty, signed entry qty) that take ``expected`` to ``target``."""
    if target == expected:
        return 0, 0
    if expected == 0 or ((target > 0) == (expected > 0) and abs(target) > abs(expected)):
        return 0, target - expected
    if target == 0 or (target > 0) == (expected > 0):
        return target - expected, 0
    return -expected, target


def _chunks(qty: int, inst: Instrument) -> list[int]:
    """``qty`` split into orders of at most the freeze quantity, in whole lots."""
    lot = inst.lot_size
    size = qty if inst.freeze_qty is None or inst.freeze_qty <= 0 else max(lot, inst.freeze_qty // lot * lot)
    sizes = [size] * (qty // size)
    if qty % size:
        sizes.append(qty % size)
    return sizes
