"""CandleBook against an independent oracle: pandas resampling of the same ticks.

The streams are random and include gaps, duplicates (redelivered ticks), late ticks,
out-of-order ticks inside a bar, ticks outside the session and a session boundary. The
oracle classifies ticks with vectorized pandas rules written from the CandleBook
docstring, then resamples each IST day with its origin at 09:15.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.candles import (
    APPLIED,
    DAY_NS,
    DUPLICATE,
    IST_OFFSET_NS,
    LATE,
    OUTSIDE_SESSION,
    CandleBook,
    parse_timeframe,
    parse_timeframes,
    session_bounds,
)
from schemas.market import Candle, Tick

S = 10**9
DAY0_OPEN = 1_763_610_300 * S  # 2025-11-20 09:15:00 IST (a Thursday)
TFS = ("1s", "5s", "1m", "5m", "15m", "75m", "1h", "1d")
INST = "NSE:INFY"


def make_tick(ts: int, seq: int, px: float, vol: int, qty: int = 1, oi: int = 0) -> Tick:
    return Tick(
        instrument=INST,
        ts_event=ts,
        ts_init=ts,
        seq=seq,
        ltp=px,
        last_qty=qty,
        volume=vol,
        oi=oi,
        bid=px,
        ask=px,
        bid_qty=1,
        ask_qty=1,
    )


def random_stream(seed: int, n: int = 6000) -> list[Tick]:
    """Ticks in arrival order over two sessions, with every kind of irregularity."""
    rng = np.random.default_rng(seed)
    out: list[Tick] = []
    seq, vol, px, oi = 0, 0, 1500.0, 10_000
    ts = DAY0_OPEN - 120 * S  # starts in the pre-open: those ticks are outside the session
    day2_open = DAY0_OPEN + DAY_NS
    for i in range(n):
        if i == n // 2:  # session boundary: jump to the next day's pre-open
            ts, vol = day2_open - 30 * S, 0
        r = rng.random()
        if r < 0.01:
            ts += int(rng.integers(60, 1200)) * S  # a gap of minutes
        else:
            ts += int(rng.exponential(1.5) * S)
        seq += 1
        px = round(max(1.0, px * (1 + rng.normal(0, 0.001))), 2)
        q = int(rng.integers(1, 50))
        vol += q
        oi = max(0, oi + int(rng.integers(-50, 51)))
        t = make_tick(ts, seq, px, vol, q, oi)
        out.append(t)
        kind = rng.random()
        if kind < 0.03 and len(out) > 10:  # a redelivered older tick (same seq): duplicate
            out.append(out[-1 - int(rng.integers(1, 10))])
        elif kind < 0.06:  # a late tick: new seq, event time up to 3 minutes ago
            seq += 1
            back = int(rng.integers(0, 180 * S))
            out.append(make_tick(ts - back, seq, round(px * (1 + rng.normal(0, 0.002)), 2), vol, 1, oi))
        elif kind < 0.09:  # out of order by under a second (often inside the open base bar)
            seq += 1
            out.append(make_tick(ts - int(rng.integers(0, S)), seq, round(px + 0.05, 2), vol, 1, oi))
    # a long tail after the close: outside the session
    for k in range(5):
        seq += 1
        out.append(make_tick(day2_open + 6 * 3600 * S + 15 * 60 * S + k * S, seq, px, vol, 1, oi))
    return out


# ----------------------------------------------------------------------------- oracle


def oracle(ticks: list[Tick], tfs: tuple[str, ...]) -> tuple[list[tuple], dict[str, int]]:
    df = pd.DataFrame(
        {
            "ts": [t.ts_event for t in ticks],
            "seq": [t.seq for t in ticks],
            "px": [t.ltp for t in ticks],
            "vol": [t.volume for t in ticks],
            "qty": [t.last_qty for t in ticks],
            "oi": [t.oi for t in ticks],
        }
    )
    df["arrival"] = np.arange(len(df))
    dup = df["seq"] <= df["seq"].cummax().shift(fill_value=-(2**62))
    ist = pd.to_datetime(df["ts"], unit="ns", utc=True).dt.tz_convert("Asia/Kolkata")
    tod = ist - ist.dt.normalize()
    inside = (tod >= pd.Timedelta(hours=9, minutes=15)) & (tod < pd.Timedelta(hours=15, minutes=30))
    base = parse_timeframes(tfs)[0].ns
    day = (df["ts"] + IST_OFFSET_NS) // DAY_NS
    s_open = day * DAY_NS - IST_OFFSET_NS + (9 * 3600 + 15 * 60) * S
    bucket = s_open + (df["ts"] - s_open) // base * base
    cand = ~dup & inside
    floor_prev = bucket.where(cand).cummax().shift().fillna(-(2**62))
    late = cand & (df["ts"] < floor_prev)
    applied = df[cand & ~late].copy()
    counts = {"duplicate": int(dup.sum()), "outside": int((~dup & ~inside).sum()), "late": int(late.sum())}

    # volume deltas over applied ticks, in arrival order
    aday = (applied["ts"] + IST_OFFSET_NS) // DAY_NS
    prev_vol = applied["vol"].shift()
    new_day = aday != aday.shift()
    delta = (applied["vol"] - prev_vol).clip(lower=0)
    delta = delta.where(~new_day, applied["vol"])
    delta.iloc[0] = applied["qty"].iloc[0]
    applied["delta"] = delta.astype(np.int64)
    applied["pv"] = applied["px"] * applied["delta"]
    applied["time"] = pd.to_datetime(applied["ts"], unit="ns", utc=True).dt.tz_convert("Asia/Kolkata")
    applied = applied.sort_values(["ts", "arrival"], kind="stable").set_index("time")

    rows: list[tuple] = []
    for name in tfs:
        tf = parse_timeframe(name)
        for _d, g in applied.groupby(applied.index.normalize()):
            origin = g.index[0].normalize() + pd.Timedelta(hours=9, minutes=15)
            if tf.daily:
                bins = [(origin, g)]
            else:
                rs = g.resample(pd.Timedelta(tf.ns, unit="ns"), origin=origin, label="left", closed="left")
                bins = [(k, b) for k, b in rs if len(b)]
            close_ts = int((origin + pd.Timedelta(hours=6, minutes=15)).value)
            for k, b in bins:
                open_time = int(k.value)
                end = close_ts if tf.daily else min(open_time + tf.ns, close_ts)
                vol = int(b["delta"].sum())
                close = float(b["px"].iloc[-1])
                rows.append(
                    (
                        name,
                        open_time,
                        end,
                        float(b["px"].iloc[0]),
                        float(b["px"].max()),
                        float(b["px"].min()),
                        close,
                        vol,
                        len(b),
                        float(b["pv"].sum()) / vol if vol else close,
                        int(b["oi"].iloc[-1]),
                    )
                )
    return sorted(rows), counts


def as_rows(candles: list[Candle]) -> list[tuple]:
    return sorted(
        (c.timeframe, c.open_time, c.ts_event, c.open, c.high, c.low, c.close, c.volume, c.trade_count, c.vwap, c.oi)
        for c in candles
    )


def run_book(ticks: list[Tick], tfs: tuple[str, ...] = TFS) -> tuple[list[Candle], dict[int, int]]:
    book = CandleBook(INST, tfs)
    out: list[Candle] = []
    outcomes = {APPLIED: 0, DUPLICATE: 0, LATE: 0, OUTSIDE_SESSION: 0}
    for t in ticks:
        outcomes[book.on_tick(t, t.ts_event, out)] += 1
    book.flush(0, out)
    return out, outcomes


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_candles_equal_pandas_oracle(seed: int) -> None:
    ticks = random_stream(seed)
    got, outcomes = run_book(ticks)
    want, counts = oracle(ticks, TFS)
    assert counts["late"] > 20 and counts["duplicate"] > 20 and counts["outside"] > 5  # the stream is not tame
    assert outcomes[DUPLICATE] == counts["duplicate"]
    assert outcomes[LATE] == counts["late"]
    assert outcomes[OUTSIDE_SESSION] == counts["outside"]
    assert all(c.final for c in got)
    rows = as_rows(got)
    drop_vwap = lambda r: r[:9] + r[10:]  # noqa: E731
    assert [drop_vwap(r) for r in rows] == [drop_vwap(r) for r in want]
    np.testing.assert_allclose([r[9] for r in rows], [r[9] for r in want], rtol=1e-12)  # summation order
    # both sessions are present, and no daily bar drifted off 09:15 IST
    daily = [c for c in got if c.timeframe == "1d"]
    assert [session_bounds(c.open_time)[0] for c in daily] == [c.open_time for c in daily]
    assert len(daily) == 2


def test_bars_are_emitted_once_in_order() -> None:
    got, _ = run_book(random_stream(7))
    for tf in TFS:
        times = [c.open_time for c in got if c.timeframe == tf]
        assert times == sorted(set(times)), tf


def test_75_minute_and_hourly_grids_end_at_the_close() -> None:
    ticks = [make_tick(DAY0_OPEN + k * 30 * S, k + 1, 100.0 + k % 7, k + 1) for k in range(0, 750)]  # whole session
    got, _ = run_book(ticks, ("1m", "75m", "1h", "1d"))
    ist = lambda ns: pd.Timestamp(ns, unit="ns", tz="UTC").tz_convert("Asia/Kolkata").strftime("%H:%M")  # noqa: E731
    assert [ist(c.open_time) for c in got if c.timeframe == "75m"] == ["09:15", "10:30", "11:45", "13:00", "14:15"]
    hourly = [c for c in got if c.timeframe == "1h"]
    assert [ist(c.open_time) for c in hourly] == ["09:15", "10:15", "11:15", "12:15", "13:15", "14:15", "15:15"]
    assert ist(hourly[-1].ts_event) == "15:30"  # the last hourly bar is cut at the close
    (daily,) = [c for c in got if c.timeframe == "1d"]
    assert ist(daily.open_time) == "09:15" and ist(daily.ts_event) == "15:30"


def test_timer_closes_idle_bars_and_later_ticks_are_late() -> None:
    book = CandleBook(INST, ("1s", "1m"))
    out: list[Candle] = []
    assert book.on_tick(make_tick(DAY0_OPEN + 10 * S + 5, 1, 10.0, 1), 0, out) == APPLIED
    assert book.next_close_at() == DAY0_OPEN + 11 * S
    book.close_due(DAY0_OPEN + 11 * S - 1, 0, out)
    assert out == []  # not due yet
    book.close_due(DAY0_OPEN + 11 * S, 0, out)
    assert [c.timeframe for c in out] == ["1s"]
    assert book.next_close_at() == DAY0_OPEN + 60 * S
    # a tick for the closed 1s bar arrives after the timer: late, the closed bar is not rewritten
    assert book.on_tick(make_tick(DAY0_OPEN + 10 * S + 7, 2, 11.0, 2), 0, out) == LATE
    assert book.on_tick(make_tick(DAY0_OPEN + 20 * S, 3, 12.0, 3), 0, out) == APPLIED
    book.close_due(DAY0_OPEN + 60 * S, 0, out)
    assert [(c.timeframe, c.high, c.volume, c.trade_count) for c in out] == [
        ("1s", 10.0, 1, 1),
        ("1s", 12.0, 2, 1),  # the late tick's volume shows up in the next applied delta
        ("1m", 12.0, 3, 2),
    ]
    assert book.next_close_at() is None
    # the 1m bar closed by the timer: a tick that belongs to it is late too
    assert book.on_tick(make_tick(DAY0_OPEN + 59 * S, 4, 9.0, 4), 0, out) == LATE


def test_partial_updates_are_throttled_by_event_time() -> None:
    book = CandleBook(INST, ("1s", "1m"), partial_every_ns=250_000_000, partial_timeframes=("1m",))
    out: list[Candle] = []
    for k in range(40):  # 40 ticks, 50 ms apart: 2 s of event time
        book.on_tick(make_tick(DAY0_OPEN + k * 50_000_000, k + 1, 100.0 + k, k + 1), 0, out)
    partials = [c for c in out if not c.final]
    assert len(partials) == 8 and {c.timeframe for c in partials} == {"1m"}
    assert partials[-1].close == 100.0 + 35 and partials[-1].high == 135.0  # includes the open base bar
    assert all(b.ts_event - a.ts_event >= 250_000_000 for a, b in itertools.pairwise(partials))


def test_state_survives_pickling_mid_stream() -> None:
    ticks = random_stream(11, 2000)
    whole, _ = run_book(ticks)
    book = CandleBook(INST, TFS)
    out: list[Candle] = []
    for t in ticks[:900]:
        book.on_tick(t, t.ts_event, out)
    book = pickle.loads(pickle.dumps(book))
    for t in ticks[900:]:
        book.on_tick(t, t.ts_event, out)
    book.flush(0, out)
    assert as_rows(out) == as_rows(whole)


def test_replay_is_byte_identical() -> None:
    from schemas.codec import encode

    ticks = random_stream(5, 3000)
    a, _ = run_book(ticks)
    b, _ = run_book(ticks)
    assert [encode(c) for c in a] == [encode(c) for c in b]


@given(st.lists(st.tuples(st.integers(0, 7200), st.floats(1, 1e5), st.integers(0, 100)), min_size=1, max_size=200))
@settings(max_examples=60, deadline=None)
def test_bars_are_consistent(steps: list[tuple[int, float, int]]) -> None:
    """For any stream: low <= open, close <= high; volumes of coarse bars sum the base bars."""
    ts, vol, ticks = DAY0_OPEN, 0, []
    for k, (dt, px, q) in enumerate(steps):
        ts += dt * 10**7
        vol += q
        ticks.append(make_tick(ts, k + 1, px, vol, q))
    got, _ = run_book(ticks, ("1s", "1m", "1d"))
    for c in got:
        assert c.low <= min(c.open, c.close) and max(c.open, c.close) <= c.high
    by_tf = {tf: sum(c.volume for c in got if c.timeframe == tf) for tf in ("1s", "1m", "1d")}
    assert by_tf["1s"] == by_tf["1m"] == by_tf["1d"]


@pytest.mark.parametrize("bad", ["0s", "7x", "2d", "7h", "", "1.5m"])
def test_bad_timeframes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="timeframe"):
        parse_timeframe(bad)


def test_timeframes_must_nest() -> None:
    with pytest.raises(ValueError, match="multiple"):
        parse_timeframes(["2m", "5m"])
    with pytest.raises(ValueError, match="partial timeframe"):
        CandleBook(INST, ("1m",), partial_timeframes=("5m",))
