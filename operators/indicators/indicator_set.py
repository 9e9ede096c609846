"""Specs to indicators, and the set of indicators one instrument × timeframe keeps.

A spec is ``name[:p1,p2,...]``; missing trailing parameters take TA-Lib's defaults.
Snapshot keys are the name and every parameter joined by ``_`` (``ema_9``, ``rsi_14``,
``bbands_20_2``, ``vwap``); a multi-output indicator contributes one key per output,
``<key>.<output>`` (``macd_12_26_9.signal``, ``supertrend_10_3.direction``). Use
:attr:`IndicatorSet.keys` rather than parsing keys: float parameters keep their decimal
point (``sar_0.02_0.2``).

======================  ==========================================  ===========================
spec (defaults)         outputs                                     TA-Lib oracle
======================  ==========================================  ===========================
sma:period              value                                       SMA
ema:period              value                                       EMA
wma:period              value                                       WMA
dema:period             value                                       DEMA
tema:period             value                                       TEMA
rsi:14                  value                                       RSI
macd:12,26,9            macd, signal, hist                          MACD
bbands:20,2             upper, middle, lower                        BBANDS (SMA)
atr:14                  value                                       ATR
stoch:5,3,3             k, d                                        STOCH (SMA)
stochrsi:14,5,3         k, d                                        STOCHRSI (SMA)
adx:14                  adx, plus_di, minus_di                      ADX, PLUS_DI, MINUS_DI
cci:14                  value                                       CCI
willr:14                value                                       WILLR
roc:10                  value                                       ROC
obv                     value                                       OBV
mfi:14                  value                                       MFI
donchian:20             upper, middle, lower                        MAX/MIN (composition)
keltner:20,2,10         upper, middle, lower                        EMA + ATR (composition)
supertrend:10,3         value, direction                            loop over ATR
vwap                    value (resets when the session key changes) cumulative sums
sar:0.02,0.2            value                                       SAR
======================  ==========================================  ===========================

>>> s = IndicatorSet(["sma:2", "macd:2,3,1", "vwap"])
>>> s.keys
('sma_2', 'macd_2_3_1.macd', 'macd_2_3_1.signal', 'macd_2_3_1.hist', 'vwap')
>>> for c in (10.0, 11.0, 12.0):
...     s.on_bar(c, c, c, c, 100.0, 20251120)
>>> s.snapshot()
{'sma_2': 11.5, 'macd_2_3_1.macd': 0.5, 'macd_2_3_1.signal': 0.5, 'macd_2_3_1.hist': 0.0, 'vwap': 11.0}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

# Importing the families fills REGISTRY (explicit imports, no discovery).
from operators.indicators import averages, oscillators, trend, volatility, volume
from operators.indicators.indicator import REGISTRY, Indicator, IndicatorSpecError, PriceIndicator
from operators.indicators.volume import SessionVwap

__all__ = ["IndicatorSet", "make_indicator"]

_FAMILIES = (averages, oscillators, trend, volatility, volume)


def make_indicator(spec: str) -> Indicator:
    """Build one indicator from a spec such as ``"ema:9"``, ``"macd:12,26,9"`` or ``"bbands:20,2"``.

    Raises :class:`IndicatorSpecError` (a ``ValueError``) naming the spec on bad input.

    >>> make_indicator("supertrend:10,3").warmup
    11
    >>> try:
    ...     make_indicator("ema:0")
    ... except IndicatorSpecError as e:
    ...     print(e)
    indicator spec 'ema:0': period must be an integer >= 2, got 0
    """
    return REGISTRY.create(spec)[1]


class IndicatorSet:
    """The indicators of one instrument × timeframe, driven together on every closed bar.

    :meth:`on_bar` updates all of them (``session_key`` — e.g. the IST date as an int —
    resets session VWAPs when it changes). :meth:`snapshot` flattens the outputs of the
    indicators that are ready into ``{key: value}``; indicators still warming up are absent.
    Picklable; duplicate specs (same key) raise :class:`IndicatorSpecError`.

    >>> s = IndicatorSet(("ema:2", "rsi:2"))
    >>> for c in (10.0, 11.0, 10.5):
    ...     s.on_bar(c, c, c, c, 1.0, 0)
    >>> s.ready, s.warmup, sorted(s.snapshot())
    (True, 3, ['ema_2', 'rsi_2'])
    """

    __slots__ = ("_bar_fns", "_close_fns", "_flat", "_session_fns", "indicators", "keys", "specs")

    def __init__(self, specs: Iterable[str]) -> None:
        self.specs = tuple(specs)
        built: dict[str, Indicator] = {}
        for spec in self.specs:
            key, ind = REGISTRY.create(spec)
            if key in built:
                msg = f"indicator spec {spec!r}: duplicate of an earlier spec (both are {key!r}) in {list(self.specs)}"
                raise IndicatorSpecError(msg)
            built[key] = ind
        self.indicators: dict[str, Indicator] = built
        self._wire()

    def _wire(self) -> None:
        # Bound methods are rebuilt here, never pickled: on_bar pays no attribute lookups.
        self._close_fns: tuple[Callable[[float], None], ...] = tuple(
            ind.update for ind in self.indicators.values() if isinstance(ind, PriceIndicator)
        )
        self._session_fns: tuple[Callable[[float, float, float, float, float, int], None], ...] = tuple(
            ind.update_bar for ind in self.indicators.values() if isinstance(ind, SessionVwap)
        )
        self._bar_fns: tuple[Callable[[float, float, float, float, float], None], ...] = tuple(
            ind.update_bar for ind in self.indicators.values() if not isinstance(ind, PriceIndicator | SessionVwap)
        )
        flat: list[tuple[str, Indicator, str]] = []  # (snapshot key, indicator, output attribute)
        for key, ind in self.indicators.items():
            if len(ind.outputs) == 1:
                flat.append((key, ind, "value"))
            else:
                flat.extend((f"{key}.{name}", ind, name) for name in ind.outputs)
        self._flat = tuple(flat)
        self.keys = tuple(k for k, _, _ in flat)

    def add(
        self, specs: Iterable[str], history: Iterable[tuple[float, float, float, float, float, int]] = ()
    ) -> tuple[str, ...]:
        """Add the specs that are not computed yet, warm the new indicators on ``history`` bars
        (``(open, high, low, close, volume, session_key)``, oldest first), and return their keys.

        >>> s = IndicatorSet(["sma:2"])
        >>> s.add(["sma:2", "ema:2"], [(1.0, 1.0, 1.0, c, 1.0, 0) for c in (1.0, 2.0)])
        ('ema_2',)
        >>> s.snapshot()["ema_2"]
        1.5
        """
        new: dict[str, Indicator] = {}
        for spec in specs:
            key, ind = REGISTRY.create(spec)
            if key not in self.indicators and key not in new:
                new[key] = ind
        if not new:
            return ()
        warm = IndicatorSet(())
        warm.indicators = new
        warm._wire()
        for bar in history:
            warm.on_bar(*bar)
        self.specs = (*self.specs, *(spec for spec in specs if REGISTRY.create(spec)[0] in new))
        self.indicators.update(new)
        self._wire()
        return tuple(new)

    def __getstate__(self) -> tuple[tuple[str, ...], dict[str, Indicator]]:
        return self.specs, self.indicators

    def __getnewargs__(self) -> tuple[tuple[str, ...]]:
        return ((),)  # unpickled as IndicatorSet(()), then set from the state (see operators.state)

    def __setstate__(self, state: tuple[tuple[str, ...], dict[str, Indicator]]) -> None:
        self.specs, self.indicators = state
        self._wire()

    @property
    def ready(self) -> bool:
        """True once every indicator is ready."""
        return all(ind.ready for ind in self.indicators.values())

    @property
    def warmup(self) -> int:
        """Bars needed before every indicator is ready (the longest warm-up)."""
        return max((ind.warmup for ind in self.indicators.values()), default=0)

    def on_bar(self, open: float, high: float, low: float, close: float, volume: float, session_key: int) -> None:
        """Update every indicator with one closed bar."""
        for f in self._close_fns:
            f(close)
        for g in self._bar_fns:
            g(open, high, low, close, volume)
        for h in self._session_fns:
            h(open, high, low, close, volume, session_key)

    def snapshot(self) -> dict[str, float]:
        """``{key: value}`` for every output of every ready indicator."""
        out: dict[str, float] = {}
        for key, ind, attr in self._flat:
            if ind.ready:
                out[key] = getattr(ind, attr)
        return out
