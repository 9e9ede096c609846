"""The built-in strategies on real candles and real indicators: the exact signal bars and stops,
silence while warming up, both directions of every cross, allow_short, the opening range's
sessions, params validation, pickling mid-stream, and a run through the StrategyHost.

Every test feeds candles the way the flow does: an :class:`IndicatorSet` built from the
strategy's own specs is updated with each closed candle (session key = IST date), its snapshot
goes into a :class:`StrategyContext`, and every target is assumed filled at once. The driver
checks the invariants of every target as it goes (see :meth:`Driver.step`). Expected indicator
values come from TA-Lib where it has the function.
"""

from __future__ import annotations

import math
import pickle
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import talib

import strategies.builtin
from operators.candles import DAY_NS, IST_OFFSET_NS, SESSION_NS
from operators.indicators import REGISTRY as INDICATORS
from operators.indicators import IndicatorSet, SuperTrend
from operators.strategy_host import Deployment, StrategyHost
from schemas.market import Candle
from schemas.orders import TargetPosition
from schemas.risk import StrategyError
from strategies.base import StrategyContext
from strategies.registry import REGISTRY, ParamsError

T0 = 1_763_610_300 * 10**9  # Thursday 2025-11-20 09:15 IST = 03:45 UTC
TF_NS = {"1m": 60 * 10**9, "5m": 300 * 10**9}
INST = "NSE:INFY"
Event = tuple[int, int, float | None]  # (candle index, target qty, stop-loss)


# ---------------------------------------------------------------------------------------- candles


def candle(k: int, o: float, h: float, lo: float, c: float, *, tf: str = "1m", day: int = 0, volume: int = 1000) -> Candle:
    """The ``k``-th candle of the session ``day`` sessions after T0's; ``ts_event`` is its close time."""
    t = T0 + day * DAY_NS + k * TF_NS[tf]
    end = t + TF_NS[tf]
    return Candle(
        instrument=INST,
        timeframe=tf,
        open_time=t,
        ts_event=end,
        ts_init=end,
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=volume,
        trade_count=10,
        vwap=c,
        oi=0,
        final=True,
    )


