"""InstrumentAnalytics: closed candles drive indicators, patterns, levels and pivots."""

from __future__ import annotations

import pickle

import numpy as np

from operators.analytics import AnalyticsConfig, InstrumentAnalytics
from operators.indicators import IndicatorSet
from operators.levels import classic_pivots
from schemas.analytics import IndicatorSnapshot, OiChange
from schemas.market import Candle, Tick

S = 10**9
OPEN = 1_763_610_300 * S  # 2025-11-20 09:15 IST
DAY = 86_400 * S


def ticks(n: int, seed: int = 1, inst: str = "NSE:INFY", days: int = 2) -> list[Tick]:
    rng = np.random.default_rng(seed)
    out, px, vol, seq = [], 1000.0, 0, 0
    for d in range(days):
        vol = 0
        for k in range(n):
            seq += 1
            px = round(px * (1 + rng.normal(0, 0.002)), 2)
            vol += int(rng.integers(1, 100))
            ts = OPEN + d * DAY + k * 20 * S
            out.append(
                Tick(
                    instrument=inst,
                    ts_event=ts,
                    ts_init=ts,
                    seq=seq,
                    ltp=px,
                    last_qty=1,
                    volume=vol,
                    oi=50_000 + seq * 10,
                    bid=px,
                    ask=px,
                    bid_qty=1,
                    ask_qty=1,
                )
            )
    return out


CFG = AnalyticsConfig(timeframes=("1m", "5m", "1d"), indicators=("ema:5", "rsi:5"), publish_timeframes=("5m", "1d"))


def run(a: InstrumentAnalytics, ts: list[Tick]) -> list:
    out: list = []
    for t in ts:
        a.on_tick(t, t.ts_event, out)
    a.flush(ts[-1].ts_event, out)
    return out


