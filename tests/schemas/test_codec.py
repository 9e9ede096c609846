"""Every event type survives encode -> decode unchanged; decode errors name their record."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import control, market, orders, risk
from schemas.codec import DecodeError, codec_for
from schemas.topics import CatalogError, load_catalog, parse_catalog

EVENT_TYPES = [
    market.Instrument,
    market.Tick,
    market.DepthSnapshot,
    market.Candle,
    market.RejectedEvent,
    orders.TargetPosition,
    orders.OrderUpdate,
    orders.Fill,
    orders.Position,
    risk.RiskRejected,
    risk.TradingStateChanged,
    risk.StrategyError,
    control.EnableStrategy,
    control.DisableStrategy,
    control.Halt,
    control.Resume,
    control.ManualOrder,
]

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


def _strategy_for(tp: type) -> st.SearchStrategy:
    return st.builds(tp, **{f.name: _field_strategy(f.type) for f in msgspec.structs.fields(tp)})


def _field_strategy(tp: object) -> st.SearchStrategy:
    if tp is float:
        return finite
    if tp == float | None:
        return st.none() | finite
    if tp is str:
        return st.text(max_size=20)
    if tp == str | None:
        return st.none() | st.text(max_size=20)
    if tp is int:
        return st.integers(-(2**62), 2**62)
    if tp == int | None:
        return st.none() | st.integers(0, 10**9)
    if tp is bool:
        return st.booleans()
    if tp == tuple[market.DepthLevel, ...]:
        return st.lists(st.builds(market.DepthLevel, finite, st.integers(0, 10**9), st.integers(0, 10**6)), max_size=5).map(
            tuple
        )
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return _strategy_for(tp)
    try:
        return st.sampled_from(list(tp))  # enums
    except TypeError:
        pass
    msg = f"no strategy for {tp!r}"
    raise AssertionError(msg)


@pytest.mark.parametrize("tp", EVENT_TYPES, ids=lambda t: t.__name__)
def test_round_trip(tp: type) -> None:
    codec = codec_for(tp)

    @given(_strategy_for(tp))
    def check(ev: object) -> None:
        assert codec.decode(codec.encode(ev)) == ev

    check()


def test_union_topics_round_trip_every_member() -> None:
    cat = load_catalog()
    codec = codec_for(cat["ctl.commands"].value_type)
    cmd = control.ConfigureStrategy(
        command_id="c1",
        account="paper",
        issued_by="op",
        ts_event=1,
        ts_init=2,
        strategy="ema_crossover",
        params={"fast": 9, "slow": 21},
    )
    assert codec.decode(codec.encode(cmd)) == cmd
    codec = codec_for(cat["risk.events"].value_type)
    ev = risk.TradingStateChanged(
        account="paper",
        previous=risk.TradingState.ACTIVE,
        current=risk.TradingState.HALTED,
        reason="kill switch",
        ts_event=1,
        ts_init=1,
    )
    assert codec.decode(codec.encode(ev)) == ev


def test_decode_error_names_topic_partition_offset() -> None:
    codec = codec_for(market.Tick)
    with pytest.raises(DecodeError) as info:
        codec.decode(b'{"type":"Tick","instrument":"NSE:INFY"}', topic="md.ticks", partition=3, offset=42)
    assert "md.ticks[3]@42" in str(info.value)
    assert "missing required field" in str(info.value)
    assert (info.value.topic, info.value.partition, info.value.offset) == ("md.ticks", 3, 42)


def test_nan_never_round_trips_silently() -> None:
    t = market.Tick(
        instrument="X",
        ts_event=1,
        ts_init=1,
        seq=1,
        ltp=math.nan,
        last_qty=0,
        volume=0,
        oi=0,
        bid=1.0,
        ask=1.0,
        bid_qty=0,
        ask_qty=0,
    )
    with pytest.raises(DecodeError):  # NaN encodes as null, which a float field refuses
        codec_for(market.Tick).decode(codec_for(market.Tick).encode(t))


def test_order_intent_rejects_long_client_order_id() -> None:
    with pytest.raises(ValueError, match="client_order_id"):
        orders.OrderIntent(
            client_order_id="x" * 21,
            account="a",
            strategy="s",
            instrument="NSE:INFY",
            side=orders.Side.BUY,
            qty=1,
            order_type=orders.OrderType.MARKET,
            product=orders.Product.MIS,
            ts_event=1,
            ts_init=1,
        )


def test_catalog_has_architecture_topics() -> None:
    cat = load_catalog()
    for name in (
        "md.ticks",
        "md.depth",
        "md.candles",
        "sig.signals",
        "ord.intents",
        "ord.updates",
        "ord.fills",
        "pf.positions",
        "risk.events",
        "ctl.commands",
        "md.dlq",
    ):
        assert name in cat
    assert cat["md.ticks"].key == "instrument"
    assert cat.scoped("bt.r1")["ord.fills"].name == "bt.r1.ord.fills"


def test_catalog_errors_name_the_entry() -> None:
    with pytest.raises(CatalogError, match=r"topics\[0\] \(x\): unknown value type 'Nope'"):
        parse_catalog("topics:\n - {name: x, partitions: 1, key: k, value: Nope, retention_ms: 1, cleanup_policy: delete}")
    with pytest.raises(CatalogError, match="partitions must be >= 1"):
        parse_catalog("topics:\n - {name: x, partitions: 0, key: k, value: Tick, retention_ms: 1, cleanup_policy: delete}")
