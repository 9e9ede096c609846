"""Open-interest analytics: per-contract buildup and per-chain put-call ratio and max pain.

Two pure, picklable cores; a Bytewax wrapper keys :class:`OiTracker` by instrument and
:class:`OptionChain` by ``(underlying, expiry)``. Time is the events' ``ts_event``: throttles
count event-time nanoseconds, so a backtest replays exactly what ran live.

>>> t = OiTracker("NFO:NIFTY26NOVFUT", min_interval_ns=0)
>>> t.update(24150.0, 1_000_000, ts_event=1).buildup
<Buildup.NEUTRAL: 'NEUTRAL'>
>>> t.update(24250.0, 1_050_000, ts_event=2).buildup
<Buildup.LONG_BUILDUP: 'LONG_BUILDUP'>
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

from schemas.analytics import Buildup, OiChange, OptionChainStats
from schemas.market import Instrument, InstrumentType, Tick

_IST_OFFSET_NS = 19_800 * 10**9  # NSE sessions are IST days (UTC+05:30)
_DAY_NS = 86_400 * 10**9

# Percent changes of tick-grid prices carry float noise (99.9 vs 100 is -0.0999...%); a move of
# exactly the threshold must count, so comparisons allow this much slack (in percent).
_PCT_EPS = 1e-9

_BUILDUP = {
    (1, 1): Buildup.LONG_BUILDUP,
    (-1, 1): Buildup.SHORT_BUILDUP,
    (-1, -1): Buildup.LONG_UNWINDING,
    (1, -1): Buildup.SHORT_COVERING,
}


def _session_day(ts_event: int) -> int:
    return (ts_event + _IST_OFFSET_NS) // _DAY_NS


def classify_buildup(price_dir: int, oi_dir: int) -> Buildup:
    """The buildup for the directions (-1, 0, +1) of the price move and the OI move.

    >>> classify_buildup(-1, 1)
    <Buildup.SHORT_BUILDUP: 'SHORT_BUILDUP'>
    >>> classify_buildup(1, 0)
    <Buildup.NEUTRAL: 'NEUTRAL'>
    """
    return _BUILDUP.get((price_dir, oi_dir), Buildup.NEUTRAL)


def _direction(pct: float, threshold: float, previous: int, keep_ratio: float) -> int:
    """+1/-1 once ``|pct|`` reaches ``threshold``; an existing direction holds down to ``threshold * keep_ratio``."""
    size = abs(pct) + _PCT_EPS
    sign = (pct > 0) - (pct < 0)
    if sign and (size >= threshold or (previous == sign and size >= threshold * keep_ratio)):
        return sign
    return 0


class OiTracker:
    """Buildup of one derivative from its ticks, against the session's reference.

    **Reference.** Price and OI changes are measured against, in order of preference:

    1. the previous session's close price and OI given with :meth:`set_reference` for the
       session (IST day) being traded;
    2. the last tick this tracker saw in an earlier session (OI at the close is exactly the
       standing OI; the last traded price approximates the official close, which for F&O is a
       settlement VWAP, so prefer 1 when the broker supplies it);
    3. the session's first tick, so before any history the buildup is relative to the open.

    **Classification.** A move counts as up or down once its percentage change reaches
    ``min_price_change_pct`` / ``min_oi_change_pct``; an up or down verdict then holds until the
    move falls below ``threshold * keep_ratio`` (hysteresis, so a value hovering on the
    threshold does not flap). With a reference OI of 0 any OI change counts. Price up + OI up is
    long buildup, down + up short buildup, down + down long unwinding, up + down short covering;
    anything else is neutral.

    **Emission.** :meth:`update` returns an :class:`OiChange` when the OI or the buildup differs
    from the last one emitted (a price move alone does not emit), at most once per
    ``min_interval_ns`` of event time; a suppressed change is emitted by the first tick after
    the interval. Ticks from an earlier session than the current one, with a non-positive or
    non-finite price, or a negative OI are ignored.

    >>> t = OiTracker("NFO:NIFTY26NOVFUT", min_interval_ns=1_000)
    >>> t.set_reference(24000.0, 1_000_000, ts_event=0)
    >>> t.update(23900.0, 1_100_000, ts_event=10).buildup
    <Buildup.SHORT_BUILDUP: 'SHORT_BUILDUP'>
    >>> t.update(24100.0, 1_100_000, ts_event=20) is None  # now long buildup, but inside the throttle interval
    True
    >>> e = t.update(24100.0, 950_000, ts_event=2_000)
    >>> e.buildup, e.oi_change, e.oi_change_pct
    (<Buildup.SHORT_COVERING: 'SHORT_COVERING'>, -50000, -5.0)
    """

    __slots__ = (
        "_day",
        "_emitted",
        "_explicit",
        "_last",
        "_last_emit_ns",
        "_oi_dir",
        "_price_dir",
        "_ref_oi",
        "_ref_price",
        "instrument",
        "keep_ratio",
        "min_interval_ns",
        "min_oi_change_pct",
        "min_price_change_pct",
    )

    def __init__(
        self,
        instrument: str,
        *,
        min_price_change_pct: float = 0.1,
        min_oi_change_pct: float = 0.5,
        keep_ratio: float = 0.5,
        min_interval_ns: int = 1_000_000_000,
    ) -> None:
        if not (min_price_change_pct >= 0 and min_oi_change_pct >= 0):
            msg = f"thresholds must be >= 0, got price {min_price_change_pct} and OI {min_oi_change_pct}"
            raise ValueError(msg)
        if not 0 < keep_ratio <= 1:
            msg = f"keep_ratio must be in (0, 1], got {keep_ratio}"
            raise ValueError(msg)
        if min_interval_ns < 0:
            msg = f"min_interval_ns must be >= 0, got {min_interval_ns}"
            raise ValueError(msg)
        self.instrument = instrument
        self.min_price_change_pct = min_price_change_pct
        self.min_oi_change_pct = min_oi_change_pct
        self.keep_ratio = keep_ratio
        self.min_interval_ns = min_interval_ns
        self._day: int | None = None  # IST session day of the latest tick
        self._ref_price = 0.0
        self._ref_oi = 0
        self._explicit: tuple[int, float, int] | None = None  # (session day, close, OI)
        self._last: tuple[float, int] | None = None  # latest (ltp, OI) of the current session
        self._price_dir = 0
        self._oi_dir = 0
        self._emitted: tuple[int, Buildup] | None = None
        self._last_emit_ns: int | None = None

    def set_reference(self, close: float, oi: int, ts_event: int) -> None:
        """The previous session's close price and OI, for the session (IST day) containing ``ts_event``."""
        if not (math.isfinite(close) and close > 0) or oi < 0:
            msg = f"{self.instrument}: reference needs close > 0 and oi >= 0, got close={close} oi={oi}"
            raise ValueError(msg)
        day = _session_day(ts_event)
        self._explicit = (day, close, oi)
        if self._day == day:
            self._ref_price, self._ref_oi = close, oi

    @property
    def reference(self) -> tuple[float, int] | None:
        """``(price, OI)`` changes are measured against, None before the first tick."""
        return None if self._day is None else (self._ref_price, self._ref_oi)

    @property
    def buildup(self) -> Buildup:
        """The classification after the latest tick (emitted or not)."""
        return classify_buildup(self._price_dir, self._oi_dir)

    def on_tick(self, tick: Tick) -> OiChange | None:
        """:meth:`update` from a tick; the event keeps the tick's ``ts_init``."""
        return self.update(tick.ltp, tick.oi, tick.ts_event, tick.ts_init)

    def update(self, ltp: float, oi: int, ts_event: int, ts_init: int | None = None) -> OiChange | None:
        """Fold in one observation; an :class:`OiChange` if one is due (``ts_init`` defaults to ``ts_event``)."""
        if not (math.isfinite(ltp) and ltp > 0) or oi < 0:
            return None
        day = _session_day(ts_event)
        if self._day is None or day > self._day:
            self._start_session(day, ltp, oi)
        elif day < self._day:
            return None
        self._last = (ltp, oi)
        price_change = ltp - self._ref_price
        self._price_dir = _direction(
            price_change / self._ref_price * 100.0, self.min_price_change_pct, self._price_dir, self.keep_ratio
        )
        oi_change = oi - self._ref_oi
        oi_pct: float | None = None
        if self._ref_oi > 0:
            oi_pct = oi_change / self._ref_oi * 100.0
            self._oi_dir = _direction(oi_pct, self.min_oi_change_pct, self._oi_dir, self.keep_ratio)
        else:
            self._oi_dir = (oi_change > 0) - (oi_change < 0)
        buildup = classify_buildup(self._price_dir, self._oi_dir)
        if self._emitted == (oi, buildup):
            return None
        if self._last_emit_ns is not None and ts_event - self._last_emit_ns < self.min_interval_ns:
            return None
        self._emitted = (oi, buildup)
        self._last_emit_ns = ts_event
        return OiChange(
            instrument=self.instrument,
            ts_event=ts_event,
            ts_init=ts_event if ts_init is None else ts_init,
            ltp=ltp,
            price_change=price_change,
            oi=oi,
            oi_change=oi_change,
            oi_change_pct=oi_pct,
            buildup=buildup,
        )

    def _start_session(self, day: int, ltp: float, oi: int) -> None:
        if self._explicit is not None and self._explicit[0] == day:
            _, self._ref_price, self._ref_oi = self._explicit
        elif self._last is not None:  # the previous session's last tick
            self._ref_price, self._ref_oi = self._last
        else:
            self._ref_price, self._ref_oi = ltp, oi
        self._day = day
        self._price_dir = self._oi_dir = 0
        self._emitted = None