def test_snapshots_follow_closed_candles_and_equal_an_indicator_set_fed_the_same_bars() -> None:
    out = run(InstrumentAnalytics("NSE:INFY", CFG), ticks(1000))
    candles = [e for e in out if isinstance(e, Candle) and e.timeframe == "5m"]
    snaps = [e for e in out if isinstance(e, IndicatorSnapshot) and e.timeframe == "5m"]
    assert len(snaps) == len(candles) > 50
    ref = IndicatorSet(CFG.indicators)
    for c, snap in zip(candles, snaps, strict=True):
        ref.on_bar(c.open, c.high, c.low, c.close, float(c.volume), (c.open_time + 19_800 * S) // DAY)
        assert snap.open_time == c.open_time
        got = {k: v for k, v in snap.values.items() if "." not in k}
        assert got == ref.snapshot()
    assert any("swing.support" in s.values or "swing.resistance" in s.values for s in snaps)
    assert not any(isinstance(e, IndicatorSnapshot) and e.timeframe == "1m" for e in out)  # not published


def test_pivots_of_the_previous_session_are_in_the_next_days_snapshots() -> None:
    out = run(InstrumentAnalytics("NSE:INFY", CFG), ticks(1000))
    day1 = next(e for e in out if isinstance(e, Candle) and e.timeframe == "1d")
    want = classic_pivots(day1.high, day1.low, day1.close)
    day2 = [e for e in out if isinstance(e, IndicatorSnapshot) and e.timeframe == "5m" and e.open_time > OPEN + DAY // 2]
    assert day2 and all(s.values["pivot.p"] == want.p and s.values["pivot.r1"] == want.r1 for s in day2)
    day1_snaps = [e for e in out if isinstance(e, IndicatorSnapshot) and e.timeframe == "5m" and e.open_time < day1.ts_event]
    assert all("pivot.p" not in s.values for s in day1_snaps)


def test_derivatives_emit_oi_buildup_and_pickling_mid_stream_changes_nothing() -> None:
    ts = ticks(600, seed=3, inst="NFO:NIFTY26NOVFUT")
    whole = run(InstrumentAnalytics("NFO:NIFTY26NOVFUT", CFG, track_oi=True), ts)
    assert any(isinstance(e, OiChange) for e in whole)
    a = InstrumentAnalytics("NFO:NIFTY26NOVFUT", CFG, track_oi=True)
    out: list = []
    for t in ts[:500]:
        a.on_tick(t, t.ts_event, out)
    a = pickle.loads(pickle.dumps(a))
    for t in ts[500:]:
        a.on_tick(t, t.ts_event, out)
    a.flush(ts[-1].ts_event, out)
    assert out == whole


# ----------------------------------------------------------------------------- strategies


def _host(fast: int = 3, slow: int = 5):  # type: ignore[no-untyped-def]
    import strategies.builtin  # noqa: F401
    from operators.strategy_host import Deployment, StrategyHost
    from strategies.registry import REGISTRY

    params = REGISTRY.params("ema_crossover", {"fast": fast, "slow": slow, "timeframe": "1m", "qty": 1,
                                               "allow_short": True, "atr_period": 3})  # fmt: skip
    return StrategyHost("NSE:INFY", [Deployment("ema", "ema_crossover", params)], REGISTRY)


def _decisions(out: list) -> list:
    from schemas.orders import TargetPosition

    return [e for e in out if type(e) is TargetPosition]


def test_strategies_read_the_instruments_indicator_sets_and_history_only_warms_them() -> None:
    day1, day2 = ticks(400, seed=4)[:400], ticks(400, seed=4)[400:]
    # The strategy's indicators join the analytics set of its timeframe (ema_5 is shared).
    a = InstrumentAnalytics("NSE:INFY", CFG, host=_host(), trade_from=day2[0].ts_event)
    assert a.indicators["1m"].keys[:2] == ("ema_5", "rsi_5") and "ema_3" in a.indicators["1m"].keys
    out = run(a, day1 + day2)
    decided = _decisions(out)
    assert decided and all(t.ts_event >= day2[0].ts_event for t in decided)  # day 1 is history: no trades

    # Without the cut-off the same stream trades on day 1 too, and day 2 decides identically:
    # the history warmed the strategy exactly as trading through it would have.
    b = InstrumentAnalytics("NSE:INFY", CFG, host=_host())
    all_decided = _decisions(run(b, day1 + day2))
    assert any(t.ts_event < day2[0].ts_event for t in all_decided)
    later = [t for t in all_decided if t.ts_event >= day2[0].ts_event]
    assert [(t.signal_id, t.target_qty) for t in later] == [(t.signal_id, t.target_qty) for t in decided]


def test_stored_candles_warm_a_fresh_instrument_like_the_ticks_they_came_from() -> None:
    day1, day2 = ticks(400, seed=6)[:400], ticks(400, seed=6)[400:]
    # Reference: one core that saw day 1's ticks, trading only on day 2.
    ref = InstrumentAnalytics("NSE:INFY", CFG, host=_host(), trade_from=day2[0].ts_event)
    ref_out = run(ref, day1 + day2)
    stored = [c for c in ref_out if isinstance(c, Candle) and c.final and c.open_time < day2[0].ts_event]
    # A fresh core warmed from day 1's stored candles decides day 2 the same way.
    warm = InstrumentAnalytics("NSE:INFY", CFG, host=_host(), trade_from=day2[0].ts_event)
    warm.warm(stored)
    assert warm.indicators["1m"].snapshot() == _after(day1).indicators["1m"].snapshot()
    got = _decisions(run(warm, day2))
    want = [(t.signal_id, t.target_qty) for t in _decisions(ref_out)]
    assert got and [(t.signal_id, t.target_qty) for t in got] == want


def _after(ts: list[Tick]) -> InstrumentAnalytics:
    """A fresh core (same config, never trading) that has seen ``ts`` and closed its bars."""
    a = InstrumentAnalytics("NSE:INFY", CFG, host=_host(), trade_from=2**62)
    run(a, ts)
    return a


def test_errors_while_warming_are_returned_not_dropped() -> None:
    from operators.strategy_host import Deployment, StrategyHost
    from strategies.base import Strategy, StrategyParams
    from strategies.registry import StrategyRegistry

    reg = StrategyRegistry()

    @reg.register("boom")
    class Boom(Strategy[StrategyParams]):
        Params = StrategyParams

        def on_candle(self, ctx, candle):  # type: ignore[no-untyped-def]
            raise ZeroDivisionError("bad math")

    host = StrategyHost("NSE:INFY", [Deployment("b", "boom", reg.params("boom", {"timeframe": "1m"}))], reg)
    stored = [c for c in run(InstrumentAnalytics("NSE:INFY", CFG), ticks(100)) if isinstance(c, Candle) and c.final]
    errors = InstrumentAnalytics("NSE:INFY", CFG, host=host).warm(stored)
    assert errors and {(e.strategy, e.error_type) for e in errors} == {("b", "ZeroDivisionError")}
