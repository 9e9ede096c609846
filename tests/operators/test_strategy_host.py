"""StrategyHost: isolation of failing strategies, enable/disable/configure, history and positions."""

from __future__ import annotations

import pickle
from collections import deque
from datetime import date

import pytest

from operators.strategy_host import Deployment, RecentCandles, StrategyHost
from schemas.control import ConfigureStrategy, DisableStrategy, EnableStrategy
from schemas.market import Candle
from schemas.orders import TargetPosition
from schemas.risk import StrategyError
from strategies.base import Strategy, StrategyContext, StrategyParams
from strategies.registry import ParamsError, StrategyRegistry

REG = StrategyRegistry()


class FollowParams(StrategyParams, frozen=True, kw_only=True):
    lookback: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lookback < 1:
            msg = f"lookback: expected >= 1, got {self.lookback}"
            raise ValueError(msg)


@REG.register("follow")
class Follow(Strategy[FollowParams]):
    """Long while the close is above the close ``lookback`` bars ago, flat otherwise."""

    Params = FollowParams

    @classmethod
    def warmup(cls, params: FollowParams) -> int:
        return params.lookback + 1

    def on_candle(self, ctx: StrategyContext[FollowParams], candle: Candle) -> list[TargetPosition]:
        if len(ctx.candles) <= ctx.params.lookback:
            return []
        want = ctx.params.qty if candle.close > ctx.candles[-1 - ctx.params.lookback].close else 0
        return [] if want == ctx.position else [self.target(ctx, candle, want, "follow", stop_loss=candle.low)]


@REG.register("flaky")
class Flaky(Strategy[StrategyParams]):
    Params = StrategyParams

    def __init__(self, params: StrategyParams) -> None:
        super().__init__(params)
        self.calls = 0

    def on_candle(self, ctx: StrategyContext[StrategyParams], candle: Candle) -> list[TargetPosition]:
        self.calls += 1
        if self.calls % 2:
            msg = "odd call"
            raise RuntimeError(msg)
        return []


@REG.register("liar")
class Liar(Strategy[StrategyParams]):
    Params = StrategyParams

    def on_candle(self, ctx: StrategyContext[StrategyParams], candle: Candle) -> list[TargetPosition]:
        return ["BUY"]  # type: ignore[list-item]


def candle(k: int, close: float, tf: str = "1m", inst: str = "NSE:INFY") -> Candle:
    t = 1_763_610_300 * 10**9 + k * 60 * 10**9
    return Candle(
        instrument=inst,
        timeframe=tf,
        open_time=t,
        ts_event=t + 60 * 10**9,
        ts_init=t,
        open=close,
        high=close + 1,
        low=close - 1,
        close=close,
        volume=1,
        trade_count=1,
        vwap=close,
        oi=0,
        final=True,
    )


def dep(sid: str, kind: str, **params: object) -> Deployment:
    return Deployment(sid, kind, REG.params(kind, {"timeframe": "1m", **params}))


def cmd(cls: type, **kw: object) -> object:
    return cls(command_id="c1", account="paper", issued_by="test", ts_event=0, ts_init=0, **kw)


def test_a_failing_strategy_is_isolated_and_disabled_after_repeated_errors() -> None:
    host = StrategyHost("NSE:INFY", [dep("f1", "follow", qty=3), dep("x1", "liar")], REG, max_errors=2)
    out = []
    for k, px in enumerate([10, 11, 12, 13, 9, 8]):
        out += host.on_candle(candle(k, px), {}, now=k)
    errors = [e for e in out if isinstance(e, StrategyError)]
    assert [(e.strategy, e.error_count, e.disabled, e.error_type) for e in errors] == [
        ("x1", 1, False, "TypeError"),
        ("x1", 2, True, "TypeError"),
    ]
    targets = [e for e in out if isinstance(e, TargetPosition)]
    assert targets and all(t.strategy == "f1" and t.stop_loss is not None for t in targets)  # f1 unaffected


def test_errors_must_be_consecutive_to_disable() -> None:
    host = StrategyHost("NSE:INFY", [dep("fl", "flaky")], REG, max_errors=2)
    out = [e for k in range(10) for e in host.on_candle(candle(k, 10.0), {}, now=k)]
    assert len(out) == 5 and not any(e.disabled for e in out)  # fail, succeed, fail, ...: never twice in a row


def test_positions_gate_duplicate_targets_and_control_commands_apply() -> None:
    host = StrategyHost("NSE:INFY", [dep("f1", "follow", qty=2)], REG)
    first = (
        host.on_candle(candle(0, 10), {}, 0) + host.on_candle(candle(1, 10), {}, 1) + host.on_candle(candle(2, 12), {}, 2)
    )
    assert [t.target_qty for t in first] == [2]
    host.on_position("f1", 2)
    assert host.on_candle(candle(3, 13), {}, 3) == []  # already long: nothing to say
    assert host.control(cmd(DisableStrategy, strategy="f1"))
    assert host.on_candle(candle(4, 5), {}, 4) == []
    assert host.control(cmd(EnableStrategy, strategy="f1"))
    assert [t.target_qty for t in host.on_candle(candle(5, 5), {}, 5)] == [0]
    assert not host.control(cmd(EnableStrategy, strategy="someone-else"))
    with pytest.raises(ParamsError, match="lookback"):
        host.control(cmd(ConfigureStrategy, strategy="f1", params={"timeframe": "1m", "lookback": 0}))
    assert host.control(cmd(ConfigureStrategy, strategy="f1", params={"timeframe": "1m", "lookback": 1, "qty": 7}))
    assert host.instances["f1"].deployment.params.qty == 7
    # a re-configuration that no longer subscribes to this instrument removes the instance here
    assert host.control(cmd(ConfigureStrategy, strategy="f1", params={"instruments": ["NSE:TCS"]}))
    assert "f1" not in host.instances


