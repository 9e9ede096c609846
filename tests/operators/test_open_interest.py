"""OiTracker buildup, thresholds, throttle and references; OptionChain PCR, max pain and ATM."""

from __future__ import annotations

import doctest
import pickle
from datetime import date
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.brokers.universe import build_universe
from operators import open_interest
from operators.open_interest import OiTracker, OptionChain, classify_buildup, option_chains
from schemas.analytics import Buildup
from schemas.market import Instrument, InstrumentType, Tick

SEC = 1_000_000_000
DAY = 86_400 * SEC
T0 = 1_795_000_000 * SEC  # some IST session; all ticks below stay inside it unless they add DAY
FUT = "NFO:NIFTY26NOVFUT"


def tracker(**kw: float) -> OiTracker:
    t = OiTracker(FUT, **{"min_interval_ns": 0, **kw})  # type: ignore[arg-type]
    t.set_reference(100.0, 1000, ts_event=T0)
    return t


# ---------------------------------------------------------------- buildup classification


@pytest.mark.parametrize(
    ("ltp", "oi", "expected"),
    [
        (101.0, 1100, Buildup.LONG_BUILDUP),
        (99.0, 1100, Buildup.SHORT_BUILDUP),
        (99.0, 900, Buildup.LONG_UNWINDING),
        (101.0, 900, Buildup.SHORT_COVERING),
        (100.0, 1100, Buildup.NEUTRAL),  # OI up, price flat
        (101.0, 1000, Buildup.NEUTRAL),  # price up, OI flat
        (100.05, 1100, Buildup.NEUTRAL),  # price +0.05% is under the 0.1% threshold
        (101.0, 1004, Buildup.NEUTRAL),  # OI +0.4% is under the 0.5% threshold
        (100.1, 1005, Buildup.LONG_BUILDUP),  # exactly at both thresholds counts
        (99.9, 995, Buildup.LONG_UNWINDING),
    ],
)
def test_buildup_table(ltp: float, oi: int, expected: Buildup) -> None:
    e = tracker().update(ltp, oi, T0 + 1)
    assert e is not None
    assert e.buildup is expected
    assert e.price_change == pytest.approx(ltp - 100.0)
    assert e.oi_change == oi - 1000
    assert e.oi_change_pct == pytest.approx((oi - 1000) / 10)


@pytest.mark.parametrize(
    ("p", "o", "expected"),
    [
        (1, 1, "LONG_BUILDUP"),
        (-1, 1, "SHORT_BUILDUP"),
        (-1, -1, "LONG_UNWINDING"),
        (1, -1, "SHORT_COVERING"),
        (0, 1, "NEUTRAL"),
        (1, 0, "NEUTRAL"),
        (0, 0, "NEUTRAL"),
        (-1, 0, "NEUTRAL"),
        (0, -1, "NEUTRAL"),
    ],
)
def test_classify_buildup(p: int, o: int, expected: str) -> None:
    assert classify_buildup(p, o) == expected


def test_hysteresis_holds_a_verdict_until_half_the_threshold() -> None:
    t = tracker(min_price_change_pct=1.0, min_oi_change_pct=1.0, keep_ratio=0.5)
    steps = [
        (100.5, 1020, Buildup.NEUTRAL),  # OI +2% is up; price +0.5% has not reached 1%
        (101.0, 1020, Buildup.LONG_BUILDUP),  # now it has
        (100.6, 1020, Buildup.LONG_BUILDUP),  # +0.6% >= 0.5%: held
        (100.4, 1020, Buildup.NEUTRAL),  # +0.4% < 0.5%: released
        (100.6, 1020, Buildup.NEUTRAL),  # must reach 1% again
        (99.0, 1006, Buildup.SHORT_BUILDUP),  # OI +0.6% still holds "up"; price -1% is down
        (99.0, 1004, Buildup.NEUTRAL),  # OI +0.4% releases it
    ]
    seen = []
    for i, (ltp, oi, _) in enumerate(steps):
        t.update(ltp, oi, T0 + i)
        seen.append(t.buildup)
    assert seen == [b for _, _, b in steps]


