"""Market-data validation at the ingest boundary.

A :class:`TickValidator` holds the instrument master and the last cumulative volume per
instrument; every tick or depth snapshot either passes or gets a :class:`RejectReason`
with a human-readable detail. Validation never raises on bad input.

>>> v = TickValidator({"NSE:INFY"})
>>> t = dict(instrument="NSE:INFY", ts_event=1, ts_init=1, seq=1, ltp=-5.0, last_qty=1,
...          volume=10, oi=0, bid=1.0, ask=1.1, bid_qty=1, ask_qty=1)
>>> v.check_raw(t)[1:]
(<RejectReason.NON_POSITIVE_PRICE: 'non_positive_price'>, 'ltp=-5.0 must be > 0')
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable
from typing import Any

import msgspec

from schemas.market import DepthSnapshot, RejectReason, Tick

_IST_OFFSET_NS = 19_800 * 10**9  # NSE days are IST days (UTC+05:30)
_DAY_NS = 86_400 * 10**9
_INF = math.inf
_PRICE, _QTY, _ORDERS = operator.attrgetter("price"), operator.attrgetter("qty"), operator.attrgetter("orders")


class TickValidator:
    """Stateful per-instrument checks; picklable (plain dict/set state)."""

    __slots__ = ("known", "last_volume")

    def __init__(self, known_instruments: Iterable[str]) -> None:
        self.known: frozenset[str] = frozenset(known_instruments)
        self.last_volume: dict[str, tuple[int, int]] = {}  # instrument -> (IST day, volume)

    def __getstate__(self) -> tuple[frozenset[str], dict[str, tuple[int, int]]]:
        return self.known, self.last_volume

    def __setstate__(self, state: tuple[frozenset[str], dict[str, tuple[int, int]]]) -> None:
        self.known, self.last_volume = state

    def check(self, t: Tick) -> tuple[RejectReason, str] | None:
        """None if the tick is valid (and then its volume is remembered)."""
        if t.instrument not in self.known:
            return RejectReason.UNKNOWN_INSTRUMENT, f"instrument {t.instrument!r} is not in the instrument master"
        ltp, bid, ask = t.ltp, t.bid, t.ask
        # One chained comparison per field on the common path (NaN fails every comparison).
        if not (0.0 < ltp < _INF and -_INF < bid < _INF and -_INF < ask < _INF):
            if not (math.isfinite(ltp) and math.isfinite(bid) and math.isfinite(ask)):
                return RejectReason.NON_FINITE, f"ltp={ltp} bid={bid} ask={ask} must be finite"
            return RejectReason.NON_POSITIVE_PRICE, f"ltp={ltp} must be > 0"
        if (t.last_qty | t.volume | t.oi | t.bid_qty | t.ask_qty) < 0:  # any negative int sets the sign bit
            return RejectReason.NEGATIVE_QUANTITY, (
                f"last_qty={t.last_qty} volume={t.volume} oi={t.oi} bid_qty={t.bid_qty} ask_qty={t.ask_qty} must be >= 0"
            )
        if bid > 0 and ask > 0 and bid > ask:
            return RejectReason.CROSSED_BOOK, f"bid={bid} > ask={ask}"
        day = (t.ts_event + _IST_OFFSET_NS) // _DAY_NS  # cumulative volume restarts every trading day
        prev_day, prev = self.last_volume.get(t.instrument, (day, 0))
        if day == prev_day and t.volume < prev:
            return RejectReason.VOLUME_BACKWARDS, f"cumulative volume {t.volume} < previous {prev}"
        self.last_volume[t.instrument] = (day, t.volume)
        return None

    def check_raw(self, raw: Any) -> tuple[Tick | None, RejectReason, str] | tuple[Tick, None, None]:
        """Validate an undecoded payload (dict or JSON bytes) from a feed."""
        try:
            if isinstance(raw, bytes | str):
                tick = msgspec.json.decode(raw, type=Tick)
            else:
                tick = msgspec.convert({"type": "Tick", **raw} if "type" not in raw else raw, Tick)
        except msgspec.ValidationError as exc:
            return None, RejectReason.MALFORMED, str(exc)
        except msgspec.DecodeError as exc:
            return None, RejectReason.MALFORMED, str(exc)
        verdict = self.check(tick)
        if verdict is None:
            return tick, None, None
        return tick, verdict[0], verdict[1]

    def check_depth(self, d: DepthSnapshot) -> tuple[RejectReason, str] | None:
        if d.instrument not in self.known:
            return RejectReason.UNKNOWN_INSTRUMENT, f"instrument {d.instrument!r} is not in the instrument master"
        levels = d.bids + d.asks
        if levels:
            # Fast path: a finite positive sum and minimum prove every price finite and > 0,
            # non-negative minima every quantity and order count; only a failure looks closer.
            prices = list(map(_PRICE, levels))
            counts_ok = min(map(_QTY, levels)) >= 0 and min(map(_ORDERS, levels)) >= 0
            if not (counts_ok and min(prices) > 0.0 and sum(prices) < _INF):
                bad = self._bad_level(d)
                if bad is not None:  # None: finite prices whose sum overflowed
                    return bad
        if d.bids and d.asks and d.bids[0].price > d.asks[0].price:
            return RejectReason.CROSSED_BOOK, f"best bid {d.bids[0].price} > best ask {d.asks[0].price}"
        return None

    @staticmethod
    def _bad_level(d: DepthSnapshot) -> tuple[RejectReason, str] | None:
        """The first bad level of a book the fast path doubted, named by side and index."""
        for side, levels in (("bid", d.bids), ("ask", d.asks)):
            for k, lv in enumerate(levels):
                if not 0.0 < lv.price < _INF:
                    return RejectReason.NON_POSITIVE_PRICE, f"{side}[{k}].price={lv.price} must be finite and > 0"
            for k, lv in enumerate(levels):
                if (lv.qty | lv.orders) < 0:
                    return RejectReason.NEGATIVE_QUANTITY, f"{side}[{k}] qty={lv.qty} orders={lv.orders}"
        return None
