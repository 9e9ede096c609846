"""The desk's merge order (flows.trading.MergeOrder) against the plain tuple sort it replaces."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flows.pipeline import Decided
from flows.trading import MergeOrder
from schemas.control import Halt
from schemas.market import Tick
from schemas.orders import TargetPosition

T0 = 1_763_610_300 * 10**9
NAMES = ("NSE:A", "NSE:AB", "NSE:B", "NFO:NIFTY26NOV24500CE", "NSE:Z", "BSE:A")
times = st.integers(-3, 6).map(lambda k: T0 + k * 10**9)  # few distinct times: ties everywhere


def _tick(instrument: str, ts: int, seq: int) -> Tick:
    return Tick(instrument=instrument, ts_event=ts, ts_init=ts, seq=seq, ltp=100.0, last_qty=1, volume=0, oi=0,
                bid=100.0, ask=100.0, bid_qty=0, ask_qty=0)  # fmt: skip


def _target(at: int, instrument: str, strategy: str) -> TargetPosition:
    return TargetPosition(strategy=strategy, account="a", instrument=instrument, target_qty=1, ts_event=at,
                          ts_init=at, signal_id=f"{strategy}|{instrument}|{at}", reason="test")  # fmt: skip


@st.composite
def batches(draw: st.DrawFn, names: tuple[str, ...] = NAMES) -> tuple[list[list[Tick]], list[Decided], list[Any]]:
    """Runs as the instrument steps emit them: each instrument's ticks in feed order (rising seq,
    any event times), possibly split into several runs, runs of different instruments in any order."""
    runs: list[tuple[int, list[Tick]]] = []
    for name in draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))):
        stamps = draw(st.lists(times, min_size=1, max_size=8))
        ticks = [_tick(name, ts, 10 + 3 * k) for k, ts in enumerate(stamps)]
        cut = draw(st.integers(1, len(ticks)))
        place = draw(st.integers(0, 50))
        runs.append((place, ticks[:cut]))
        if ticks[cut:]:
            runs.append((place + draw(st.integers(0, 50)), ticks[cut:]))
    runs.sort(key=lambda r: r[0])  # a stable shuffle: one instrument's runs keep their order
    picks = draw(st.lists(st.tuples(times, st.sampled_from(names), st.sampled_from(("s1", "s10", "s2")))))
    decided = [Decided(at, _target(at, i, s)) for at, i, s in picks]
    commands = [
        Halt(command_id=cid, account="a", issued_by="t", ts_event=ts, ts_init=ts, reason="")
        for ts, cid in draw(st.lists(st.tuples(times, st.sampled_from(("c1", "c2", "c10")))))
    ]
    return [part for _, part in runs], decided, commands


def _reference(runs: list[list[Tick]], decided: list[Decided], commands: list[Any]) -> list[Any]:
    """(event time, decision 0 / tick 1 / command 2, instrument, seq / strategy / command id), stable."""
    items: list[tuple[int, int, str, Any, Any]] = [(t.ts_event, 1, t.instrument, t.seq, t) for r in runs for t in r]
    items += [(d.at, 0, d.target.instrument, d.target.strategy, d) for d in decided]
    items += [(c.ts_event, 2, "", c.command_id, c) for c in commands]
    items.sort(key=lambda x: x[:4])
    return [x[4] for x in items]


@settings(max_examples=300, deadline=None)
@given(first=batches(), second=batches(names=("NSE:AA", "NSE:A", "MCX:GOLD", "NSE:ZZ")))
def test_the_int_keys_give_the_tuple_order(first: tuple, second: tuple) -> None:
    order = MergeOrder()  # one per desk, across batches: the second batch brings new names
    for runs, decided, commands in (first, second):
        if runs or decided or commands:
            got = order.order(runs, decided, commands)
            assert [id(v) for v in got] == [id(v) for v in _reference(runs, decided, commands)]


def test_a_decision_comes_before_the_tick_that_closed_its_candle() -> None:
    closing = _tick("NSE:B", T0 + 60 * 10**9, 7)
    before = _tick("NSE:Z", closing.ts_event - 1, 3)
    decided = [Decided(closing.ts_event, _target(closing.ts_event, "NSE:A", "s"))]
    got = MergeOrder().order([[closing], [before]], decided, [])
    assert [type(v).__name__ for v in got] == ["Tick", "Decided", "Tick"] and got[0] is before