def test_keep_ratio_one_disables_hysteresis() -> None:
    t = tracker(min_price_change_pct=1.0, keep_ratio=1.0)
    t.update(101.0, 1100, T0 + 1)
    held = t.buildup
    t.update(100.9, 1100, T0 + 2)
    assert (held, t.buildup) == (Buildup.LONG_BUILDUP, Buildup.NEUTRAL)


def test_zero_reference_oi_counts_any_change_and_has_no_percentage() -> None:
    t = OiTracker(FUT, min_interval_ns=0)
    t.set_reference(100.0, 0, ts_event=T0)
    e = t.update(101.0, 1, T0 + 1)
    assert e is not None
    assert (e.buildup, e.oi_change, e.oi_change_pct) == (Buildup.LONG_BUILDUP, 1, None)


# ---------------------------------------------------------------- emission and throttle


def test_emits_only_when_oi_or_buildup_changes() -> None:
    t = tracker()
    assert t.update(101.0, 1100, T0 + 1) is not None
    assert t.update(101.5, 1100, T0 + 2) is None  # price moved, same OI, same buildup
    assert t.update(102.0, 1101, T0 + 3) is not None  # OI changed
    e = t.update(98.0, 1101, T0 + 4)  # buildup changed
    assert e is not None
    assert e.buildup is Buildup.SHORT_BUILDUP


def test_throttle_is_event_time_and_releases_a_suppressed_change() -> None:
    t = tracker(min_interval_ns=5 * SEC)
    assert t.update(101.0, 1100, T0) is not None
    assert t.update(101.0, 1200, T0 + 1 * SEC) is None  # changed, inside the interval
    assert t.update(101.0, 1200, T0 + 4 * SEC) is None
    e = t.update(101.0, 1200, T0 + 5 * SEC)  # first update at the interval carries the change
    assert e is not None
    assert (e.oi, e.ts_event) == (1200, T0 + 5 * SEC)
    assert t.update(101.0, 1200, T0 + 20 * SEC) is None  # nothing changed since


def test_time_going_backwards_does_not_emit() -> None:
    t = tracker(min_interval_ns=SEC)
    assert t.update(101.0, 1100, T0 + 10 * SEC) is not None
    assert t.update(99.0, 1100, T0 + 5 * SEC) is None


def test_on_tick_keeps_the_ticks_ts_init() -> None:
    tick = Tick(
        instrument=FUT,
        ts_event=T0 + 1,
        ts_init=T0 + 7,
        seq=1,
        ltp=101.0,
        last_qty=75,
        volume=75,
        oi=1100,
        bid=100.95,
        ask=101.05,
        bid_qty=1,
        ask_qty=1,
    )
    e = tracker().on_tick(tick)
    assert e is not None
    assert (e.instrument, e.ts_event, e.ts_init) == (FUT, T0 + 1, T0 + 7)


# ---------------------------------------------------------------- references and sessions


def test_first_tick_is_the_reference_without_history() -> None:
    t = OiTracker(FUT, min_interval_ns=0)
    e = t.update(100.0, 1000, T0)
    assert e is not None
    assert (e.buildup, e.price_change, e.oi_change, e.oi_change_pct) == (Buildup.NEUTRAL, 0.0, 0, 0.0)
    assert t.reference == (100.0, 1000)


def test_next_session_measures_against_the_previous_sessions_last_tick() -> None:
    t = OiTracker(FUT, min_interval_ns=0)
    t.update(100.0, 1000, T0)
    t.update(110.0, 1500, T0 + 3600 * SEC)
    e = t.update(108.0, 1600, T0 + DAY)
    assert t.reference == (110.0, 1500)
    assert e is not None
    assert (e.buildup, e.oi_change) == (Buildup.SHORT_BUILDUP, 100)


