"""MarketSummaryBook: ranking, tie-breaking, breadth counts, references, idempotence."""

from __future__ import annotations

import doctest
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators import market_summary
from operators.market_summary import MarketSummaryBook
from schemas.analytics import Mover
from schemas.market import Candle

SEC = 1_000_000_000
MIN = 60 * SEC
DAY = 86_400 * SEC
T0 = 1_795_000_000 * SEC  # inside one IST session; T0 + DAY is the next one


def candle(
    inst: str,
    close: float,
    volume: int = 100,
    *,
    open_: float | None = None,
    t: int = T0,
    tf: str = "1m",
    final: bool = True,
) -> Candle:
    o = close if open_ is None else open_
    return Candle(
        instrument=inst,
        timeframe=tf,
        open_time=t,
        ts_event=t + MIN - 1,
        ts_init=t + MIN,
        open=o,
        high=max(o, close),
        low=min(o, close),
        close=close,
        volume=volume,
        trade_count=1,
        vwap=close,
        oi=0,
        final=final,
    )


def book_with(changes: dict[str, float], volumes: dict[str, int] | None = None, **kw: float) -> MarketSummaryBook:
    """Each instrument at reference 100 and close ``100 + change`` (so change % == change)."""
    book = MarketSummaryBook(**kw)  # type: ignore[arg-type]
    for inst, change in changes.items():
        book.set_reference(inst, 100.0, T0)
        assert book.update(candle(inst, 100.0 + change, (volumes or {}).get(inst, 100)))
    return book


def names(movers: tuple[Mover, ...]) -> list[str]:
    return [m.instrument for m in movers]


def test_ranking_and_counts() -> None:
    book = book_with(
        {"A": 3.0, "B": -1.0, "C": 0.0, "D": 5.0, "E": -4.0, "F": 1.0, "G": 0.0},
        {"A": 10, "B": 70, "C": 30, "D": 20, "E": 70, "F": 5, "G": 0},
        top_n=2,
    )
    s = book.summary("1m", T0 + MIN)
    assert names(s.gainers) == ["D", "A"]
    assert names(s.losers) == ["E", "B"]
    assert names(s.most_active) == ["B", "E"]  # tie on 70: by name
    assert (s.advances, s.declines, s.unchanged) == (3, 2, 2)
    assert s.gainers[0] == Mover("D", pytest.approx(5.0), 20)  # type: ignore[arg-type]
    assert (s.timeframe, s.ts_event, s.ts_init) == ("1m", T0 + MIN, T0 + MIN)
    assert book.summary("1m", T0 + MIN, ts_init=T0 + 2 * MIN).ts_init == T0 + 2 * MIN


def test_ties_go_to_the_instrument_name() -> None:
    book = book_with({"NSE:ZEE": 2.0, "NSE:ABB": 2.0, "NSE:MRF": 2.0, "NSE:ITC": -2.0, "NSE:BEL": -2.0}, top_n=2)
    s = book.summary("1m", T0)
    assert names(s.gainers) == ["NSE:ABB", "NSE:MRF"]
    assert names(s.losers) == ["NSE:BEL", "NSE:ITC"]
    assert names(s.most_active) == ["NSE:ABB", "NSE:BEL"]


def test_gainers_and_losers_hold_only_movers_in_that_direction() -> None:
    s = book_with({"A": 1.0, "B": 0.0, "C": 0.0}, top_n=5).summary("1m", T0)
    assert names(s.gainers) == ["A"]
    assert s.losers == ()
    assert len(s.most_active) == 3


def test_unchanged_band() -> None:
    book = book_with({"A": 0.05, "B": -0.05, "C": 0.2, "D": -0.2}, unchanged_band_pct=0.1)
    s = book.summary("1m", T0)
    assert (s.advances, s.declines, s.unchanged) == (1, 1, 2)
    assert (names(s.gainers), names(s.losers)) == (["C"], ["D"])


def test_top_n_zero_still_counts() -> None:
    s = book_with({"A": 1.0, "B": -1.0}, top_n=0).summary("1m", T0)
    assert (s.gainers, s.losers, s.most_active, s.advances, s.declines) == ((), (), (), 1, 1)


def test_timeframes_are_separate() -> None:
    book = MarketSummaryBook()
    book.set_reference("A", 100.0, T0)
    book.update(candle("A", 101.0, tf="1m"))
    book.update(candle("A", 103.0, tf="5m"))
    assert book.summary("1m", T0).gainers[0].change_pct == pytest.approx(1.0)
    assert book.summary("5m", T0).gainers[0].change_pct == pytest.approx(3.0)
    assert book.summary("15m", T0).advances == 0


# ---------------------------------------------------------------- bars and volume


def test_day_volume_adds_up_and_redelivery_does_not_double_count() -> None:
    book = MarketSummaryBook()
    assert book.update(candle("A", 100.0, 10, t=T0))
    assert book.update(candle("A", 101.0, 20, t=T0 + MIN))
    assert book.update(candle("A", 101.0, 20, t=T0 + MIN))  # redelivered
    assert book.update(candle("A", 102.0, 25, t=T0 + MIN))  # corrected: replaces
    assert not book.update(candle("A", 99.0, 50, t=T0))  # older bar: ignored
    assert not book.update(candle("A", 99.0, 50, t=T0 + 2 * MIN, final=False))  # in-progress: ignored
    (m,) = book.movers("1m", T0)
    assert m.volume == 35
    assert m.change_pct == pytest.approx(2.0)  # vs the day's first open, 100


