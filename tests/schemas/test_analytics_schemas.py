"""Analytics events survive encode -> decode unchanged, alone and as a tagged union."""

from __future__ import annotations

import doctest

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import analytics
from schemas.analytics import AnalyticsEvent, Buildup, MarketSummary, Mover, OiChange, OptionChainStats
from schemas.codec import codec_for

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
ns = st.integers(0, 2**62)
oi = st.integers(0, 10**9)
names = st.text(max_size=24)

oi_changes = st.builds(
    OiChange,
    instrument=names,
    ts_event=ns,
    ts_init=ns,
    ltp=finite,
    price_change=finite,
    oi=oi,
    oi_change=st.integers(-(10**9), 10**9),
    oi_change_pct=st.none() | finite,
    buildup=st.sampled_from(Buildup),
)
chain_stats = st.builds(
    OptionChainStats,
    underlying=names,
    expiry=names,
    ts_event=ns,
    ts_init=ns,
    call_oi=oi,
    put_oi=oi,
    pcr=st.none() | finite,
    max_pain=st.none() | finite,
    strikes=st.integers(0, 500),
    atm_strike=st.none() | finite,
    underlying_price=st.none() | finite,
)
movers = st.lists(st.builds(Mover, names, finite, oi), max_size=10).map(tuple)
summaries = st.builds(
    MarketSummary,
    timeframe=names,
    ts_event=ns,
    ts_init=ns,
    gainers=movers,
    losers=movers,
    most_active=movers,
    advances=oi,
    declines=oi,
    unchanged=oi,
)
events = st.one_of(oi_changes, chain_stats, summaries)


@pytest.mark.parametrize(
    ("tp", "strategy"),
    [(OiChange, oi_changes), (OptionChainStats, chain_stats), (MarketSummary, summaries)],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_round_trip(tp: type, strategy: st.SearchStrategy[msgspec.Struct]) -> None:
    codec = codec_for(tp)

    @given(strategy)
    def check(value: msgspec.Struct) -> None:
        assert codec.decode(codec.encode(value)) == value

    check()


@given(events)
def test_union_round_trip_keeps_the_type(value: msgspec.Struct) -> None:
    codec = codec_for(AnalyticsEvent)
    back = codec.decode(codec.encode(value))
    assert type(back) is type(value)
    assert back == value


def test_mover_is_an_array_on_the_wire_and_volume_is_optional() -> None:
    assert codec_for(Mover).encode(Mover("NSE:INFY", 1.5, 20)) == b'["NSE:INFY",1.5,20]'
    assert codec_for(Mover).decode(b'["NSE:INFY",-0.5]') == Mover("NSE:INFY", -0.5, 0)


def test_events_are_tagged_frozen_and_undefined_values_are_null() -> None:
    s = OptionChainStats(
        underlying="NSE:NIFTY 50",
        expiry="2026-11-17",
        ts_event=1,
        ts_init=2,
        call_oi=0,
        put_oi=10,
        pcr=None,
        max_pain=24100.0,
        strikes=5,
    )
    wire = msgspec.json.decode(codec_for(OptionChainStats).encode(s))
    assert wire["type"] == "OptionChainStats"
    assert wire["pcr"] is None
    assert wire["atm_strike"] is None
    with pytest.raises(AttributeError):
        s.pcr = 1.0  # type: ignore[misc]
    assert msgspec.structs.replace(s, call_oi=5).call_oi == 5


def test_buildup_values_are_stable_codes() -> None:
    assert [b.value for b in Buildup] == [
        "LONG_BUILDUP",
        "SHORT_BUILDUP",
        "LONG_UNWINDING",
        "SHORT_COVERING",
        "NEUTRAL",
    ]


def test_docstring_examples() -> None:
    assert doctest.testmod(analytics).failed == 0