def test_explicit_reference_wins_and_applies_only_to_its_session() -> None:
    t = OiTracker(FUT, min_interval_ns=0)
    t.update(100.0, 1000, T0)
    t.set_reference(120.0, 2000, ts_event=T0 + DAY)  # next session's previous close, set ahead
    assert t.reference == (100.0, 1000)
    t.update(121.0, 2100, T0 + DAY)
    assert t.reference == (120.0, 2000)
    t.set_reference(90.0, 500, ts_event=T0 + DAY + 1)  # same session: takes effect now
    assert t.reference == (90.0, 500)


def test_ticks_of_an_earlier_session_and_bad_values_are_ignored() -> None:
    t = tracker()
    t.update(101.0, 1100, T0 + DAY)
    assert t.update(50.0, 10, T0) is None
    for ltp, oi in [(0.0, 1000), (-1.0, 1000), (float("nan"), 1000), (float("inf"), 1000), (101.0, -1)]:
        assert t.update(ltp, oi, T0 + DAY + 1) is None
    assert t.reference == (101.0, 1100)


@pytest.mark.parametrize(
    "kw",
    [
        {"min_price_change_pct": -1.0},
        {"min_oi_change_pct": -0.1},
        {"keep_ratio": 0.0},
        {"keep_ratio": 1.5},
        {"min_interval_ns": -1},
    ],
)
def test_bad_configuration_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        OiTracker(FUT, **kw)  # type: ignore[arg-type]


def test_tracker_pickles_mid_session() -> None:
    a = tracker(min_interval_ns=SEC)
    a.update(101.0, 1100, T0)
    b = pickle.loads(pickle.dumps(a))
    for i, (ltp, oi) in enumerate([(99.0, 1200), (98.0, 1100), (102.0, 900)], start=1):
        assert a.update(ltp, oi, T0 + i * SEC) == b.update(ltp, oi, T0 + i * SEC)


# ---------------------------------------------------------------- option chain


def option(strike: float, kind: str, underlying: str = "NSE:NIFTY 50", expiry: str = "2026-11-17") -> Instrument:
    sym = f"X{expiry}{strike:g}{kind}"
    return Instrument(
        instrument=f"NFO:{sym}",
        instrument_token=1,
        exchange_token=1,
        tradingsymbol=sym,
        name="X",
        exchange="NFO",
        segment="NFO-OPT",
        instrument_type=InstrumentType(kind),
        tick_size=0.05,
        lot_size=75,
        expiry=expiry,
        strike=strike,
        underlying=underlying,
    )


def brute_force(strikes: list[float], calls: list[int], puts: list[int]) -> tuple[Fraction | None, float | None]:
    total_calls, total_puts = sum(calls), sum(puts)
    pcr = Fraction(total_puts, total_calls) if total_calls else None
    if total_calls + total_puts == 0:
        return pcr, None
    best: tuple[Fraction, float] | None = None
    for s in sorted(strikes):
        pay = sum(
            (
                c * max(Fraction(0), Fraction(s) - Fraction(k)) + p * max(Fraction(0), Fraction(k) - Fraction(s))
                for k, c, p in zip(strikes, calls, puts, strict=True)
            ),
            Fraction(0),
        )
        if best is None or pay < best[0]:
            best = (pay, s)
    assert best is not None
    return pcr, best[1]


@st.composite
def chains(draw: st.DrawFn) -> tuple[list[float], list[int], list[int]]:
    # Half-rupee grid: exact in binary, like every NSE strike (multiples of 0.5 and up).
    halves = draw(st.lists(st.integers(1, 200_000), min_size=1, max_size=40, unique=True))
    strikes = [h / 2 for h in halves]
    oi = st.one_of(st.just(0), st.integers(0, 50), st.integers(0, 10**8))
    calls = draw(st.lists(oi, min_size=len(strikes), max_size=len(strikes)))
    puts = draw(st.lists(oi, min_size=len(strikes), max_size=len(strikes)))
    return strikes, calls, puts