@pytest.mark.parametrize(
    "bad",
    [
        candle("A", 0.0),
        candle("A", -1.0),
        candle("A", float("nan")),
        candle("A", 100.0, open_=float("inf")),
        candle("A", 100.0, -5),
    ],
)
def test_invalid_candles_are_ignored(bad: Candle) -> None:
    book = MarketSummaryBook()
    assert not book.update(bad)
    assert book.movers("1m", T0) == []


# ---------------------------------------------------------------- references and sessions


def test_reference_is_the_earliest_open_of_the_session_without_a_previous_close() -> None:
    book = MarketSummaryBook()
    book.update(candle("A", 104.0, open_=102.0, t=T0 + 5 * MIN, tf="5m"))
    assert book.reference("A", T0) == 102.0
    book.update(candle("A", 101.0, open_=100.0, t=T0, tf="1m"))  # an earlier bar arrives later
    assert book.reference("A", T0) == 100.0
    assert book.movers("5m", T0)[0].change_pct == pytest.approx(4.0)


def test_explicit_previous_close_wins_for_its_session_only() -> None:
    book = MarketSummaryBook()
    book.update(candle("A", 110.0, open_=105.0))
    book.set_reference("A", 100.0, T0 + 1)  # after the bars: still applies to this session
    assert book.movers("1m", T0)[0].change_pct == pytest.approx(10.0)
    book.set_reference("A", 200.0, T0 + DAY)  # next session's, ahead of time
    assert book.reference("A", T0) == 100.0  # this session's still holds
    book.update(candle("A", 210.0, open_=205.0, t=T0 + DAY))
    assert book.reference("A", T0 + DAY) == 200.0
    book.set_reference("A", 300.0, T0 + 2 * DAY)
    assert book.reference("A", T0) is None  # a session that is over is forgotten
    assert book.reference("A", T0 + DAY) == 200.0
    with pytest.raises(ValueError, match="positive"):
        book.set_reference("A", 0.0, T0)


def test_next_session_measures_against_the_last_close_seen() -> None:
    book = MarketSummaryBook()
    book.update(candle("A", 101.0, t=T0))
    book.update(candle("A", 120.0, t=T0 + 300 * MIN, tf="5m"))
    book.update(candle("A", 126.0, open_=121.0, t=T0 + DAY))
    assert book.reference("A", T0 + DAY) == 120.0
    assert book.movers("1m", T0 + DAY)[0].change_pct == pytest.approx(5.0)
    assert not book.update(candle("A", 90.0, t=T0 + 2 * MIN))  # yesterday's bar after today's: stale


def test_a_summary_counts_only_instruments_seen_in_its_session() -> None:
    book = MarketSummaryBook()
    book.update(candle("OLD", 101.0, t=T0))
    book.update(candle("NEW", 103.0, open_=100.0, t=T0 + DAY))
    s = book.summary("1m", T0 + DAY)
    assert names(s.most_active) == ["NEW"]
    assert s.advances + s.declines + s.unchanged == 1
    assert book.movers("1m", T0)[0].instrument == "OLD"


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="top_n"):
        MarketSummaryBook(top_n=-1)
    with pytest.raises(ValueError, match="unchanged_band_pct"):
        MarketSummaryBook(unchanged_band_pct=-0.1)


def test_book_pickles() -> None:
    book = book_with({"A": 1.0, "B": -2.0})
    back = pickle.loads(pickle.dumps(book))
    assert back.summary("1m", T0) == book.summary("1m", T0)


# ---------------------------------------------------------------- against a plain sort


universe = st.dictionaries(
    st.text("ABCDEFGH", min_size=1, max_size=3),
    st.tuples(st.sampled_from([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]), st.integers(0, 5)),
    max_size=40,
)


@given(universe, st.integers(0, 8))
def test_summary_matches_a_full_sort(data: dict[str, tuple[float, int]], top_n: int) -> None:
    book = book_with({k: c for k, (c, _) in data.items()}, {k: v for k, (_, v) in data.items()}, top_n=top_n)
    s = book.summary("1m", T0)
    pct = {k: (100.0 + c - 100.0) / 100.0 * 100.0 for k, (c, _) in data.items()}
    up = sorted((k for k in data if pct[k] > 0), key=lambda k: (-pct[k], k))
    down = sorted((k for k in data if pct[k] < 0), key=lambda k: (pct[k], k))
    active = sorted(data, key=lambda k: (-data[k][1], k))
    assert names(s.gainers) == up[:top_n]
    assert names(s.losers) == down[:top_n]
    assert names(s.most_active) == active[:top_n]
    assert (s.advances, s.declines, s.unchanged) == (len(up), len(down), len(data) - len(up) - len(down))


def test_docstring_examples() -> None:
    assert doctest.testmod(market_summary).failed == 0
