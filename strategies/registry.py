"""An explicit registry of strategy classes, filled by ``@strategy("name")``.

Nothing is discovered from the filesystem: ``strategies.builtin`` imports each built-in
module, and a deployment imports its own modules the same way. Registering a name twice
raises. Params arrive as JSON (API, ``ctl.commands``, CLI) and are validated against the
strategy's frozen ``Params`` struct; a bad value is refused with the field's name.

>>> reg = StrategyRegistry()
>>> from strategies.base import Strategy, StrategyParams
>>> class DemoParams(StrategyParams, frozen=True, kw_only=True):
...     fast: int = 9
>>> @reg.register("demo")
... class Demo(Strategy[DemoParams]):
...     Params = DemoParams
...     def on_candle(self, ctx, candle):
...         return []
>>> reg.params("demo", {"fast": 5, "timeframe": "1m"}).fast
5
>>> reg.params("demo", {"fast": "five"})
Traceback (most recent call last):
...
strategies.registry.ParamsError: demo params: Expected `int`, got `str` - at `$.fast`
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import msgspec

from strategies.base import Strategy, StrategyParams


class ParamsError(ValueError):
    """Strategy params failed validation; the message names the field."""


class UnknownStrategy(KeyError):
    """No strategy is registered under that name."""

    def __str__(self) -> str:  # a KeyError's str() is the repr of its message, quotes included
        return str(self.args[0]) if self.args else ""


class StrategyRegistry(Mapping[str, type[Strategy[Any]]]):
    def __init__(self) -> None:
        self._by_name: dict[str, type[Strategy[Any]]] = {}

    def register(self, name: str) -> Callable[[type[Strategy[Any]]], type[Strategy[Any]]]:
        def add(cls: type[Strategy[Any]]) -> type[Strategy[Any]]:
            if name in self._by_name:
                msg = f"strategy {name!r} is already registered (by {self._by_name[name].__qualname__})"
                raise ValueError(msg)
            if not (isinstance(getattr(cls, "Params", None), type) and issubclass(cls.Params, StrategyParams)):
                msg = f"strategy {name!r}: {cls.__qualname__}.Params must subclass StrategyParams"
                raise TypeError(msg)
            cls.name = name
            self._by_name[name] = cls
            return cls

        return add

    def __getitem__(self, name: str) -> type[Strategy[Any]]:
        try:
            return self._by_name[name]
        except KeyError:
            msg = f"unknown strategy {name!r}; known strategies: {', '.join(sorted(self._by_name)) or 'none'}"
            raise UnknownStrategy(msg) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def params(self, name: str, raw: Mapping[str, Any] | bytes | str) -> StrategyParams:
        """Validate raw params (a mapping or JSON) into the strategy's frozen Params."""
        cls = self[name].Params
        try:
            if isinstance(raw, bytes | str):
                return msgspec.json.decode(raw, type=cls)
            return msgspec.convert(dict(raw), cls)
        except msgspec.ValidationError as exc:
            msg = f"{name} params: {exc}"
            raise ParamsError(msg) from None
        except msgspec.DecodeError as exc:
            msg = f"{name} params: not valid JSON ({exc})"
            raise ParamsError(msg) from None

    def create(self, name: str, raw: Mapping[str, Any] | bytes | str | None = None) -> Strategy[Any]:
        return self[name](self.params(name, raw or {}))


REGISTRY = StrategyRegistry()
strategy = REGISTRY.register