def fill(strikes: list[float], calls: list[int], puts: list[int], order: list[int] | None = None) -> OptionChain:
    chain = OptionChain("NSE:NIFTY 50", "2026-11-17", [o for k in strikes for o in (option(k, "CE"), option(k, "PE"))])
    updates = [(option(k, "CE").instrument, c) for k, c in zip(strikes, calls, strict=True)]
    updates += [(option(k, "PE").instrument, p) for k, p in zip(strikes, puts, strict=True)]
    for i in order if order is not None else range(len(updates)):
        chain.update(*updates[i % len(updates)], ts_event=T0 + i)
    return chain


@given(chains())
def test_pcr_and_max_pain_match_brute_force(chain_data: tuple[list[float], list[int], list[int]]) -> None:
    strikes, calls, puts = chain_data
    chain = fill(strikes, calls, puts)
    pcr, max_pain = brute_force(strikes, calls, puts)
    assert chain.pcr == (None if pcr is None else pytest.approx(float(pcr), rel=1e-15))
    assert chain.max_pain == max_pain
    s = chain.stats(T0)
    assert (s.call_oi, s.put_oi, s.strikes, s.max_pain) == (sum(calls), sum(puts), len(strikes), max_pain)


@given(chains(), st.data())
def test_overwrites_in_any_order_end_in_the_same_state(
    chain_data: tuple[list[float], list[int], list[int]], data: st.DataObject
) -> None:
    strikes, calls, puts = chain_data
    # First some junk OI for every contract, then the real values in a shuffled order.
    junk = fill(strikes, [c + 7 for c in calls], [p + 3 for p in puts])
    real = [(option(k, "CE").instrument, c) for k, c in zip(strikes, calls, strict=True)]
    real += [(option(k, "PE").instrument, p) for k, p in zip(strikes, puts, strict=True)]
    for inst, oi in data.draw(st.permutations(real)):
        junk.update(inst, oi, T0)
    assert (junk.call_oi, junk.put_oi) == (sum(calls), sum(puts))
    assert junk.max_pain == brute_force(strikes, calls, puts)[1]


def test_max_pain_examples() -> None:
    strikes = [100.0, 110.0, 120.0, 130.0]
    # Payouts: 100 -> 3000, 110 -> 600 + 2000, 120 -> 1700 + 1000, 130 -> 2800 + 0.
    assert fill(strikes, [60, 50, 0, 0], [0, 0, 0, 100]).max_pain == 110.0
    assert fill(strikes, [10, 0, 0, 0], [0, 0, 100, 100]).max_pain == 130.0
    assert fill(strikes, [0, 0, 0, 0], [0, 0, 0, 0]).max_pain is None
    assert fill(strikes, [0, 0, 0, 5], [0, 0, 0, 0]).max_pain == 100.0  # only calls: lowest strike pays nothing
    assert fill(strikes, [0, 0, 0, 0], [0, 5, 0, 0]).max_pain == 110.0  # only puts: from their highest strike up
    assert fill(strikes, [1, 0, 0, 0], [0, 1, 0, 0]).max_pain == 100.0  # flat between 100 and 110: the lower


def test_pcr_is_none_without_call_oi() -> None:
    chain = fill([100.0, 110.0], [0, 0], [5, 0])
    assert chain.pcr is None
    assert chain.stats(T0).pcr is None
    assert fill([100.0], [4], [6]).pcr == 1.5


def test_atm_strike_is_the_nearest_listed_strike_lower_on_ties() -> None:
    chain = fill([100.0, 110.0, 120.0], [0, 0, 0], [0, 0, 0])
    assert chain.atm_strike is None
    for price, atm in [(104.9, 100.0), (105.0, 100.0), (105.1, 110.0), (50.0, 100.0), (500.0, 120.0)]:
        chain.update_underlying(price, T0)
        assert chain.atm_strike == atm
    chain.add(option(125.0, "CE"))  # listed intraday: the ATM follows
    assert chain.atm_strike == 125.0
    assert chain.stats(T0).underlying_price == 500.0