def from_closes(closes: Sequence[float] | np.ndarray, *, tf: str = "1m", wick: float = 0.2) -> list[Candle]:
    """Candles closing at ``closes``, each opening at the previous close; a new session every 09:15-15:30."""
    per = SESSION_NS // TF_NS[tf]
    out, prev = [], float(closes[0])
    for n, c in enumerate(map(float, closes)):
        out.append(candle(n % per, prev, max(prev, c) + wick, min(prev, c) - wick, c, tf=tf, day=n // per))
        prev = c
    return out


def random_walk(n: int, seed: int, *, tf: str = "1m", vol: float = 0.003) -> list[Candle]:
    rng = np.random.default_rng(seed)
    closes = np.round(100.0 * np.exp(np.cumsum(rng.normal(0.0, vol, n))), 2)
    wicks = np.round(np.abs(rng.normal(0.0, 0.1, (n, 2))), 2)
    volumes = rng.integers(100, 5000, n)
    per = SESSION_NS // TF_NS[tf]
    out, prev = [], float(closes[0])
    for i in range(n):
        c = float(closes[i])
        h, lo = max(prev, c) + float(wicks[i, 0]), min(prev, c) - float(wicks[i, 1])
        out.append(candle(i % per, prev, h, lo, c, tf=tf, day=i // per, volume=int(volumes[i])))
        prev = c
    return out


def ohlc(candles: Sequence[Candle]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.array([c.high for c in candles]),
        np.array([c.low for c in candles]),
        np.array([c.close for c in candles]),
        np.array([float(c.volume) for c in candles]),
    )


def session_key(c: Candle) -> int:
    return (c.open_time + IST_OFFSET_NS) // DAY_NS


# ---------------------------------------------------------------------------------------- driver


class Driver:
    """One strategy fed closed candles as the flow feeds it; every target fills at once."""

    def __init__(self, name: str, **params: Any) -> None:
        cls = REGISTRY[name]
        self.params = REGISTRY.params(name, {"timeframe": "1m", **params})
        self.strategy = cls(self.params)
        self.indicators = IndicatorSet(cls.indicators(self.params))
        self.history: deque[Candle] = deque(maxlen=max(cls.warmup(self.params), 1) + 1)
        self.position = 0

    def step(self, c: Candle) -> list[TargetPosition]:
        self.indicators.on_bar(c.open, c.high, c.low, c.close, float(c.volume), session_key(c))
        snap = self.indicators.snapshot()
        self.history.append(c)
        ctx = StrategyContext.build(
            strategy_id="s1",
            account="paper",
            candle=c,
            indicators=snap,
            candles=self.history,
            position=self.position,
            params=self.params,
        )
        out = self.strategy.on_candle(ctx, c)
        assert len(out) <= 1, out
        if len(snap) < len(self.indicators.keys):
            assert out == [], f"a target while warming up: {out}"
        for t in out:
            assert (t.strategy, t.account, t.instrument) == ("s1", "paper", INST)
            assert t.signal_id == f"s1|{INST}|{c.timeframe}|{c.ts_event}"
            assert t.target_qty != self.position, "a target equal to the position"
            assert abs(t.target_qty) in (0, self.params.qty)
            entry = t.target_qty != 0 and (t.target_qty * self.position <= 0 or abs(t.target_qty) > abs(self.position))
            if entry:  # mandatory stop-loss, on the protective side of the close
                assert t.stop_loss is not None, f"an entry without a stop-loss: {t}"
                assert t.stop_loss < c.close if t.target_qty > 0 else t.stop_loss > c.close, (t, c)
            self.position = t.target_qty
        return out

    def run(self, candles: Sequence[Candle]) -> list[Event]:
        return [(i, t.target_qty, t.stop_loss) for i, c in enumerate(candles) for t in self.step(c)]


def same(got: Sequence[Event], want: Sequence[Event]) -> bool:
    """Equal indices and targets, stops equal to 1e-9 relative (TA-Lib's FMA differs by an ulp)."""
    return len(got) == len(want) and all(
        g[:2] == w[:2] and (g[2] is None if w[2] is None else g[2] is not None and math.isclose(g[2], w[2], rel_tol=1e-9))
        for g, w in zip(got, want, strict=True)
    )


# ---------------------------------------------------------------------------------------- registry, params


def test_importing_builtin_registers_all_five() -> None:
    names = ("ema_crossover", "rsi_reversion", "opening_range_breakout", "vwap_reversion", "supertrend_trend")
    assert set(strategies.builtin.NAMES) == set(names)
    assert {n: REGISTRY[n] for n in names} == {
        "ema_crossover": strategies.builtin.EmaCrossover,
        "rsi_reversion": strategies.builtin.RsiReversion,
        "opening_range_breakout": strategies.builtin.OpeningRangeBreakout,
        "vwap_reversion": strategies.builtin.VwapReversion,
        "supertrend_trend": strategies.builtin.SupertrendTrend,
    }
    for n in names:  # defaults validate, and the specs build (keys as the strategy reads them)
        params = REGISTRY.params(n, {})
        IndicatorSet(REGISTRY[n].indicators(params))
        assert REGISTRY[n].warmup(params) > 0


@pytest.mark.parametrize(
    ("name", "raw", "field"),
    [
        ("ema_crossover", {"fast": 1}, "fast"),
        ("ema_crossover", {"fast": 9, "slow": 9}, "slow"),
        ("ema_crossover", {"stop_atr": 0}, "stop_atr"),
        ("ema_crossover", {"qty": 0}, "qty"),
        ("ema_crossover", {"fats": 5}, "fats"),
        ("rsi_reversion", {"period": 1}, "period"),
        ("rsi_reversion", {"oversold": 0}, "oversold"),
        ("rsi_reversion", {"oversold": 55}, "exit"),
        ("rsi_reversion", {"overbought": 45}, "overbought"),
        ("rsi_reversion", {"overbought": 100}, "overbought"),
        ("opening_range_breakout", {"range_minutes": 7}, "range_minutes"),
        ("opening_range_breakout", {"range_minutes": 0}, "range_minutes"),
        ("opening_range_breakout", {"range_minutes": 400}, "range_minutes"),
        ("opening_range_breakout", {"timeframe": "1d"}, "timeframe"),
        ("opening_range_breakout", {"timeframe": "7x"}, "timeframe"),
        ("opening_range_breakout", {"exit_time": "25:00"}, "exit_time"),
        ("opening_range_breakout", {"exit_time": "3pm"}, "exit_time"),
        ("opening_range_breakout", {"exit_time": "09:25"}, "exit_time"),
        ("opening_range_breakout", {"exit_time": "15:45"}, "exit_time"),
        ("opening_range_breakout", {"stop_at": "low"}, "stop_at"),
        ("vwap_reversion", {"band": -1}, "band"),
        ("vwap_reversion", {"band": 100}, "band"),
        ("vwap_reversion", {"band_unit": "bps"}, "band_unit"),
        ("vwap_reversion", {"atr_period": 0}, "atr_period"),
        ("supertrend_trend", {"multiplier": 0}, "multiplier"),
        ("supertrend_trend", {"period": 0}, "period"),
    ],
)
def test_bad_params_are_refused_naming_the_field(name: str, raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ParamsError, match=rf"^{name} params: .*\b{field}\b"):
        REGISTRY.params(name, raw)


def test_indicator_specs_follow_the_params() -> None:
    def keys(name: str, **raw: Any) -> tuple[str, ...]:
        return IndicatorSet(REGISTRY[name].indicators(REGISTRY.params(name, raw))).keys

    assert keys("ema_crossover", fast=5, slow=8, atr_period=10) == ("ema_5", "ema_8", "atr_10")
    assert keys("rsi_reversion", period=7) == ("rsi_7", "atr_14")
    assert keys("vwap_reversion") == ("vwap", "atr_14")
    assert keys("supertrend_trend") == ("supertrend_10_3.value", "supertrend_10_3.direction")
    assert keys("supertrend_trend", period=7, multiplier=2.5) == ("supertrend_7_2.5.value", "supertrend_7_2.5.direction")
    assert keys("opening_range_breakout") == ()
    assert REGISTRY["supertrend_trend"].indicators(REGISTRY.params("supertrend_trend", {})) == ("supertrend:10,3",)


# ---------------------------------------------------------------------------------------- ema_crossover

# Down 20 → 11, up to 25, down to 10: with EMA(2)/EMA(4) and ATR(3) the trend moves are 1.0 and
# every true range is 1.4 (the 0.2 wicks), so the ATR is 1.4 and the stop 2.8 from the close.
V_CLOSES = [*range(20, 10, -1), *range(12, 26), *range(24, 9, -1)]


def test_ema_crossover_signals_on_the_cross_bars_only() -> None:
    cs = from_closes(V_CLOSES)
    got = Driver("ema_crossover", fast=2, slow=4, atr_period=3).run(cs)
    # EMA(2) overtakes EMA(4) on the second rising close (13: 12.61 > 12.58); falls below on the second falling one
    assert same(got, [(11, 1, 13 - 2.8), (25, 0, None)])
    shorts = Driver("ema_crossover", fast=2, slow=4, atr_period=3, allow_short=True, qty=3).run(cs)
    assert same(shorts, [(11, 3, 13 - 2.8), (25, -3, 23 + 2.8)])
    f, s = talib.EMA(np.array(V_CLOSES, float), 2), talib.EMA(np.array(V_CLOSES, float), 4)
    assert f[10] < s[10] and f[11] > s[11] and f[24] > s[24] and f[25] < s[25]  # the TA-Lib oracle agrees


def test_ema_crossover_first_ready_candle_only_records_and_position_gates() -> None:
    # rising from the start: fast is above slow on the first ready candle, and that is no cross
    assert Driver("ema_crossover", fast=2, slow=4, atr_period=3).run(from_closes(range(10, 40))) == []
    d = Driver("ema_crossover", fast=2, slow=4, atr_period=3)
    d.position = 1  # already long (e.g. from an earlier deployment): the cross up asks nothing
    assert same(d.run(from_closes(V_CLOSES)), [(25, 0, None)])


@pytest.mark.parametrize("allow_short", [False, True])
def test_ema_crossover_matches_a_talib_oracle_on_a_random_walk(allow_short: bool) -> None:
    cs = random_walk(400, seed=7)
    h, lo, c, _ = ohlc(cs)
    f, s, atr = talib.EMA(c, 5), talib.EMA(c, 13), talib.ATR(h, lo, c, 14)
    want: list[Event] = []
    side = pos = 0
    for i in range(len(cs)):
        if np.isnan(atr[i]) or np.isnan(s[i]):
            continue
        new = int(np.sign(f[i] - s[i]))
        if new in (0, side):
            continue
        prev, side = side, new
        if prev == 0:
            continue
        tgt, stop = (1, c[i] - 2 * atr[i]) if new > 0 else (-1, c[i] + 2 * atr[i]) if allow_short else (0, None)
        if tgt != pos:
            want.append((i, tgt, stop))
            pos = tgt
    assert len(want) >= 6
    got = Driver("ema_crossover", fast=5, slow=13, allow_short=allow_short).run(cs)
    assert same(got, want), (got, want)
    assert got[0][0] > 14  # nothing before ATR(14) is ready


# ---------------------------------------------------------------------------------------- rsi_reversion


def rsi_events(cs: Sequence[Candle], period: int, atr_period: int, allow_short: bool) -> list[Event]:
    """The module's rules over TA-Lib's RSI and ATR (oversold 30, overbought 70, exit 50, stop 2 ATR)."""
    h, lo, c, _ = ohlc(cs)
    rsi, atr = talib.RSI(c, period), talib.ATR(h, lo, c, atr_period)
    out: list[Event] = []
    pos = 0
    for i in range(1, len(cs)):
        if np.isnan(rsi[i - 1]) or np.isnan(atr[i - 1]):
            continue
        r0, r = rsi[i - 1], rsi[i]
        if r0 < 30 <= r < 50:
            ev = (i, 1, c[i] - 2 * atr[i])
        elif allow_short and r0 > 70 >= r > 50:
            ev = (i, -1, c[i] + 2 * atr[i])
        elif (pos > 0 and r >= 50) or (pos < 0 and r <= 50):
            ev = (i, 0, None)
        else:
            continue
        if ev[1] != pos:
            out.append(ev)
            pos = ev[1]
    return out


def test_rsi_reversion_enters_on_the_turn_out_of_oversold_and_exits_at_the_level() -> None:
    closes = [100, 101, 100, 101, 100, 101, 100, 98, 96, 94, 92, 93, 94, 95, 96, 97, 98, 99, 100]
    closes += [101, 103, 105, 107, 108, 107, 106, 105, 104, 103]  # up into overbought and back down
    cs = from_closes(closes)
    rsi = talib.RSI(np.array(closes, float), 5)
    assert rsi[11] < 30 <= rsi[12] < 50 and rsi[13] < 50 <= rsi[14]  # why bars 12 and 14
    assert rsi[24] > 70 >= rsi[25] > 50 and rsi[26] > 50 >= rsi[27]  # why bars 25 and 27
    h, lo, c, _ = ohlc(cs)
    atr = talib.ATR(h, lo, c, 5)
    longs = Driver("rsi_reversion", period=5, atr_period=5).run(cs)
    assert same(longs, [(12, 1, 94 - 2 * atr[12]), (14, 0, None)])
    both = Driver("rsi_reversion", period=5, atr_period=5, allow_short=True).run(cs)
    assert same(both, [(12, 1, 94 - 2 * atr[12]), (14, 0, None), (25, -1, 106 + 2 * atr[25]), (27, 0, None)])
    assert same(both, rsi_events(cs, 5, 5, allow_short=True))


def test_rsi_reversion_exit_is_a_level_that_repeats_until_flat() -> None:
    d = Driver("rsi_reversion", period=5, atr_period=5)
    cs = from_closes([100, 101, 100, 101, 100, 101, 100, 98, 96, 94, 92, 93, 94, 95, 96, 97])
    assert [e[:2] for e in d.run(cs[:14])] == [(12, 1)]
    assert [t.target_qty for t in d.step(cs[14])] == [0]  # RSI 54 >= 50
    d.position = 1  # the exit has not filled yet
    assert [t.target_qty for t in d.step(cs[15])] == [0]  # RSI 62: asked again


def test_rsi_reversion_reads_no_cross_across_a_gap_but_exits_on_the_first_ready_candle() -> None:
    params = REGISTRY.params("rsi_reversion", {"period": 5, "atr_period": 5, "timeframe": "1m"})
    s = REGISTRY["rsi_reversion"](params)
    c = candle(0, 100, 101, 99, 100)

    def step(snap: dict[str, float], position: int = 0) -> list[int]:
        ctx = StrategyContext.build(
            strategy_id="s1", account="paper", candle=c, indicators=snap, candles=(c,), position=position, params=params
        )
        return [t.target_qty for t in s.on_candle(ctx, c)]

    assert step({"rsi_5": 25.0, "atr_5": 1.0}) == []
    assert step({"atr_5": 1.0}) == []  # the RSI restarts its warm-up
    assert step({"rsi_5": 35.0, "atr_5": 1.0}) == []  # 25 -> 35 across the gap is no cross
    assert step({"rsi_5": 25.0, "atr_5": 1.0}) == []
    assert step({"rsi_5": 35.0, "atr_5": 1.0}) == [1]
    assert step({}, position=1) == []
    assert step({"rsi_5": 55.0, "atr_5": 1.0}, position=1) == [0]  # the exit needs no previous candle


@pytest.mark.parametrize("allow_short", [False, True])
def test_rsi_reversion_matches_a_talib_oracle_on_a_random_walk(allow_short: bool) -> None:
    cs = random_walk(600, seed=11)
    want = rsi_events(cs, 5, 14, allow_short)
    assert len(want) >= 6 and any(e[1] == 0 for e in want)
    assert same(Driver("rsi_reversion", period=5, allow_short=allow_short).run(cs), want)


# ---------------------------------------------------------------------------------------- opening_range_breakout

RANGE = [(100, 101, 99, 100.5), (100.5, 102, 100, 101), (101, 101.5, 99.5, 100)]  # high 102, low 99


def orb_day(
    day: int, bars: Sequence[tuple[float, float, float, float]], *, fill: int = 0, shift: float = 0.0
) -> list[Candle]:
    """5m candles of one session from 09:15: ``bars`` (o, h, l, c) shifted by ``shift``, then ``fill`` inside bars."""
    rows = [tuple(x + shift for x in b) for b in bars]
    rows += [(100.5 + shift, 101 + shift, 100 + shift, 100.5 + shift)] * fill
    return [candle(k, *row, tf="5m", day=day) for k, row in enumerate(rows)]


def test_orb_long_breakout_once_per_session_time_exit_and_reset() -> None:
    day0 = orb_day(
        0,
        [
            *RANGE,
            (100, 102.3, 99.8, 102.0),  # 3: closes at the range high, not above it
            (102.0, 102.6, 101.5, 102.5),  # 4: close above 102 -> long, stop at the range low
            (102.5, 103, 101, 101.2),  # 5
            (101.2, 101.5, 97, 97.5),  # 6: close below the low: no short, and the session's entry is used
            (97.5, 103.5, 97.5, 103),  # 7: above the high again: ignored
        ],
        fill=67,  # to 15:30; bar 70 is 15:05-15:10
    )
    day1 = orb_day(1, [*RANGE, (99.5, 99.6, 98, 98.5), (98.5, 102.4, 98.5, 102.3)], fill=3, shift=8.0)
    d = Driver("opening_range_breakout", timeframe="5m", range_minutes=15)
    assert same(d.run(day0), [(4, 1, 99.0), (70, 0, None)])
    assert d.position == 0
    # the next session has its own range (high 110, low 107): the close below it is not a short, the close above enters
    assert same(d.run(day1), [(4, 1, 107.0)])


def test_orb_short_with_mid_stop_and_no_reentry_after_a_stop_out() -> None:
    day = orb_day(0, [*RANGE, (100, 100, 98.5, 98.8), (98.8, 103, 98.8, 102.8), (102.8, 103, 102, 102.5)], fill=60)
    d = Driver("opening_range_breakout", timeframe="5m", allow_short=True, stop_at="mid", exit_time=None)
    assert same(d.run(day[:4]), [(3, -1, 100.5)])
    d.position = 0  # stopped out by the stop-loss manager
    assert d.run(day[4:]) == []  # breakouts after the session's entry are ignored, and no time exit is set


def test_orb_exit_time_and_range_minutes_are_configurable() -> None:
    inside = [(100, 101.9, 99.8, 101.8), (101.8, 101.9, 99.8, 101.0), (101.0, 101.5, 100, 101)]
    day = orb_day(0, [*RANGE, *inside, (101.0, 102.6, 100.9, 102.5)], fill=30)
    # a 30-minute range is bars 0-5 (high 102, low 99): bar 6's close breaks it; flat at 12:00 = the close of bar 32
    d = Driver("opening_range_breakout", timeframe="5m", range_minutes=30, exit_time="12:00")
    assert same(d.run(day), [(6, 1, 99.0), (32, 0, None)])
    assert REGISTRY["opening_range_breakout"].warmup(d.params) == 6


def test_orb_started_after_the_session_open_sits_the_session_out() -> None:
    day0 = orb_day(0, [*RANGE, (101.8, 102.6, 101.5, 102.5)], fill=5)
    day1 = orb_day(1, [*RANGE, (101.8, 102.6, 101.5, 102.5)], fill=5)
    day2 = orb_day(2, [*RANGE, (101.8, 102.6, 101.5, 102.5)], fill=5)
    d = Driver("opening_range_breakout", timeframe="5m")
    assert d.run(day0[1:]) == []  # the 09:15 candle was never seen: the range is unknown
    assert same(d.run(day1), [(3, 1, 99.0)])
    d.position = 0
    assert d.run(day2[1:]) == []  # nor is yesterday's range used when today's 09:15 candle is missing


# ---------------------------------------------------------------------------------------- vwap_reversion


def vwap_of(cs: Sequence[Candle]) -> np.ndarray:
    h, lo, c, v = ohlc(cs)
    tp, out = (h + lo + c) / 3.0, np.empty(len(cs))
    pv = vol = 0.0
    for i, x in enumerate(cs):
        if i == 0 or session_key(x) != session_key(cs[i - 1]):
            pv = vol = 0.0
        pv, vol = pv + tp[i] * v[i], vol + v[i]
        out[i] = pv / vol
    return out


def test_vwap_reversion_enters_on_the_stretch_and_exits_back_at_vwap() -> None:
    bars: list[tuple[float, float, float, float]] = [(100, 100.2, 99.8, 100)] * 6
    bars += [
        (100, 100.2, 99.2, 99.3),  # 6: stretched below the 0.5% band -> long
        (99.3, 99.4, 99.1, 99.2),  # 7: still below: no second entry
        (99.2, 99.9, 99.2, 99.8),  # 8: below vwap
        (99.8, 100.2, 99.8, 100.1),  # 9: back above vwap -> flat
        (100.1, 100.9, 100.1, 100.8),  # 10: stretched above the band -> short (allow_short)
        (100.8, 100.8, 99.8, 99.9),  # 11: back below vwap -> flat
    ]
    cs = [candle(k, *b) for k, b in enumerate(bars)]
    h, lo, c, _ = ohlc(cs)
    vw, atr = vwap_of(cs), talib.ATR(h, lo, c, 3)
    below, above = c < vw * 0.995, c > vw * 1.005
    assert below.nonzero()[0].tolist() == [6, 7] and above.nonzero()[0].tolist() == [10]
    assert c[8] < vw[8] <= c[9] and c[11] <= vw[11]
    got = Driver("vwap_reversion", atr_period=3).run(cs)
    assert same(got, [(6, 1, 99.3 - 2 * atr[6]), (9, 0, None)])
    got = Driver("vwap_reversion", atr_period=3, allow_short=True).run(cs)
    assert same(got, [(6, 1, 99.3 - 2 * atr[6]), (9, 0, None), (10, -1, 100.8 + 2 * atr[10]), (11, 0, None)])
    # the band in ATRs: 1.2 ATR below vwap is deeper than 0.5% on bar 6 (99.22 < 99.3) and reached on bar 7
    assert c[6] > vw[6] - 1.2 * atr[6] and c[7] < vw[7] - 1.2 * atr[7]
    got = Driver("vwap_reversion", atr_period=3, band=1.2, band_unit="atr").run(cs)
    assert same(got, [(7, 1, 99.2 - 2 * atr[7]), (9, 0, None)])


def test_vwap_reversion_does_not_enter_on_the_first_candle_of_a_session() -> None:
    flat = [(100, 100.2, 99.8, 100)] * 5
    day0 = [candle(k, *b) for k, b in enumerate(flat)]
    # day 1 opens with a long upper wick, closing far below its own typical price (the new session's vwap)
    day1 = [candle(0, 100, 101, 98, 98.1, day=1), candle(1, 98.1, 98.3, 97.9, 98.0, day=1)]
    day1 += [candle(k, 98, 100.5, 98, 100.4, day=1) for k in (2, 3)]
    cs = day0 + day1
    vw = vwap_of(cs)
    assert cs[5].close < vw[5] * 0.995 and cs[6].close < vw[6] * 0.995  # both below the band
    assert Driver("vwap_reversion", atr_period=3).run(cs) == []  # bar 5 opens the session, bar 6 stays below


def test_vwap_reversion_matches_an_oracle_on_a_random_walk() -> None:
    cs = random_walk(800, seed=3)
    h, lo, c, _ = ohlc(cs)
    vw, atr = vwap_of(cs), talib.ATR(h, lo, c, 14)
    want: list[Event] = []
    pos, prev = 0, (-1, True, True)
    for i, x in enumerate(cs):
        if np.isnan(atr[i]):
            continue
        below, above = c[i] < vw[i] * 0.997, c[i] > vw[i] * 1.003
        day = session_key(x)
        was_below, was_above = prev[1:] if prev[0] == day else (True, True)
        prev = (day, below, above)
        if below and not was_below:
            ev: Event = (i, 1, c[i] - 2 * atr[i])
        elif above and not was_above:
            ev = (i, -1, c[i] + 2 * atr[i])
        elif (pos > 0 and c[i] >= vw[i]) or (pos < 0 and c[i] <= vw[i]):
            ev = (i, 0, None)
        else:
            continue
        if ev[1] != pos:
            want.append(ev)
            pos = ev[1]
    assert len(want) >= 6 and len({session_key(cs[e[0]]) for e in want}) >= 2
    assert same(Driver("vwap_reversion", band=0.3, allow_short=True).run(cs), want)


# ---------------------------------------------------------------------------------------- supertrend_trend


def supertrend_events(cs: Sequence[Candle], period: int, mult: float, allow_short: bool) -> list[Event]:
    st = SuperTrend(period, mult)
    out: list[Event] = []
    pos, prev = 0, 0.0
    for i, c in enumerate(cs):
        st.update_bar(c.open, c.high, c.low, c.close, float(c.volume))
        if not st.ready:
            continue
        d, prev = st.direction, (prev if prev else st.direction)
        if d != prev:
            tgt = 1 if d > 0 else -1 if allow_short else 0
            if (tgt > 0 and st.value >= c.close) or (tgt < 0 and st.value <= c.close):
                tgt = 0
            if tgt != pos:
                out.append((i, tgt, st.value if tgt else None))
                pos = tgt
        prev = d
    return out


def test_supertrend_trend_follows_the_flips() -> None:
    closes = [*np.linspace(120, 100, 25), *np.linspace(100, 125, 30), *np.linspace(125, 105, 25)]
    cs = from_closes(closes, wick=0.5)
    want = supertrend_events(cs, 5, 2.0, allow_short=False)
    assert [e[:2] for e in want] == [(want[0][0], 1), (want[1][0], 0)]
    assert 25 < want[0][0] < 40 and 55 < want[1][0] < 70  # after each turn, not before it
    got = Driver("supertrend_trend", period=5, multiplier=2).run(cs)
    assert same(got, want)
    shorts = Driver("supertrend_trend", period=5, multiplier=2, allow_short=True).run(cs)
    assert same(shorts, supertrend_events(cs, 5, 2.0, allow_short=True))
    assert [e[1] for e in shorts] == [1, -1]


def test_supertrend_trend_enters_a_rising_market_when_it_clears_the_first_upper_band() -> None:
    # the indicator starts every series in a downtrend: its first value (bar 5, after period + 1 bars) is the upper
    # band 106.2, held while the closes stay under it; bar 9 closes above it, the trend flips up and the long enters
    cs = from_closes(np.linspace(100, 130, 40), wick=0.3)
    assert cs[8].close < 106.2 < cs[9].close
    got = Driver("supertrend_trend", period=5, multiplier=2).run(cs)
    assert [e[:2] for e in got] == [(9, 1)]
    assert got[0][2] == pytest.approx(103.8)  # the lower band, now the line: hl2 - 2 ATR


def test_supertrend_trend_drops_an_entry_whose_line_is_on_the_wrong_side() -> None:
    # a falling market, then one bar with a huge upper wick closes just above the upper band: the trend flips up but
    # the new line (hl2 - ATR = 109.8) is above the close 107.5, so there is no sane stop: the short is only closed
    bars: list[tuple[float, float, float, float]] = [
        (110, 110.5, 109.5, 110),
        (110, 110.2, 108.8, 109),
        (109, 109.2, 107.8, 108),
        (108, 108.2, 106.8, 107),
    ]
    bars += [(107, 107.2, 105.8, 106), (106, 106.2, 104.8, 105), (105, 140, 104.9, 107.5)]
    d = Driver("supertrend_trend", period=3, multiplier=1, allow_short=True)
    d.position = -1
    assert d.run([candle(k, *b) for k, b in enumerate(bars)]) == [(6, 0, None)]


@pytest.mark.parametrize("allow_short", [False, True])
def test_supertrend_trend_matches_the_indicator_on_a_random_walk(allow_short: bool) -> None:
    cs = random_walk(600, seed=5)
    want = supertrend_events(cs, 10, 3.0, allow_short)
    assert len(want) >= 4
    assert same(Driver("supertrend_trend", allow_short=allow_short).run(cs), want)


# ---------------------------------------------------------------------------------------- all five

ALL: list[tuple[str, dict[str, Any]]] = [
    ("ema_crossover", {"fast": 5, "slow": 13, "allow_short": True}),
    ("rsi_reversion", {"period": 5, "allow_short": True}),
    ("opening_range_breakout", {"allow_short": True}),
    ("vwap_reversion", {"band": 0.3, "allow_short": True}),
    ("supertrend_trend", {"period": 7, "multiplier": 2, "allow_short": True}),
]


@pytest.mark.parametrize(("name", "raw"), [x for x in ALL if x[0] != "opening_range_breakout"])
def test_a_gap_in_the_indicators_forgets_the_previous_candle(name: str, raw: dict[str, Any]) -> None:
    # indicators rebuilt without warm-up (e.g. a re-configured indicator set): after the new warm-up the strategy
    # behaves exactly like a fresh instance holding the same position, so no cross is read across the gap
    cs = random_walk(400, seed=17)
    for cut in (100, 160, 220, 280):
        d = Driver(name, **raw)
        d.run(cs[:cut])
        d.indicators = IndicatorSet(d.indicators.specs)
        fresh = Driver(name, **raw)
        fresh.position = d.position
        assert d.run(cs[cut:]) == fresh.run(cs[cut:])


@pytest.mark.parametrize(("name", "raw"), ALL)
def test_a_strategy_pickled_mid_stream_continues_identically(name: str, raw: dict[str, Any]) -> None:
    cs = random_walk(450, seed=13, tf="5m")  # six sessions
    d = Driver(name, timeframe="5m", **raw)
    before = d.run(cs[:200])
    clone = pickle.loads(pickle.dumps(d))
    after, again = d.run(cs[200:]), clone.run(cs[200:])
    assert before and after, (before, after)  # something happens on both sides of the cut
    assert after == again
    fresh = Driver(name, timeframe="5m", **raw)
    assert fresh.run(cs) == before + [(i + 200, q, s) for i, q, s in after]  # the cut changes nothing


def test_all_five_run_in_a_strategy_host_on_a_random_walk() -> None:
    deployments = [Deployment(f"{name}-1", name, REGISTRY.params(name, {"timeframe": "5m", **raw})) for name, raw in ALL]
    host = StrategyHost(INST, deployments, REGISTRY, max_errors=1)
    specs: dict[str, str] = {}  # what the flow must do: one indicator per key, whoever asked for it
    for d in deployments:
        for spec in REGISTRY[d.kind].indicators(d.params):
            specs.setdefault(INDICATORS.create(spec)[0], spec)
    indicators = IndicatorSet(specs.values())
    out: list[Any] = []
    for n, c in enumerate(random_walk(450, seed=21, tf="5m")):
        indicators.on_bar(c.open, c.high, c.low, c.close, float(c.volume), session_key(c))
        emitted = host.on_candle(c, indicators.snapshot(), now=c.ts_event)
        for t in emitted:
            if isinstance(t, TargetPosition):
                host.on_position(t.strategy, t.target_qty)  # every target fills
        out += [(n, e) for e in emitted]
        if n == 200:
            host = pickle.loads(pickle.dumps(host))
    errors = [e for _, e in out if isinstance(e, StrategyError)]
    assert errors == []
    by_strategy = {d.strategy_id: [e for _, e in out if e.strategy == d.strategy_id] for d in deployments}
    assert all(len(v) >= 2 for v in by_strategy.values()), {k: len(v) for k, v in by_strategy.items()}
    assert all(t.stop_loss is not None for _, t in out if t.target_qty != 0)
