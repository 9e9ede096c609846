"""Derived market analytics: open-interest buildup, option-chain statistics, market breadth.

These are computed from market data by ``operators.open_interest`` and
``operators.market_summary``; they carry no orders and no money. Ratios and strikes that are
undefined (no call OI, no OI at all, no reference) are ``None`` rather than ``0`` or ``inf``,
so a consumer cannot mistake "unknown" for a value, and the JSON stays valid.

>>> from schemas.analytics import Buildup, OiChange
>>> from schemas.codec import codec_for
>>> e = OiChange(instrument="NFO:NIFTY26NOVFUT", ts_event=1, ts_init=2, ltp=24210.0, price_change=60.0,
...              oi=1_250_000, oi_change=50_000, oi_change_pct=4.1667, buildup=Buildup.LONG_BUILDUP)
>>> codec_for(OiChange).decode(codec_for(OiChange).encode(e)) == e
True
"""

from __future__ import annotations

import enum

import msgspec


class Buildup(enum.StrEnum):
    """What a price move together with an open-interest move suggests traders are doing."""

    LONG_BUILDUP = "LONG_BUILDUP"  # price up, OI up: new longs
    SHORT_BUILDUP = "SHORT_BUILDUP"  # price down, OI up: new shorts
    LONG_UNWINDING = "LONG_UNWINDING"  # price down, OI down: longs closing
    SHORT_COVERING = "SHORT_COVERING"  # price up, OI down: shorts closing
    NEUTRAL = "NEUTRAL"  # either move is inside its threshold


class OiChange(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Open interest and price of one derivative against the session reference.

    ``price_change`` is ``ltp`` minus the reference price and ``oi_change`` is ``oi`` minus the
    reference OI (the previous session's close, else the session's first tick; see
    ``operators.open_interest.OiTracker``). ``oi_change_pct`` is in percent, ``None`` when the
    reference OI is 0 (a contract's first day).
    """

    instrument: str
    ts_event: int
    ts_init: int
    ltp: float
    price_change: float
    oi: int
    oi_change: int
    oi_change_pct: float | None
    buildup: Buildup


class OptionChainStats(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Aggregate open interest of one option chain (one underlying, one expiry).

    ``pcr`` is total put OI over total call OI, ``None`` when call OI is 0. ``max_pain`` is the
    listed strike at which option holders' total intrinsic payout is smallest (lowest such strike
    on ties), ``None`` when the chain has no OI. ``atm_strike`` is the listed strike nearest the
    underlying's last price, ``None`` until a price is known.
    """

    underlying: str  # canonical key, e.g. "NSE:NIFTY 50"
    expiry: str  # ISO date
    ts_event: int
    ts_init: int
    call_oi: int
    put_oi: int
    pcr: float | None
    max_pain: float | None
    strikes: int
    atm_strike: float | None = None
    underlying_price: float | None = None


class Mover(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One ranked instrument: ``[instrument, change_pct, volume]`` on the wire."""

    instrument: str
    change_pct: float  # vs the reference (previous close), in percent
    volume: int = 0  # today's volume over the summary timeframe's closed bars


class MarketSummary(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Market breadth at the close of a ``timeframe`` bar.

    ``gainers`` hold only instruments that are up (best first), ``losers`` only those that are
    down (worst first), ``most_active`` the highest volume; ties go to the instrument name in
    ascending order. ``advances + declines + unchanged`` is the number of instruments seen today.
    """

    timeframe: str
    ts_event: int
    ts_init: int
    gainers: tuple[Mover, ...]
    losers: tuple[Mover, ...]
    most_active: tuple[Mover, ...]
    advances: int
    declines: int
    unchanged: int


class IndicatorSnapshot(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Every indicator of one instrument and timeframe after a candle closed.

    ``values`` maps output names (``ema_9``, ``macd_12_26_9.signal``, see
    ``operators.indicators``) to values; indicators still warming up are absent.
    """

    instrument: str
    timeframe: str
    open_time: int  # of the candle that triggered the update
    ts_event: int  # the candle's close time
    ts_init: int
    values: dict[str, float]


class PatternSignal(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A candlestick pattern completed by a closed candle; ``signal`` as TA-Lib: ±100 (±80 weaker)."""

    instrument: str
    timeframe: str
    open_time: int
    ts_event: int
    ts_init: int
    pattern: str
    signal: int


AnalyticsEvent = OiChange | OptionChainStats | MarketSummary | IndicatorSnapshot | PatternSignal
