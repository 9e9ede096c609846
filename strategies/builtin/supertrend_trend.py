"""SuperTrend trend following: long when the SuperTrend turns up, out (or short) when it turns down.

Rules, exactly (evaluated on every closed candle of ``timeframe``):

* **Inputs.** ``supertrend:<period>,<multiplier>`` of that timeframe (snapshot keys
  ``supertrend_<period>_<multiplier>.direction``, +1 up or -1 down, and ``.value``, the
  trailing line: below price in an uptrend, above it in a downtrend).
* **Warm-up.** While they are absent from ``ctx.indicators`` the strategy returns nothing and
  forgets the previous direction, so a flip needs two consecutive ready candles. The first
  ready candle only records its direction. (The indicator starts every series in a downtrend,
  so a rising market flips up on the second ready candle and is entered there.)
* **Flip up** (-1 then +1): target ``+qty`` with ``stop_loss`` = the line's value on that
  candle.
* **Flip down** (+1 then -1): target 0; with ``allow_short`` target ``-qty`` with
  ``stop_loss`` = the line's value.
* If the line is not strictly on the protective side of the close (possible after an extreme
  bar), the entry is dropped and the flip only closes the opposite position: target 0.
* The stop is the line at entry; it is not trailed. The exit is the opposite flip (a close
  through the line). A target equal to ``ctx.position`` is not emitted.

>>> p = SupertrendTrendParams(period=7, multiplier=2.5, timeframe="1m")
>>> SupertrendTrend.indicators(p), SupertrendTrend.warmup(p)
(('supertrend:7,2.5',), 9)
>>> SupertrendTrendParams(multiplier=-1.0)
Traceback (most recent call last):
...
ValueError: multiplier: expected a finite number > 0, got -1.0
"""

from __future__ import annotations

import math

from operators.indicators import REGISTRY as INDICATORS
from schemas.market import Candle
from schemas.orders import TargetPosition
from strategies.base import Strategy, StrategyContext, StrategyParams
from strategies.registry import strategy


class SupertrendTrendParams(StrategyParams, frozen=True, kw_only=True):
    """SuperTrend ``period`` (its ATR) and band ``multiplier``."""

    period: int = 10
    multiplier: float = 3.0
    allow_short: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.period < 1:
            msg = f"period: expected an ATR period >= 1, got {self.period}"
            raise ValueError(msg)
        if not (math.isfinite(self.multiplier) and self.multiplier > 0):
            msg = f"multiplier: expected a finite number > 0, got {self.multiplier}"
            raise ValueError(msg)


@strategy("supertrend_trend")
class SupertrendTrend(Strategy[SupertrendTrendParams]):
    """See the module docstring for the exact rules."""

    Params = SupertrendTrendParams

    def __init__(self, params: SupertrendTrendParams) -> None:
        super().__init__(params)
        (spec,) = self.indicators(params)
        key = INDICATORS.create(spec)[0]
        self._value, self._direction = f"{key}.value", f"{key}.direction"
        self._prev = 0.0  # direction on the latest ready candle; 0 = none yet

    @classmethod
    def indicators(cls, params: SupertrendTrendParams) -> tuple[str, ...]:
        m = float(params.multiplier)  # an int when the struct is built directly
        # the spelling of the snapshot key ("3", not "3.0"), so equal specs from other users merge
        return (f"supertrend:{params.period},{int(m) if m.is_integer() else m}",)

    @classmethod
    def warmup(cls, params: SupertrendTrendParams) -> int:
        return params.period + 2  # first value after period + 1 bars, one more to see a flip

    def on_candle(self, ctx: StrategyContext[SupertrendTrendParams], candle: Candle) -> list[TargetPosition]:
        ind = ctx.indicators
        if self._direction not in ind or self._value not in ind:
            self._prev = 0.0
            return []
        d, line = ind[self._direction], ind[self._value]
        prev = self._prev
        self._prev = d
        if prev in (0.0, d):
            return []  # the first ready candle only records; no flip
        p = self.params
        if d > 0 and line < candle.close:
            want, reason = p.qty, "supertrend turned up"
        elif d > 0:
            want, reason = 0, "supertrend turned up, line not below the close: no entry"
        elif p.allow_short and line > candle.close:
            want, reason = -p.qty, "supertrend turned down"
        else:
            want, reason = 0, "supertrend turned down"
        if want == ctx.position:
            return []
        return [self.target(ctx, candle, want, reason, stop_loss=line if want else None)]
