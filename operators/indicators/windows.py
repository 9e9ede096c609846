"""Sliding-window extremes in amortised O(1): monotonic deques of (value, index).

>>> w = RollingExtremes(3)
>>> for high, low in [(5.0, 1.0), (4.0, 2.0), (3.0, 0.5), (2.0, 1.5)]:
...     w.push(high, low)
>>> w.full, w.high, w.low   # window is the last three pushes
(True, 4.0, 0.5)
"""

from __future__ import annotations

from collections import deque

from operators.indicators.indicator import NAN
from operators.state import PickleByAttributes

__all__ = ["RollingExtremes"]


class RollingExtremes(PickleByAttributes):
    """Highest ``high`` and lowest ``low`` of the last ``period`` pushes.

    Each push is amortised O(1): a value is appended once and popped at most once. NaN
    until the first push; ``full`` once ``period`` values have been pushed.

    >>> w = RollingExtremes(2)
    >>> w.push(3.0, 1.0); w.push(2.0, 2.0); w.push(1.0, 1.5)
    >>> w.high, w.low
    (2.0, 1.5)
    """

    __slots__ = ("_highs", "_lows", "count", "full", "high", "low", "period")
    blank = (1,)

    def __init__(self, period: int) -> None:
        self.period = period
        self.count = 0
        self.full = False
        self.high = NAN
        self.low = NAN
        self._highs: deque[tuple[float, int]] = deque()
        self._lows: deque[tuple[float, int]] = deque()

    def push(self, high: float, low: float) -> None:
        t = self.count + 1
        self.count = t
        gone = t - self.period  # indices <= gone have left the window; at most one per push
        highs = self._highs
        while highs and highs[-1][0] <= high:
            highs.pop()
        highs.append((high, t))
        if highs[0][1] <= gone:
            highs.popleft()
        lows = self._lows
        while lows and lows[-1][0] >= low:
            lows.pop()
        lows.append((low, t))
        if lows[0][1] <= gone:
            lows.popleft()
        self.high = highs[0][0]
        self.low = lows[0][0]
        if not self.full and t >= self.period:
            self.full = True
