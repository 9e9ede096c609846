"""EMA crossover: long when the fast EMA crosses above the slow one, out (or short) when it crosses below.

Rules, exactly (evaluated on every closed candle of ``timeframe``):

* **Inputs.** ``ema:<fast>``, ``ema:<slow>`` and ``atr:<atr_period>`` of that timeframe
  (snapshot keys ``ema_<fast>``, ``ema_<slow>``, ``atr_<atr_period>``).
* **Warm-up.** While any of the three is absent from ``ctx.indicators`` the strategy returns
  nothing and forgets the previous side, so a cross needs two consecutive ready candles.
* **Side.** With ``d = ema_fast - ema_slow`` the side is +1 when ``d > 0`` and -1 when
  ``d < 0``; a candle with ``d == 0`` changes nothing (touching is not crossing). The first
  ready candle only records its side.
* **Cross up** (side -1 then +1): target ``+qty``, ``stop_loss = close - stop_atr × ATR``.
* **Cross down** (side +1 then -1): target 0; with ``allow_short`` target ``-qty`` with
  ``stop_loss = close + stop_atr × ATR``.
* Nothing else produces a target: between crosses the strategy is silent (after a stop-out it
  waits for the next cross), and a target equal to ``ctx.position`` is not emitted.

>>> p = EmaCrossoverParams(fast=5, slow=13, timeframe="1m")
>>> EmaCrossover.indicators(p), EmaCrossover.warmup(p)
(('ema:5', 'ema:13', 'atr:14'), 16)
>>> EmaCrossoverParams(fast=21, slow=9)
Traceback (most recent call last):
...
ValueError: slow: expected a period above fast (21), got 9
"""

from __future__ import annotations

from operators.indicators import REGISTRY as INDICATORS
from schemas.market import Candle
from schemas.orders import TargetPosition
from strategies.base import AtrStopParams, Strategy, StrategyContext
from strategies.registry import strategy


class EmaCrossoverParams(AtrStopParams, frozen=True, kw_only=True):
    """``fast``/``slow`` EMA periods; the stop sits ``stop_atr`` ATR(``atr_period``) from the close."""

    fast: int = 9
    slow: int = 21
    allow_short: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fast < 2:
            msg = f"fast: expected an EMA period >= 2, got {self.fast}"
            raise ValueError(msg)
        if self.slow <= self.fast:
            msg = f"slow: expected a period above fast ({self.fast}), got {self.slow}"
            raise ValueError(msg)


@strategy("ema_crossover")
class EmaCrossover(Strategy[EmaCrossoverParams]):
    """See the module docstring for the exact rules."""

    Params = EmaCrossoverParams

    def __init__(self, params: EmaCrossoverParams) -> None:
        super().__init__(params)
        fast, slow, atr = (INDICATORS.create(s)[0] for s in self.indicators(params))
        self._fast, self._slow, self._atr = fast, slow, atr
        self._side = 0  # side of (fast - slow) on the latest ready candle; 0 = none yet

    @classmethod
    def indicators(cls, params: EmaCrossoverParams) -> tuple[str, ...]:
        return (f"ema:{params.fast}", f"ema:{params.slow}", f"atr:{params.atr_period}")

    @classmethod
    def warmup(cls, params: EmaCrossoverParams) -> int:
        # the slower of the slow EMA and the ATR, plus one candle to see a change of side
        return max(params.slow, params.atr_period + 1) + 1

    def on_candle(self, ctx: StrategyContext[EmaCrossoverParams], candle: Candle) -> list[TargetPosition]:
        ind = ctx.indicators
        if self._fast not in ind or self._slow not in ind or self._atr not in ind:
            self._side = 0
            return []
        d = ind[self._fast] - ind[self._slow]
        side = 1 if d > 0 else -1 if d < 0 else 0
        prev = self._side
        if side in (0, prev):
            return []
        self._side = side
        if prev == 0:
            return []  # the first ready candle only records
        p = self.params
        dist = p.stop_atr * ind[self._atr]
        if side > 0:
            want, stop, reason = p.qty, candle.close - dist, f"ema {p.fast} crossed above ema {p.slow}"
        elif p.allow_short:
            want, stop, reason = -p.qty, candle.close + dist, f"ema {p.fast} crossed below ema {p.slow}"
        else:
            want, stop, reason = 0, None, f"ema {p.fast} crossed below ema {p.slow}"
        if want == ctx.position:
            return []
        return [self.target(ctx, candle, want, reason, stop_loss=stop)]
