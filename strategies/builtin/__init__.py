"""The five built-in strategies; importing this package registers them in ``REGISTRY``.

Each module is imported explicitly (nothing is discovered from the filesystem), and each
module docstring states its exact entry, exit, stop-loss and warm-up rules.

==========================  ===================================================================
name                        rule in one line
==========================  ===================================================================
ema_crossover               long on a fast-over-slow EMA cross, flat (or short) on the cross down
rsi_reversion               long on RSI crossing up through oversold, flat at the exit level
opening_range_breakout      first close outside the session's opening range, once a session
vwap_reversion              long on a close stretched below the session VWAP, flat back at it
supertrend_trend            long when the SuperTrend turns up, flat (or short) when it turns down
==========================  ===================================================================

>>> from strategies.registry import REGISTRY
>>> all(name in REGISTRY for name in NAMES)
True
>>> params = REGISTRY.params("ema_crossover", {"fast": 5, "timeframe": "1m"})
>>> REGISTRY["ema_crossover"].indicators(params), REGISTRY["ema_crossover"].warmup(params)
(('ema:5', 'ema:21', 'atr:14'), 22)
"""

from strategies.builtin import ema_crossover, opening_range_breakout, rsi_reversion, supertrend_trend, vwap_reversion
from strategies.builtin.ema_crossover import EmaCrossover, EmaCrossoverParams
from strategies.builtin.opening_range_breakout import OpeningRangeBreakout, OpeningRangeBreakoutParams
from strategies.builtin.rsi_reversion import RsiReversion, RsiReversionParams
from strategies.builtin.supertrend_trend import SupertrendTrend, SupertrendTrendParams
from strategies.builtin.vwap_reversion import VwapReversion, VwapReversionParams

NAMES = ("ema_crossover", "rsi_reversion", "opening_range_breakout", "vwap_reversion", "supertrend_trend")

__all__ = [
    "NAMES",
    "EmaCrossover",
    "EmaCrossoverParams",
    "OpeningRangeBreakout",
    "OpeningRangeBreakoutParams",
    "RsiReversion",
    "RsiReversionParams",
    "SupertrendTrend",
    "SupertrendTrendParams",
    "VwapReversion",
    "VwapReversionParams",
    "ema_crossover",
    "opening_range_breakout",
    "rsi_reversion",
    "supertrend_trend",
    "vwap_reversion",
]
