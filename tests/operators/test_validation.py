"""Table tests of the ingest validator: every reject reason, and the valid path."""

from __future__ import annotations

import math

import msgspec
import pytest

from operators.validation import TickValidator
from schemas.market import DepthLevel, DepthSnapshot, RejectReason, Tick

DAY0 = 1_763_610_300 * 10**9  # 2025-11-20 09:15 IST


def tick(**kw: object) -> Tick:
    base = dict(
        instrument="NSE:INFY",
        ts_event=DAY0,
        ts_init=DAY0,
        seq=1,
        ltp=1500.0,
        last_qty=1,
        volume=100,
        oi=0,
        bid=1499.9,
        ask=1500.1,
        bid_qty=5,
        ask_qty=5,
    )
    base.update(kw)
    return Tick(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"instrument": "NSE:NOPE"}, RejectReason.UNKNOWN_INSTRUMENT),
        ({"ltp": 0.0}, RejectReason.NON_POSITIVE_PRICE),
        ({"ltp": -1.0}, RejectReason.NON_POSITIVE_PRICE),
        ({"ltp": math.nan}, RejectReason.NON_FINITE),
        ({"ltp": math.inf}, RejectReason.NON_FINITE),
        ({"bid": math.nan}, RejectReason.NON_FINITE),
        ({"ask": -math.inf}, RejectReason.NON_FINITE),
        ({"last_qty": -1}, RejectReason.NEGATIVE_QUANTITY),
        ({"oi": -5}, RejectReason.NEGATIVE_QUANTITY),
        ({"ask_qty": -1}, RejectReason.NEGATIVE_QUANTITY),
        ({"bid": 1500.2, "ask": 1500.1}, RejectReason.CROSSED_BOOK),
    ],
)
def test_tick_rejects(fields: dict, reason: RejectReason) -> None:
    verdict = TickValidator({"NSE:INFY"}).check(tick(**fields))
    assert verdict is not None and verdict[0] is reason and verdict[1]


def test_valid_tick_passes_and_volume_is_per_ist_day() -> None:
    v = TickValidator({"NSE:INFY"})
    assert v.check(tick(volume=100)) is None
    assert v.check(tick(volume=100, seq=2)) is None  # equal volume is fine
    back = v.check(tick(volume=99, seq=3))
    assert back is not None and back[0] is RejectReason.VOLUME_BACKWARDS
    next_day = DAY0 + 86_400 * 10**9
    assert v.check(tick(volume=5, ts_event=next_day, ts_init=next_day)) is None  # volume restarts each day


def depth(bids: list[float], asks: list[float], qty: int = 10) -> DepthSnapshot:
    return DepthSnapshot(
        instrument="NSE:INFY",
        ts_event=DAY0,
        ts_init=DAY0,
        bids=tuple(DepthLevel(p, qty, 1) for p in bids),
        asks=tuple(DepthLevel(p, qty, 1) for p in asks),
        total_bid_qty=0,
        total_ask_qty=0,
    )


def with_level(book: DepthSnapshot, side: str, k: int, **change: int) -> DepthSnapshot:
    levels = list(getattr(book, side + "s"))
    levels[k] = msgspec.structs.replace(levels[k], **change)
    return msgspec.structs.replace(book, **{side + "s": tuple(levels)})


@pytest.mark.parametrize(
    ("book", "reason", "where"),
    [
        (depth([10.0, math.nan, 9.8], [10.1]), RejectReason.NON_POSITIVE_PRICE, "bid[1]"),
        (depth([10.0, 9.9], [10.1, 0.0]), RejectReason.NON_POSITIVE_PRICE, "ask[1]"),
        (depth([10.0], [math.inf]), RejectReason.NON_POSITIVE_PRICE, "ask[0]"),
        (depth([10.0], [10.1], qty=-1), RejectReason.NEGATIVE_QUANTITY, "bid[0]"),
        (depth([10.2], [10.1]), RejectReason.CROSSED_BOOK, "best bid"),
        # The fast path's minimum skips a NaN after a number, and a sum catches it only if finite.
        (depth([math.nan, 10.0], [10.1]), RejectReason.NON_POSITIVE_PRICE, "bid[0]"),
        (depth([10.0], [10.1, math.nan]), RejectReason.NON_POSITIVE_PRICE, "ask[1]"),
        (depth([10.0], [10.1, -math.inf]), RejectReason.NON_POSITIVE_PRICE, "ask[1]"),
        (with_level(depth([10.0], [10.1, 10.2, 10.3]), "ask", 2, orders=-1), RejectReason.NEGATIVE_QUANTITY, "ask[2]"),
    ],
)
def test_depth_rejects(book: DepthSnapshot, reason: RejectReason, where: str) -> None:
    verdict = TickValidator({"NSE:INFY"}).check_depth(book)
    assert verdict is not None and verdict[0] is reason and where in verdict[1]


def test_valid_depth_passes() -> None:
    assert TickValidator({"NSE:INFY"}).check_depth(depth([10.0, 9.9, 9.8], [10.1, 10.2])) is None
    # Finite positive prices whose sum overflows to inf: the fast path doubts them, the level
    # check clears them (validation never raises).
    assert TickValidator({"NSE:INFY"}).check_depth(depth([1e308, 1e308], [1.5e308, 1.6e308])) is None
    assert TickValidator({"NSE:INFY"}).check_depth(depth([], [10.1])) is None  # one-sided book