class OptionChain:
    """Latest OI per strike of one option chain; put-call ratio, max pain and ATM strike.

    Strikes come from the instrument master (:meth:`add`; the constructor keeps the CE/PE rows
    of this underlying and expiry and ignores the rest), OI from ticks (:meth:`update`). OI is a
    standing quantity, so nothing resets between sessions.

    * ``pcr`` = total put OI / total call OI, ``None`` when call OI is 0 (also when both are 0).
    * ``max_pain`` = the listed strike ``S`` minimising ``sum_k call_oi[k]*max(0, S-k) +
      put_oi[k]*max(0, k-S)``, the lowest such strike on ties, ``None`` when all OI is 0. The
      payout is convex and piecewise linear in ``S`` with slope ``calls at or below - puts
      above`` between strikes, so the minimum is the first strike where call OI at or below
      reaches put OI above: one O(strikes) pass over integers, exact, no strike arithmetic.
    * ``atm_strike`` = the listed strike nearest the underlying's last price (lower on ties).

    :meth:`update` and :meth:`update_underlying` return an :class:`OptionChainStats` when an OI
    value or the ATM strike changed since the last emission, at most once per
    ``min_interval_ns`` of event time (a suppressed change goes out with the first update after
    the interval); :meth:`stats` computes one on demand without touching the throttle.

    >>> from datetime import date
    >>> from connectors.brokers.universe import build_universe
    >>> master = build_universe(date(2026, 11, 16), size=40)
    >>> chain = OptionChain("NSE:NIFTY 50", "2026-11-17", master, min_interval_ns=0)
    >>> chain.strikes[:3]
    (24050.0, 24100.0, 24150.0)
    >>> _ = chain.update("NFO:NIFTY26N1724100PE", 300, ts_event=1)
    >>> s = chain.update("NFO:NIFTY26N1724200CE", 200, ts_event=2)
    >>> s.pcr, s.max_pain, s.call_oi, s.put_oi
    (1.5, 24100.0, 200, 300)
    """

    __slots__ = (
        "_atm",
        "_call_total",
        "_dirty",
        "_last_emit_ns",
        "_oi",
        "_put_total",
        "_slot",
        "_strikes",
        "_underlying_price",
        "expiry",
        "min_interval_ns",
        "underlying",
    )

    def __init__(
        self, underlying: str, expiry: str, instruments: Iterable[Instrument] = (), *, min_interval_ns: int = 1_000_000_000
    ) -> None:
        if min_interval_ns < 0:
            msg = f"min_interval_ns must be >= 0, got {min_interval_ns}"
            raise ValueError(msg)
        self.underlying = underlying
        self.expiry = expiry
        self.min_interval_ns = min_interval_ns
        self._strikes: list[float] = []  # sorted
        self._oi: dict[float, list[int]] = {}  # strike -> [call OI, put OI]
        self._slot: dict[str, tuple[float, int]] = {}  # instrument -> (strike, 0 call / 1 put)
        self._call_total = 0
        self._put_total = 0
        self._underlying_price: float | None = None
        self._atm: float | None = None
        self._dirty = False
        self._last_emit_ns: int | None = None
        for inst in instruments:
            self.add(inst)

    def add(self, inst: Instrument) -> bool:
        """Register an option of this chain (e.g. a strike listed intraday); False if it is not one."""
        if (
            inst.instrument_type not in (InstrumentType.CE, InstrumentType.PE)
            or inst.underlying != self.underlying
            or inst.expiry != self.expiry
            or inst.strike is None
        ):
            return False
        if inst.instrument in self._slot:
            return True
        strike = float(inst.strike)
        if strike not in self._oi:
            bisect.insort(self._strikes, strike)
            self._oi[strike] = [0, 0]
            self._atm = self._nearest_strike()
        self._slot[inst.instrument] = (strike, 0 if inst.instrument_type is InstrumentType.CE else 1)
        return True

    def __contains__(self, instrument: object) -> bool:
        return instrument in self._slot

    @property
    def strikes(self) -> tuple[float, ...]:
        return tuple(self._strikes)

    @property
    def call_oi(self) -> int:
        return self._call_total

    @property
    def put_oi(self) -> int:
        return self._put_total

    @property
    def pcr(self) -> float | None:
        return self._put_total / self._call_total if self._call_total > 0 else None

    @property
    def max_pain(self) -> float | None:
        if self._call_total == 0 and self._put_total == 0:
            return None
        calls_at_or_below, puts_above = 0, self._put_total
        for strike in self._strikes:
            call, put = self._oi[strike]
            calls_at_or_below += call
            puts_above -= put
            if calls_at_or_below >= puts_above:
                return strike
        return self._strikes[-1]  # not reached: no puts lie above the last strike

    @property
    def atm_strike(self) -> float | None:
        return self._atm

    def oi_at(self, strike: float) -> tuple[int, int]:
        """``(call OI, put OI)`` at a listed strike."""
        call, put = self._oi[strike]
        return call, put

    def on_tick(self, tick: Tick) -> OptionChainStats | None:
        """:meth:`update` from an option's tick (the stats keep the tick's ``ts_init``)."""
        return self.update(tick.instrument, tick.oi, tick.ts_event, tick.ts_init)

    def update(self, instrument: str, oi: int, ts_event: int, ts_init: int | None = None) -> OptionChainStats | None:
        """Record an option's OI; stats if due. Unknown instruments and negative OI are ignored."""
        slot = self._slot.get(instrument)
        if slot is None or oi < 0:
            return None
        strike, side = slot
        cell = self._oi[strike]
        delta = oi - cell[side]
        if delta:
            cell[side] = oi
            if side == 0:
                self._call_total += delta
            else:
                self._put_total += delta
            self._dirty = True
        return self._maybe_emit(ts_event, ts_init)

    def update_underlying(self, ltp: float, ts_event: int, ts_init: int | None = None) -> OptionChainStats | None:
        """Record the underlying's last price (for the ATM strike); stats if the ATM strike moved and one is due."""
        if not (math.isfinite(ltp) and ltp > 0):
            return None
        self._underlying_price = ltp
        atm = self._nearest_strike()
        if atm != self._atm:
            self._atm = atm
            self._dirty = True
        return self._maybe_emit(ts_event, ts_init)

    def stats(self, ts_event: int, ts_init: int | None = None) -> OptionChainStats:
        """The chain's statistics now, regardless of the throttle."""
        return OptionChainStats(
            underlying=self.underlying,
            expiry=self.expiry,
            ts_event=ts_event,
            ts_init=ts_event if ts_init is None else ts_init,
            call_oi=self._call_total,
            put_oi=self._put_total,
            pcr=self.pcr,
            max_pain=self.max_pain,
            strikes=len(self._strikes),
            atm_strike=self._atm,
            underlying_price=self._underlying_price,
        )

    def _maybe_emit(self, ts_event: int, ts_init: int | None) -> OptionChainStats | None:
        if not self._dirty:
            return None
        if self._last_emit_ns is not None and ts_event - self._last_emit_ns < self.min_interval_ns:
            return None
        self._dirty = False
        self._last_emit_ns = ts_event
        return self.stats(ts_event, ts_init)

    def _nearest_strike(self) -> float | None:
        price, strikes = self._underlying_price, self._strikes
        if price is None or not strikes:
            return None
        i = bisect.bisect_left(strikes, price)
        if i == 0:
            return strikes[0]
        if i == len(strikes):
            return strikes[-1]
        below, above = strikes[i - 1], strikes[i]
        return below if price - below <= above - price else above


def option_chains(
    instruments: Iterable[Instrument], *, min_interval_ns: int = 1_000_000_000
) -> dict[tuple[str, str], OptionChain]:
    """One :class:`OptionChain` per ``(underlying, expiry)`` of the options in an instrument master.

    >>> from datetime import date
    >>> from connectors.brokers.universe import build_universe
    >>> sorted(option_chains(build_universe(date(2026, 11, 16), size=60)))
    [('NSE:NIFTY 50', '2026-11-17'), ('NSE:NIFTY BANK', '2026-11-24')]
    """
    chains: dict[tuple[str, str], OptionChain] = {}
    for inst in instruments:
        if inst.instrument_type not in (InstrumentType.CE, InstrumentType.PE) or inst.underlying is None:
            continue
        if inst.expiry is None or inst.strike is None:
            continue
        key = (inst.underlying, inst.expiry)
        chain = chains.get(key)
        if chain is None:
            chain = chains[key] = OptionChain(inst.underlying, inst.expiry, min_interval_ns=min_interval_ns)
        chain.add(inst)
    return chains