def test_only_subscribers_of_the_timeframe_and_instrument_run_and_state_pickles() -> None:
    host = StrategyHost(
        "NSE:INFY",
        [
            dep("f1", "follow"),
            Deployment("t1", "follow", REG.params("follow", {"timeframe": "5m", "instruments": ["NSE:TCS"]})),
        ],
        REG,
    )
    assert set(host.instances) == {"f1"} and host.timeframes == {"1m"}
    assert host.on_candle(candle(0, 10, tf="5m"), {}, 0) == []
    for k in range(3):
        host.on_candle(candle(k, 10 + k), {}, k)
    clone = pickle.loads(pickle.dumps(host))
    a = host.on_candle(candle(3, 1), {}, 3)
    b = clone.on_candle(candle(3, 1), {}, 3)
    assert a == b


def test_a_bar_runs_the_subscribers_of_its_timeframe_in_order_also_after_reconfiguring() -> None:
    host = StrategyHost("NSE:INFY", [dep(s, "follow", lookback=1, timeframe=tf) for s, tf in
                                     (("f1", "1m"), ("f2", "1m"), ("f3", "5m"))], REG)  # fmt: skip

    def who(tf: str, k: int) -> list[str]:
        return [t.strategy for t in host.on_candle(candle(k, 10 + k, tf=tf), {}, k)]

    assert [who("1m", k) for k in range(3)] == [[], ["f1", "f2"], ["f1", "f2"]]
    assert host.control(cmd(ConfigureStrategy, strategy="f1", params={"timeframe": "5m", "lookback": 1}))
    assert who("1m", 3) == ["f2"]
    assert [who("5m", k) for k in range(2)] == [[], ["f1", "f3"]]
    host = pickle.loads(pickle.dumps(host))  # the index is rebuilt, not pickled
    assert (who("5m", 2), who("1m", 4)) == (["f1", "f3"], ["f2"])
    assert host.control(cmd(ConfigureStrategy, strategy="f3", params={"instruments": ["NSE:TCS"]}))
    assert who("5m", 3) == ["f1"]


@REG.register("recorder")
class Recorder(Strategy[FollowParams]):
    """Records what it sees of ``ctx.candles`` during each call."""

    Params = FollowParams
    seen: list[tuple[int, float, tuple[float, ...], list[float], list[float]]] = []

    @classmethod
    def warmup(cls, params: FollowParams) -> int:
        return params.lookback

    def on_candle(self, ctx: StrategyContext[FollowParams], candle: Candle) -> list[TargetPosition]:
        c = ctx.candles
        assert c[-1] is candle and c[0] is next(iter(c)) and candle in c
        self.seen.append((len(c), c[-1].close, tuple(x.close for x in c[:2]), [x.close for x in c],
                          [x.close for x in reversed(c)]))  # fmt: skip
        return []


def test_recent_candles_read_as_a_sequence_bounded_by_the_warmup() -> None:
    # lookback 3: warm-up 3 bars, so the host keeps the last 4 closed candles.
    host = StrategyHost(
        "NSE:INFY", [Deployment("r1", "recorder", REG.params("recorder", {"lookback": 3, "timeframe": "1m"}))], REG
    )
    Recorder.seen.clear()
    for k in range(6):
        host.on_candle(candle(k, 100.0 + k), {}, now=k)
    assert [s[0] for s in Recorder.seen] == [1, 2, 3, 4, 4, 4]
    _, last, first_two, closes, backwards = Recorder.seen[-1]
    assert (last, first_two, closes, backwards) == (105.0, (102.0, 103.0), [102.0, 103.0, 104.0, 105.0],
                                                    [105.0, 104.0, 103.0, 102.0])  # fmt: skip
    # The host's state (history included) still pickles and resumes identically.
    again = pickle.loads(pickle.dumps(host))
    Recorder.seen.clear()
    again.on_candle(candle(6, 106.0), {}, now=6)
    assert Recorder.seen[-1][3] == [103.0, 104.0, 105.0, 106.0]


def test_recent_candles_slice_as_a_tuple_of_the_history_would() -> None:
    history = deque(candle(k, 100.0 + k) for k in range(40))
    view = RecentCandles(history)
    for cut in (slice(-3, None), slice(None, 2), slice(None, None, -7), slice(5, -5, 3), slice(100, None), slice(-100, 3)):
        assert view[cut] == tuple(history)[cut], cut


def test_a_deployment_says_which_of_its_instruments_it_can_never_trade() -> None:
    from connectors.brokers.universe import build_universe
    from schemas.market import InstrumentType
    from tests.stubs import instrument

    master = [instrument("NSE:INFY"), instrument("NSE:TCS"), instrument("NFO:X", InstrumentType.FUT, lot=50)]
    assert Deployment("a", "k", StrategyParams(qty=50)).untradable(master) is None  # a lot of 50 fits qty 50
    assert Deployment("b", "k", StrategyParams(qty=1, instruments=("NSE:INFY",))).untradable(master) is None
    why = Deployment("c", "k", StrategyParams(qty=1, instruments=("NSE:INFY", "NFO:X"))).untradable(master)
    assert why == "1 of its 2 instruments never trade: NFO:X has a lot (50) above its qty 1; its signals there are rejected"
    # The simulator's universe: qty 1 trades only the stocks (the latency bench's deployments).
    universe = build_universe(date(2026, 11, 20), 500)
    stocks = sum(i.instrument_type is InstrumentType.EQ for i in universe)
    why = Deployment("d", "k", StrategyParams(qty=1)).untradable(universe)
    assert why is not None and why.startswith(f"{500 - stocks} of its 500 instruments never trade: ")
    assert "are indices" in why and "have lots (" in why, why
