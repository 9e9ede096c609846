"""Strategy evaluation for one instrument: isolation, enable/disable, re-configuration.

A :class:`StrategyHost` holds every deployed strategy instance subscribed to one instrument.
On a closed candle it builds each subscriber's read-only context (indicator values of that
timeframe, recent candles, the instance's position) and collects the target positions. A
strategy that raises - or returns something that is not a target for this instrument - is
isolated: a :class:`~schemas.risk.StrategyError` is emitted, and after ``max_errors``
consecutive failures the instance is disabled; the others keep running. Enable, disable and
configure arrive as control commands and apply to the instance everywhere it runs.

>>> from strategies.base import Strategy, StrategyParams
>>> from strategies.registry import StrategyRegistry
>>> reg = StrategyRegistry()
>>> @reg.register("boom")
... class Boom(Strategy[StrategyParams]):
...     Params = StrategyParams
...     def on_candle(self, ctx, candle):
...         raise ZeroDivisionError("bad math")
>>> host = StrategyHost("NSE:INFY", [Deployment("b1", "boom", reg.params("boom", {"timeframe": "1m"}))], reg,
...                     max_errors=2)
>>> from schemas.market import Candle, Instrument
>>> c = Candle(instrument="NSE:INFY", timeframe="1m", open_time=0, ts_event=60, ts_init=60, open=1.0, high=1.0,
...            low=1.0, close=1.0, volume=1, trade_count=1, vwap=1.0, oi=0, final=True)
>>> [(e.error_count, e.disabled) for e in host.on_candle(c, {}, now=60) + host.on_candle(c, {}, now=61)]
[(1, False), (2, True)]
>>> host.on_candle(c, {}, now=62)
[]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple, overload

from schemas.control import ConfigureStrategy, DisableStrategy, EnableStrategy
from schemas.market import Candle, Instrument
from schemas.orders import TargetPosition
from schemas.risk import StrategyError
from strategies.base import Strategy, StrategyContext, StrategyParams
from strategies.registry import StrategyRegistry


@dataclass(frozen=True)
class Deployment:
    """One configured instance of a registered strategy."""

    strategy_id: str  # unique per deployment; appears in signals, orders and the strategies table
    kind: str  # the registry name, e.g. "ema_crossover"
    params: StrategyParams
    account: str = "paper"
    enabled: bool = True

    def subscribes(self, instrument: str) -> bool:
        return not self.params.instruments or instrument in self.params.instruments

    def untradable(self, master: Iterable[Instrument]) -> str | None:
        """Why some instruments of ``master`` it subscribes to can never be traded, or None.

        The risk gate rounds a target toward zero to whole lots and refuses indices, so on an
        instrument whose lot exceeds ``qty`` (1 share of a NIFTY future, lot 75) or an index
        every signal ends as a ``LOT_SIZE`` or ``UNKNOWN_INSTRUMENT`` rejection. Said once at
        start, not learnt from a stream of rejections.

        >>> from schemas.market import InstrumentType as T
        >>> def row(key, kind, lot):
        ...     return Instrument(instrument=key, instrument_token=1, exchange_token=1, tradingsymbol=key, name=key,
        ...                       exchange="NSE", segment="NSE", instrument_type=kind, tick_size=0.05, lot_size=lot)
        >>> from strategies.base import StrategyParams
        >>> d = Deployment("ema_1", "ema_crossover", StrategyParams(qty=10))
        >>> why = d.untradable([row("NSE:INFY", T.EQ, 1), row("NFO:NIFTYFUT", T.FUT, 75), row("NSE:NIFTY 50", T.INDEX, 1)])
        >>> print(why.split("; ")[0])
        2 of its 3 instruments never trade: NFO:NIFTYFUT has a lot (75) above its qty 10, NSE:NIFTY 50 is an index
        >>> why.split("; ")[1]
        'its signals there are rejected'
        """
        mine = [i for i in master if self.subscribes(i.instrument)]
        listed = self.params.instruments
        missing = sorted(set(listed) - {i.instrument for i in mine}) if listed else []
        groups = LotFit.groups((i.instrument, not i.tradable, i.lot_size) for i in mine)
        return LotFit.tally(groups, self.params.qty, missing).untradable()


class LotFit(NamedTuple):
    """A deployment's instruments as far as whole lots of its qty go, from which
    :meth:`Deployment.untradable` states what can never trade. Counted from the loaded master
    (live start) or by SQL (the API, ``strategies list``); the examples are the first symbols
    in code point order, so both ways give the same sentence."""

    qty: int  # the deployment's target size, in units
    subscribed: int  # instruments it subscribes to (listed ones the master lacks included)
    big: int  # of those, tradable with a lot above the qty
    big_first: str
    lots: tuple[int, int]  # the smallest and largest such lot
    indices: int  # of those, indices (never tradable)
    index_first: str
    missing: int = 0  # listed by the deployment, not in the active master: no ticks, no trades
    missing_first: str = ""

    @staticmethod
    def groups(instruments: Iterable[tuple[str, bool, int]]) -> list[tuple[bool, int, int, str]]:
        """``(symbol, is an index, lot)`` rows grouped as :meth:`tally` takes them:
        ``(is an index, lot, how many, first symbol)``.

        >>> sorted(LotFit.groups([("NFO:B", False, 50), ("NFO:A", False, 50), ("NSE:X", False, 1)]))
        [(False, 1, 1, 'NSE:X'), (False, 50, 2, 'NFO:A')]
        """
        acc: dict[tuple[bool, int], list[Any]] = {}
        for symbol, index, lot in instruments:
            group = acc.get((index, lot))
            if group is None:
                acc[(index, lot)] = [1, symbol]
            else:
                group[0] += 1
                group[1] = min(group[1], symbol)
        return [(index, lot, n, first) for (index, lot), (n, first) in acc.items()]

    @classmethod
    def tally(cls, groups: Iterable[tuple[bool, int, int, str]], qty: int, missing: Sequence[str] = ()) -> LotFit:
        """From the subscribed instruments grouped by (is an index, lot) - see :meth:`groups` -
        and the listed symbols the active master lacks."""
        groups = list(groups)
        big = [(lot, n, first) for index, lot, n, first in groups if not index and lot > qty]
        indices = [(n, first) for index, _, n, first in groups if index]
        return cls(
            qty=qty,
            subscribed=sum(g[2] for g in groups) + len(missing),
            big=sum(n for _, n, _ in big),
            big_first=min((first for *_, first in big), default=""),
            lots=(min(b[0] for b in big), max(b[0] for b in big)) if big else (0, 0),
            indices=sum(n for n, _ in indices),
            index_first=min((first for _, first in indices), default=""),
            missing=len(missing),
            missing_first=min(missing, default=""),
        )

    def untradable(self) -> str | None:
        """
        >>> print(LotFit(1, 5, 3, "NFO:A", (35, 75), 1, "NSE:N50").untradable().split(";")[0])
        4 of its 5 instruments never trade: 3 (e.g. NFO:A) have lots (35-75) above its qty 1, NSE:N50 is an index
        >>> print(LotFit(1, 2, 0, "", (0, 0), 0, "", 1, "NSE:GONE").untradable().split(";")[0])
        1 of its 2 instruments never trade: NSE:GONE is not in the active instrument master
        >>> LotFit(1, 3, 0, "", (0, 0), 0, "").untradable() is None
        True
        """
        if not self.big and not self.indices and not self.missing:
            return None
        parts = []
        if self.big:
            lo, hi = self.lots
            lot = f"a lot ({lo})" if lo == hi else f"lots ({lo}-{hi})"
            parts.append(
                f"{self._who(self.big, self.big_first)} {'has' if self.big == 1 else 'have'} {lot} above its qty {self.qty}"
            )
        if self.indices:
            parts.append(
                f"{self._who(self.indices, self.index_first)} {'is an index' if self.indices == 1 else 'are indices'}"
            )
        if self.missing:
            are = "is" if self.missing == 1 else "are"
            parts.append(f"{self._who(self.missing, self.missing_first)} {are} not in the active instrument master")
        never, what = self.big + self.indices + self.missing, ", ".join(parts)
        return f"{never} of its {self.subscribed} instruments never trade: {what}; its signals there are rejected"

    @staticmethod
    def _who(n: int, first: str) -> str:
        return first if n == 1 else f"{n} (e.g. {first})"


class RecentCandles(Sequence[Candle]):
    """``ctx.candles``: a read-only view of a timeframe's recent closed candles, oldest first.

    A view, not a copy: a strategy whose warm-up is long in bars (an opening range of 15
    minutes on 1 s bars keeps 900) made the host copy that whole history into a tuple on
    every closed bar of every instrument, whether any subscriber read it or not. It reads the
    host's history as it is during the call; keep what you need, not the view.
    """

    __slots__ = ("_candles",)

    def __init__(self, candles: deque[Candle]) -> None:
        self._candles = candles

    def __len__(self) -> int:
        return len(self._candles)

    @overload
    def __getitem__(self, index: int) -> Candle: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[Candle, ...]: ...
    def __getitem__(self, index: int | slice) -> Candle | tuple[Candle, ...]:
        if isinstance(index, slice):  # only the sliced candles: c[-3:] of 900 copies three
            candles = self._candles
            return tuple(candles[i] for i in range(len(candles))[index])
        return self._candles[index]

    def __iter__(self) -> Iterator[Candle]:
        return iter(self._candles)

    def __reversed__(self) -> Iterator[Candle]:
        return reversed(self._candles)

    def __repr__(self) -> str:
        return f"RecentCandles({len(self._candles)} candles)"


class _Instance:
    __slots__ = ("deployment", "enabled", "errors", "strategy")

    def __init__(self, deployment: Deployment, strategy: Strategy[Any]) -> None:
        self.deployment, self.strategy = deployment, strategy
        self.enabled = deployment.enabled
        self.errors = 0  # consecutive failures


# (strategy id, instance, its bound on_candle, account, params): one subscriber of a timeframe
_Subscriber = tuple[str, _Instance, Callable[[StrategyContext[Any], Candle], list[TargetPosition]], str, Any]


class StrategyHost:
    """Every strategy instance of one instrument (see the module docstring)."""

    def __init__(
        self,
        instrument: str,
        deployments: Iterable[Deployment],
        registry: StrategyRegistry,
        *,
        max_errors: int = 3,
    ) -> None:
        self.instrument = instrument
        self.registry = registry
        self.max_errors = max_errors
        self.instances: dict[str, _Instance] = {}
        self.history: dict[str, deque[Candle]] = {}
        self.positions: dict[str, int] = {}  # strategy_id -> signed position (fed back from the portfolio)
        for d in deployments:
            if d.subscribes(instrument):
                self._install(d)
        self._reindex()

    def _reindex(self) -> None:
        """The instances of each timeframe, in installation order: a closed bar runs only the
        subscribers of its timeframe (half of 40 deployments on two timeframes), not a filter
        over all of them."""
        by_tf: dict[str, list[_Subscriber]] = {}
        for sid, inst in self.instances.items():
            d = inst.deployment
            by_tf.setdefault(d.params.timeframe, []).append((sid, inst, inst.strategy.on_candle, d.account, d.params))
        self._by_timeframe = by_tf

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_by_timeframe", None)  # rebuilt on loading
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reindex()

    def _install(self, d: Deployment) -> None:
        cls = self.registry[d.kind]
        self.instances[d.strategy_id] = _Instance(d, cls(d.params))
        tf = d.params.timeframe
        need = max(cls.warmup(d.params), 1) + 1
        cur = self.history.get(tf)
        if cur is None or (cur.maxlen or 0) < need:
            self.history[tf] = deque(cur or (), maxlen=need)

    def indicator_specs(self) -> dict[str, tuple[str, ...]]:
        """Indicator specs the installed strategies read, by timeframe."""
        out: dict[str, list[str]] = {}
        for inst in self.instances.values():
            d = inst.deployment
            specs = out.setdefault(d.params.timeframe, [])
            specs.extend(s for s in type(inst.strategy).indicators(d.params) if s not in specs)
        return {tf: tuple(v) for tf, v in out.items()}

    @property
    def timeframes(self) -> frozenset[str]:
        return frozenset(i.deployment.params.timeframe for i in self.instances.values())

    # ------------------------------------------------------------------ market data

    def on_candle(self, candle: Candle, indicators: Mapping[str, float], now: int) -> list[Any]:
        """Targets of every enabled subscriber of this candle's timeframe, plus StrategyErrors."""
        tf = candle.timeframe
        hist = self.history.get(tf)
        if hist is None or not candle.final:
            return []
        hist.append(candle)
        out: list[Any] = []
        # One read-only view of the values and history per candle, shared by every subscriber
        # (the caller hands over ``indicators`` and does not change it afterwards). Per
        # subscriber only what differs is looked up: this loop runs for every subscriber of
        # every closed bar of every instrument.
        view: Mapping[str, float] | None = None
        recent: Sequence[Candle] = ()
        instrument, position = self.instrument, self.positions.get
        for sid, inst, decide, account, params in self._by_timeframe.get(tf, ()):
            if not inst.enabled:
                continue
            if view is None:
                view, recent = MappingProxyType(indicators), RecentCandles(hist)
            ctx = StrategyContext(sid, account, instrument, tf, view, recent, position(sid, 0), params)
            try:
                targets = decide(ctx, candle)
                for t in targets:
                    if type(t) is not TargetPosition or t.instrument != instrument or t.strategy != sid:
                        msg = f"on_candle must return TargetPositions for {instrument} by {sid}, got {t!r}"
                        raise TypeError(msg)  # a contract breach is handled like a crash
            except Exception as exc:  # one failing strategy must never stop the others
                out.append(self._failed(inst, exc, candle, now))
                continue
            if inst.errors:
                inst.errors = 0
            if targets:
                out.extend(targets)
        return out

    def _failed(self, inst: _Instance, exc: Exception, candle: Candle, now: int) -> StrategyError:
        inst.errors += 1
        if inst.errors >= self.max_errors:
            inst.enabled = False
        return StrategyError(
            strategy=inst.deployment.strategy_id,
            instrument=self.instrument,
            error_type=type(exc).__name__,
            message=str(exc)[:500],
            error_count=inst.errors,
            disabled=not inst.enabled,
            ts_event=candle.ts_event,
            ts_init=now,
        )

    def on_position(self, strategy_id: str, qty: int) -> None:
        self.positions[strategy_id] = qty

    # ------------------------------------------------------------------ control

    def control(self, cmd: EnableStrategy | DisableStrategy | ConfigureStrategy) -> bool:
        """Apply a command if it concerns one of our instances; True if something changed.

        Configure validates the new params first (raising ``ParamsError`` naming the field) and
        then replaces the instance, whose internal state starts afresh.
        """
        inst = self.instances.get(cmd.strategy)
        if inst is None:
            return False
        if isinstance(cmd, EnableStrategy):
            inst.enabled, inst.errors = True, 0
        elif isinstance(cmd, DisableStrategy):
            inst.enabled = False
        else:
            d = inst.deployment
            params = self.registry.params(d.kind, cmd.params)
            new = Deployment(d.strategy_id, d.kind, params, d.account, inst.enabled)
            if new.subscribes(self.instrument):
                self._install(new)
            else:
                del self.instances[cmd.strategy]
            self._reindex()
        return True
