"""What every indicator shares: the base class, the spec error and the explicit registry.

An indicator is a plain object with ``__slots__``: feed it bars with
:meth:`Indicator.update_bar` (single-input ones also take :meth:`PriceIndicator.update`),
then read ``ready``, ``value`` and, for multi-output indicators, the attributes named in
``outputs``. ``values()`` returns those outputs as a tuple in ``outputs`` order (a tuple,
not a dict, so reading a snapshot allocates as little as possible). Every output is NaN
until ``ready``; ``warmup`` is the number of bars after which ``ready`` turns True.

Instances pickle with any protocol >= 2, which is what Bytewax snapshots use: the state is
``{attribute: value}``, the same whether the class runs as Python or compiled by mypyc (see
``make native``), so a snapshot taken by one build loads in the other.

New indicators belong in this package, registered with :data:`REGISTRY`: ``make native``
compiles it, and a compiled class cannot be subclassed from interpreted code (allowing that
costs every indicator update a generic attribute lookup: -15% ticks/s through the pipeline).
The examples below subclass the bases, so they run against the sources
(tests/operators/test_native.py).

>>> class Last(PriceIndicator):
...     __slots__ = ()
...     def update(self, x: float) -> None:
...         self.value, self.ready = x, True
>>> last = Last(warmup=1)
>>> last.ready, last.outputs
(False, ('value',))
>>> last.update_bar(1.0, 2.0, 0.5, 1.5, 100.0)
>>> last.ready, last.values()
(True, (1.5,))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from operators.state import PickleByAttributes

__all__ = ["NAN", "REGISTRY", "Indicator", "IndicatorRegistry", "IndicatorSpecError", "Param", "PriceIndicator"]

NAN = math.nan


class IndicatorSpecError(ValueError):
    """A spec such as ``"ema:9"`` could not be turned into an indicator.

    A configuration error: the caller should stop and fix the spec. The message names the
    spec, what was expected and what was received.

    >>> issubclass(IndicatorSpecError, ValueError)
    True
    """


class Indicator(PickleByAttributes):
    """Base class: ``ready``, ``value``, ``warmup``, ``outputs`` and ``values()``.

    Subclasses implement :meth:`update_bar`; multi-output subclasses override ``outputs``
    and :meth:`values` (and set ``value`` to their primary output). A subclass whose
    constructor needs arguments sets ``blank`` to any valid ones (see
    :class:`operators.state.PickleByAttributes`).

    >>> Indicator(warmup=3).value
    nan
    """

    __slots__ = ("ready", "value", "warmup")

    outputs: ClassVar[tuple[str, ...]] = ("value",)

    def __init__(self, warmup: int) -> None:
        self.ready = False
        self.value = NAN
        self.warmup = warmup

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        """Fold one closed bar."""
        raise NotImplementedError

    def values(self) -> tuple[float, ...]:
        """Current outputs in ``outputs`` order (NaN while warming up)."""
        return (self.value,)

    def __repr__(self) -> str:
        outs = ", ".join(f"{n}={v:.6g}" for n, v in zip(self.outputs, self.values(), strict=True))
        return f"<{type(self).__name__} ready={self.ready} {outs}>"


class PriceIndicator(Indicator):
    """An indicator of one series (the close when driven by bars): adds :meth:`update`.

    >>> PriceIndicator(warmup=1).outputs
    ('value',)
    """

    __slots__ = ()

    def update(self, x: float) -> None:
        """Fold one value of the series."""
        raise NotImplementedError

    def update_bar(self, open: float, high: float, low: float, close: float, volume: float) -> None:
        self.update(close)


def check_period(name: str, value: int, minimum: int = 1) -> int:
    """Refuse periods TA-Lib refuses (and bools, which are ints to Python)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        msg = f"{name} must be an integer >= {minimum}, got {value!r}"
        raise ValueError(msg)
    return value


def check_positive(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        msg = f"{name} must be a finite number > 0, got {value!r}"
        raise ValueError(msg)
    return float(value)


@dataclass(frozen=True, slots=True)
class Param:
    """One positional parameter of a spec: its name, its type and its default (None = required).

    >>> Param("period", int, 14).default
    14
    """

    name: str
    kind: type[int] | type[float]
    default: int | float | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    factory: Callable[..., Indicator]
    params: tuple[Param, ...]


_I = TypeVar("_I", bound=Indicator)


def _fmt(v: int | float) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v)


