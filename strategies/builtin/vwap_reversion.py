"""VWAP reversion: buy a close stretched below the session VWAP, exit when price is back at the VWAP.

Rules, exactly (evaluated on every closed candle of ``timeframe``):

* **Inputs.** The session ``vwap`` and ``atr:<atr_period>`` of that timeframe (snapshot keys
  ``vwap`` and ``atr_<atr_period>``).
* **Band.** ``b = vwap × band / 100`` when ``band_unit="pct"`` (``band`` is a percentage of
  the VWAP), ``b = band × ATR`` when ``band_unit="atr"``. A close is *below* when
  ``close < vwap - b`` and *above* when ``close > vwap + b``.
* **Warm-up and sessions.** While either input is absent from ``ctx.indicators`` the strategy
  returns nothing and forgets the previous candle. Entries compare with the previous ready
  candle of the same IST session (the date of ``open_time``; the VWAP restarts there), so the
  first ready candle and the first candle of each session cannot enter; they can exit.
* **Long entry.** The close is below and the previous candle's was not (it stretches below
  the band): target ``+qty``, ``stop_loss = close - stop_atr × ATR``. A close that stays
  below does not enter again, so a stop-out is not re-entered until price has come back
  inside the band.
* **Short entry**, only with ``allow_short``: the close is above and the previous one was not:
  target ``-qty``, ``stop_loss = close + stop_atr × ATR``.
* **Exit**, on a candle without an entry: long (``ctx.position > 0``) and ``close >= vwap``, or
  short (``ctx.position < 0``) and ``close <= vwap``: target 0. The exit is a level, repeated
  while the position is still open, whatever ``allow_short`` says.
* A target equal to ``ctx.position`` is not emitted.

>>> p = VwapReversionParams(band=1.5, band_unit="atr", timeframe="1m")
>>> VwapReversion.indicators(p), VwapReversion.warmup(p)
(('vwap', 'atr:14'), 16)
>>> VwapReversionParams(band=0.0)
Traceback (most recent call last):
...
ValueError: band: expected a finite width > 0, got 0.0
"""

from __future__ import annotations

import math
from typing import Literal

from operators.candles import DAY_NS, IST_OFFSET_NS
from operators.indicators import REGISTRY as INDICATORS
from schemas.market import Candle
from schemas.orders import TargetPosition
from strategies.base import AtrStopParams, Strategy, StrategyContext
from strategies.registry import strategy


class VwapReversionParams(AtrStopParams, frozen=True, kw_only=True):
    """Band width ``band`` in percent of the VWAP (``band_unit="pct"``) or in ATRs (``"atr"``)."""

    band: float = 0.5
    band_unit: Literal["pct", "atr"] = "pct"
    allow_short: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.band) and self.band > 0):
            msg = f"band: expected a finite width > 0, got {self.band}"
            raise ValueError(msg)
        if self.band_unit == "pct" and self.band >= 100:
            msg = f"band: expected a percentage below 100, got {self.band}"
            raise ValueError(msg)


@strategy("vwap_reversion")
class VwapReversion(Strategy[VwapReversionParams]):
    """See the module docstring for the exact rules."""

    Params = VwapReversionParams

    def __init__(self, params: VwapReversionParams) -> None:
        super().__init__(params)
        vwap, atr = (INDICATORS.create(s)[0] for s in self.indicators(params))
        self._vwap, self._atr = vwap, atr
        # (IST date, below, above) of the latest ready candle; None: nothing recorded
        self._prev: tuple[int, bool, bool] | None = None

    @classmethod
    def indicators(cls, params: VwapReversionParams) -> tuple[str, ...]:
        return ("vwap", f"atr:{params.atr_period}")

    @classmethod
    def warmup(cls, params: VwapReversionParams) -> int:
        return params.atr_period + 2  # ATR ready after atr_period + 1 bars, one more to see a stretch

    def on_candle(self, ctx: StrategyContext[VwapReversionParams], candle: Candle) -> list[TargetPosition]:
        ind = ctx.indicators
        if self._vwap not in ind or self._atr not in ind:
            self._prev = None
            return []
        p = self.params
        vwap, atr, close = ind[self._vwap], ind[self._atr], candle.close
        b = vwap * p.band / 100.0 if p.band_unit == "pct" else p.band * atr
        below, above = close < vwap - b, close > vwap + b
        day = (candle.open_time + IST_OFFSET_NS) // DAY_NS
        prev = self._prev
        self._prev = (day, below, above)
        # a session's first candle has nothing to stretch from: as if it had been below and above
        was_below, was_above = (True, True) if prev is None or prev[0] != day else prev[1:]
        dist = p.stop_atr * atr
        want: int
        stop: float | None = None
        if below and not was_below:
            want, stop, reason = p.qty, close - dist, f"close {close} below vwap {vwap:.2f} by more than the band"
        elif p.allow_short and above and not was_above:
            want, stop, reason = -p.qty, close + dist, f"close {close} above vwap {vwap:.2f} by more than the band"
        elif (ctx.position > 0 and close >= vwap) or (ctx.position < 0 and close <= vwap):
            want, reason = 0, f"close {close} back at vwap {vwap:.2f}"
        else:
            return []
        if want == ctx.position:
            return []
        return [self.target(ctx, candle, want, reason, stop_loss=stop)]
