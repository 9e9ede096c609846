"""Incremental technical indicators: O(1) per bar, picklable, equal to TA-Lib.

Every indicator is a plain ``__slots__`` object (see :mod:`.indicator` for the shared
interface: ``update_bar``, ``update``, ``ready``, ``value``, ``warmup``, ``outputs``,
``values()``). :func:`make_indicator` builds one from a spec such as ``"ema:9"``;
:class:`IndicatorSet` drives the indicators of one instrument × timeframe on every closed
candle and flattens them into a snapshot (the spec table and key naming are in
:mod:`.indicator_set`). No pandas, no I/O, no clock, no environment.

"Equal to TA-Lib" means the TA-Lib C library bundled with the ``TA-Lib==0.8.2`` wheel
(C 0.8.1), to 1e-9 relative (most outputs bit for bit; ATR, SAR and the EMA chains differ by
an ulp where TA-Lib uses fused multiply-add, which Python 3.11 lacks). TA-Lib 0.8 changed
degenerate-input rules from 0.4/0.6 (a 1e-14 or scale-relative zero test instead of 1e-8,
MFI without the "total < 1" rule, a cancellation-free Bollinger variance, re-anchored WMA
sums); these classes follow 0.8.1.

>>> from operators.indicators import Ema, make_indicator
>>> ema = make_indicator("ema:3")
>>> isinstance(ema, Ema), ema.warmup
(True, 3)
"""

from operators.indicators.averages import Dema, Ema, Sma, Tema, Wma
from operators.indicators.indicator import REGISTRY, Indicator, IndicatorSpecError, PriceIndicator
from operators.indicators.indicator_set import IndicatorSet, make_indicator
from operators.indicators.oscillators import Cci, Macd, Roc, Rsi, Stochastic, StochasticRsi, WilliamsR
from operators.indicators.trend import Adx, ParabolicSar, SuperTrend
from operators.indicators.volatility import Atr, BollingerBands, DonchianChannel, KeltnerChannel
from operators.indicators.volume import Mfi, Obv, SessionVwap
from operators.indicators.windows import RollingExtremes

__all__ = [
    "REGISTRY",
    "Adx",
    "Atr",
    "BollingerBands",
    "Cci",
    "Dema",
    "DonchianChannel",
    "Ema",
    "Indicator",
    "IndicatorSet",
    "IndicatorSpecError",
    "KeltnerChannel",
    "Macd",
    "Mfi",
    "Obv",
    "ParabolicSar",
    "PriceIndicator",
    "Roc",
    "RollingExtremes",
    "Rsi",
    "SessionVwap",
    "Sma",
    "Stochastic",
    "StochasticRsi",
    "SuperTrend",
    "Tema",
    "WilliamsR",
    "Wma",
    "make_indicator",
]