def test_chain_emits_on_change_throttled_by_event_time() -> None:
    chain = OptionChain(
        "NSE:NIFTY 50",
        "2026-11-17",
        [option(100.0, "CE"), option(100.0, "PE"), option(110.0, "PE")],
        min_interval_ns=5 * SEC,
    )
    ce, pe = option(100.0, "CE").instrument, option(110.0, "PE").instrument
    s = chain.update(ce, 10, T0)
    assert s is not None
    assert (s.call_oi, s.put_oi, s.pcr, s.max_pain, s.ts_event, s.ts_init) == (10, 0, 0.0, 100.0, T0, T0)
    assert chain.update(pe, 30, T0 + SEC) is None  # changed, throttled
    assert chain.update(ce, 10, T0 + 6 * SEC, ts_init=T0 + 7 * SEC) == chain.stats(T0 + 6 * SEC, T0 + 7 * SEC)
    assert chain.update(ce, 10, T0 + 20 * SEC) is None  # unchanged
    assert chain.update_underlying(101.0, T0 + 21 * SEC) is not None  # ATM became known
    assert chain.update_underlying(102.0, T0 + 40 * SEC) is None  # same ATM strike
    assert chain.update("NFO:NOT-IN-CHAIN", 5, T0 + 50 * SEC) is None
    assert chain.update(ce, -1, T0 + 50 * SEC) is None
    assert chain.call_oi == 10


def test_add_keeps_only_this_chains_options() -> None:
    chain = OptionChain("NSE:NIFTY 50", "2026-11-17")
    assert chain.add(option(100.0, "CE"))
    assert chain.add(option(100.0, "CE"))  # again: still a member, nothing duplicated
    assert not chain.add(option(100.0, "CE", expiry="2026-11-24"))
    assert not chain.add(option(100.0, "PE", underlying="NSE:NIFTY BANK"))
    assert chain.strikes == (100.0,)
    assert option(100.0, "CE").instrument in chain
    assert chain.oi_at(100.0) == (0, 0)


def test_option_chains_from_the_simulated_universe() -> None:
    master = build_universe(date(2026, 11, 16), size=500)
    chains = option_chains(master, min_interval_ns=0)
    options = [i for i in master if i.instrument_type in (InstrumentType.CE, InstrumentType.PE)]
    assert sum(len(c.strikes) * 2 for c in chains.values()) == len(options)
    nifty = chains["NSE:NIFTY 50", "2026-11-17"]
    assert all(i.instrument in nifty for i in options if i.name == "NIFTY")
    tick = Tick(
        instrument=options[0].instrument,
        ts_event=T0,
        ts_init=T0 + 1,
        seq=0,
        ltp=10.0,
        last_qty=75,
        volume=75,
        oi=7500,
        bid=9.95,
        ask=10.05,
        bid_qty=1,
        ask_qty=1,
    )
    s = chains[options[0].underlying or "", options[0].expiry or ""].on_tick(tick)
    assert s is not None
    assert s.ts_init == T0 + 1
    assert s.call_oi + s.put_oi == 7500


def test_chain_pickles() -> None:
    chain = fill([100.0, 110.0, 120.0], [5, 1, 0], [0, 2, 9])
    chain.update_underlying(111.0, T0)
    back = pickle.loads(pickle.dumps(chain))
    assert back.stats(T0) == chain.stats(T0)
    ce = option(120.0, "CE").instrument
    assert back.update(ce, 50, T0 + DAY) == chain.update(ce, 50, T0 + DAY)


def test_docstring_examples() -> None:
    assert doctest.testmod(open_interest).failed == 0