class IndicatorRegistry:
    """Spec name -> indicator class, filled by the :meth:`register` decorator; duplicates raise.

    >>> reg = IndicatorRegistry()
    >>> @reg.register("last", Param("period", int, 3))
    ... class Last(PriceIndicator):
    ...     __slots__ = ("period",)
    ...     def __init__(self, period: int) -> None:
    ...         super().__init__(warmup=period)
    ...         self.period = period
    >>> key, ind = reg.create("last")
    >>> key, ind.period
    ('last_3', 3)
    >>> try:
    ...     reg.create("last:x")
    ... except IndicatorSpecError as e:
    ...     print(e)
    indicator spec 'last:x': parameter period of last expects an integer, got 'x'
    """

    __slots__ = ("_entries", "_parsed")

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        # spec -> (key, factory, args): 500 instruments x 7 timeframes build the same few specs
        self._parsed: dict[str, tuple[str, Callable[..., Indicator], tuple[int | float, ...]]] = {}

    def register(self, name: str, *params: Param) -> Callable[[type[_I]], type[_I]]:
        def add(cls: type[_I]) -> type[_I]:
            if name in self._entries:
                msg = f"indicator {name!r} is already registered to {self._entries[name].factory.__name__}"
                raise ValueError(msg)
            self._entries[name] = _Entry(name, cls, params)
            return cls

        return add

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._entries))

    def create(self, spec: str) -> tuple[str, Indicator]:
        """Parse ``name[:p1,p2,...]`` and build the indicator; returns ``(key, indicator)``.

        The key is the name and every parameter (defaults filled in) joined by ``_``:
        ``"macd"`` -> ``macd_12_26_9``, ``"bbands:20,2"`` -> ``bbands_20_2``.
        """
        parsed = self._parsed.get(spec) if isinstance(spec, str) else None
        if parsed is not None:
            cached_key, factory, cached_args = parsed
            return cached_key, factory(*cached_args)
        if not isinstance(spec, str):
            msg = f"indicator spec must be a string like 'ema:9', got {spec!r}"
            raise IndicatorSpecError(msg)
        name, _, rest = spec.strip().partition(":")
        name = name.strip().lower()
        entry = self._entries.get(name)
        if entry is None:
            msg = f"indicator spec {spec!r}: unknown indicator {name!r}; known: {', '.join(self.names())}"
            raise IndicatorSpecError(msg)
        raw = [p.strip() for p in rest.split(",")] if rest.strip() else []
        params = entry.params
        if len(raw) > len(params):
            want = ", ".join(p.name for p in params) or "no parameters"
            msg = f"indicator spec {spec!r}: {name} takes at most {len(params)} parameter(s) ({want}), got {len(raw)}"
            raise IndicatorSpecError(msg)
        args: list[int | float] = []
        for i, p in enumerate(params):
            if i < len(raw):
                args.append(self._parse(spec, name, p, raw[i]))
            elif p.default is not None:
                args.append(p.default)
            else:
                msg = f"indicator spec {spec!r}: {name} needs parameter {p.name} (e.g. '{name}:14')"
                raise IndicatorSpecError(msg)
        try:
            ind = entry.factory(*args)
        except ValueError as e:
            msg = f"indicator spec {spec!r}: {e}"
            raise IndicatorSpecError(msg) from e
        key = "_".join([name, *map(_fmt, args)])
        self._parsed[spec] = (key, entry.factory, tuple(args))
        return key, ind

    @staticmethod
    def _parse(spec: str, name: str, p: Param, text: str) -> int | float:
        try:
            if p.kind is int:
                return int(text)
            value = float(text)
        except ValueError:
            kind = "an integer" if p.kind is int else "a number"
            msg = f"indicator spec {spec!r}: parameter {p.name} of {name} expects {kind}, got {text!r}"
            raise IndicatorSpecError(msg) from None
        if not math.isfinite(value):
            msg = f"indicator spec {spec!r}: parameter {p.name} of {name} must be finite, got {text!r}"
            raise IndicatorSpecError(msg)
        return value


REGISTRY = IndicatorRegistry()
