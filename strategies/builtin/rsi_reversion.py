"""RSI mean reversion: buy the turn up out of oversold, get out when the RSI is back at the exit level.

Rules, exactly (evaluated on every closed candle of ``timeframe``; ``r`` is this candle's RSI,
``r0`` the previous ready candle's):

* **Inputs.** ``rsi:<period>`` and ``atr:<atr_period>`` of that timeframe (snapshot keys
  ``rsi_<period>``, ``atr_<atr_period>``).
* **Warm-up.** While either is absent from ``ctx.indicators`` the strategy returns nothing and
  forgets ``r0``, so a cross needs two consecutive ready candles: the first ready candle (after
  the start or any gap) cannot enter; it can exit.
* **Long entry.** ``r0 < oversold <= r`` (the RSI crosses up through ``oversold``) and
  ``r < exit``: target ``+qty``, ``stop_loss = close - stop_atr × ATR``. (A jump straight to
  ``exit`` or beyond is not an entry: the trade would be closed on the same rule.)
* **Short entry**, only with ``allow_short``: ``r0 > overbought >= r`` and ``r > exit``: target
  ``-qty``, ``stop_loss = close + stop_atr × ATR``.
* **Exit**, on a candle without an entry: long (``ctx.position > 0``) and ``r >= exit``, or
  short (``ctx.position < 0``) and ``r <= exit``: target 0. The exit is a level, so it is
  repeated on later candles while the position is still open; it applies whatever
  ``allow_short`` says.
* A target equal to ``ctx.position`` is not emitted.

>>> p = RsiReversionParams(period=7, timeframe="1m")
>>> RsiReversion.indicators(p), RsiReversion.warmup(p)
(('rsi:7', 'atr:14'), 16)
>>> RsiReversionParams(oversold=40.0, exit=35.0)
Traceback (most recent call last):
...
ValueError: exit: expected a level above oversold (40.0), got 35.0
"""

from __future__ import annotations

from operators.indicators import REGISTRY as INDICATORS
from schemas.market import Candle
from schemas.orders import TargetPosition
from strategies.base import AtrStopParams, Strategy, StrategyContext
from strategies.registry import strategy


class RsiReversionParams(AtrStopParams, frozen=True, kw_only=True):
    """RSI ``period`` and levels ``0 < oversold < exit < overbought < 100``; ATR-based stop."""

    period: int = 14
    oversold: float = 30.0
    overbought: float = 70.0
    exit: float = 50.0
    allow_short: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.period < 2:
            msg = f"period: expected an RSI period >= 2, got {self.period}"
            raise ValueError(msg)
        if not 0 < self.oversold < 100:
            msg = f"oversold: expected a level between 0 and 100, got {self.oversold}"
            raise ValueError(msg)
        if not self.oversold < self.exit:
            msg = f"exit: expected a level above oversold ({self.oversold}), got {self.exit}"
            raise ValueError(msg)
        if not self.exit < self.overbought < 100:
            msg = f"overbought: expected a level above exit ({self.exit}) and below 100, got {self.overbought}"
            raise ValueError(msg)


@strategy("rsi_reversion")
class RsiReversion(Strategy[RsiReversionParams]):
    """See the module docstring for the exact rules."""

    Params = RsiReversionParams

    def __init__(self, params: RsiReversionParams) -> None:
        super().__init__(params)
        rsi, atr = (INDICATORS.create(s)[0] for s in self.indicators(params))
        self._rsi, self._atr = rsi, atr
        self._prev: float | None = None  # RSI of the latest ready candle

    @classmethod
    def indicators(cls, params: RsiReversionParams) -> tuple[str, ...]:
        return (f"rsi:{params.period}", f"atr:{params.atr_period}")

    @classmethod
    def warmup(cls, params: RsiReversionParams) -> int:
        # RSI needs period + 1 closes, ATR atr_period + 1 bars; one more to see a cross
        return max(params.period, params.atr_period) + 2

    def on_candle(self, ctx: StrategyContext[RsiReversionParams], candle: Candle) -> list[TargetPosition]:
        ind = ctx.indicators
        if self._rsi not in ind or self._atr not in ind:
            self._prev = None
            return []
        r, r0 = ind[self._rsi], self._prev
        self._prev = r
        p = self.params
        dist = p.stop_atr * ind[self._atr]
        want: int
        stop: float | None = None
        # on the first ready candle there is nothing to cross from: only the exit applies
        if r0 is not None and r0 < p.oversold <= r < p.exit:
            want, stop, reason = p.qty, candle.close - dist, f"rsi {r:.1f} crossed up through {p.oversold:g}"
        elif p.allow_short and r0 is not None and r0 > p.overbought >= r > p.exit:
            want, stop, reason = -p.qty, candle.close + dist, f"rsi {r:.1f} crossed down through {p.overbought:g}"
        elif (ctx.position > 0 and r >= p.exit) or (ctx.position < 0 and r <= p.exit):
            want, reason = 0, f"rsi {r:.1f} reached the exit level {p.exit:g}"
        else:
            return []
        if want == ctx.position:
            return []
        return [self.target(ctx, candle, want, reason, stop_loss=stop)]
