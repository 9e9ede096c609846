"""Live-replay parity: replay what a paper session recorded and diff what it traded.

``ticktape replay --from-recorded`` takes the newest ``live_sessions`` row (or ``--session``):
the deployments, accounts, analytics and ``trade_from`` flows.live started with. It replays
that session's ``md.ticks`` topic through the same builder in replay mode (no clock, bounded)
into run-scoped output topics, then compares the order intents, cancels and fills with the
session's own ``ord.intents`` and ``ord.fills``:

* an intent is identified by its ``client_order_id`` (deterministic: strategy, instrument,
  signal time, sequence) and compared on account, strategy, instrument, side, quantity, order
  type, product, purpose, price, trigger and stop/target levels;
* a fill by its ``trade_id``, compared on order, side, quantity, price and charges.

Event times are *not* compared: live, a bar whose instrument goes quiet is closed by the
market clock's timer at bar end + grace, a replay closes it on the instrument's next tick,
so the same decision carries a slightly different stamp. What the desk did with it - which
order, at what price - must be the same. The comparison covers the recording's horizon (the
newest event time the live flow published): ticks that reached md.ticks after the live flow
stopped are replayed but not judged.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bytewax.testing import run_main

from connectors.kafka import KafkaClientConfig, create_topics, delete_topics, read_all, read_topics
from flows import live
from flows.pipeline import PipelineConfig, StrategySetup
from flows.trading import TradingSetup
from operators.analytics import AnalyticsConfig
from schemas.codec import codec_for
from schemas.market import Candle, Instrument
from schemas.orders import CancelOrder, Fill, VenueRequest
from schemas.topics import TopicCatalog, load_catalog

INTENT_FIELDS = ("account", "strategy", "instrument", "side", "qty", "order_type", "product", "purpose", "price",
                 "trigger_price", "stop_loss", "take_profit")  # fmt: skip
CANCEL_FIELDS = ("account", "instrument")
FILL_FIELDS = ("client_order_id", "account", "strategy", "instrument", "side", "qty", "price", "charges")


@dataclass
class Diff:
    """What differs between the session and its replay (empty: parity)."""

    compared: dict[str, int] = field(default_factory=dict)  # kind -> items compared
    missing: list[str] = field(default_factory=list)  # the session has it, the replay does not
    extra: list[str] = field(default_factory=list)  # the replay has it, the session does not
    changed: list[str] = field(default_factory=list)  # same id, different content
    beyond_horizon: int = 0  # replay outputs after the recording's horizon (not judged)
    horizon: int = 0

    @property
    def empty(self) -> bool:
        return not (self.missing or self.extra or self.changed)


def _key(v: Any) -> tuple[str, str]:
    if type(v) is Fill:
        return "fill", v.trade_id
    return ("cancel" if type(v) is CancelOrder else "intent"), v.client_order_id


def _fields(v: Any) -> tuple[str, ...]:
    return FILL_FIELDS if type(v) is Fill else CANCEL_FIELDS if type(v) is CancelOrder else INTENT_FIELDS


def diff(session: Iterable[Any], replay: Iterable[Any], horizon: int, since: int) -> Diff:
    """Compare intents, cancels and fills with event time in [``since``, ``horizon``]."""
    out = Diff(horizon=horizon)
    mine: dict[tuple[str, str], Any] = {}
    for v in session:
        if since <= v.ts_event:
            mine[_key(v)] = v
    theirs: dict[tuple[str, str], Any] = {}
    for v in replay:
        if v.ts_event > horizon:
            out.beyond_horizon += 1
        elif v.ts_event >= since:
            theirs[_key(v)] = v
    for key in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(key), theirs.get(key)
        out.compared[key[0]] = out.compared.get(key[0], 0) + 1
        if b is None:
            out.missing.append(f"{key[0]} {key[1]}: {_show(a)}")
        elif a is None:
            out.extra.append(f"{key[0]} {key[1]}: {_show(b)}")
        else:
            bad = [f"{f} {getattr(a, f)!r} != {getattr(b, f)!r}" for f in _fields(a) if getattr(a, f) != getattr(b, f)]
            if bad:
                out.changed.append(f"{key[0]} {key[1]}: " + "; ".join(bad))
    return out


def _show(v: Any) -> str:
    return ", ".join(f"{f}={getattr(v, f)!r}" for f in _fields(v)) + f", ts_event={v.ts_event}"


def _decoded(kafka: KafkaClientConfig, catalog: TopicCatalog) -> list[Any]:
    req, fill = codec_for(VenueRequest), codec_for(Fill)
    got = read_topics(kafka, [catalog.name("ord.intents"), catalog.name("ord.fills")])
    out: list[Any] = [req.decode(v) for v in got[catalog.name("ord.intents")]]
    out += [fill.decode(v) for v in got[catalog.name("ord.fills")]]
    return out


def horizon_of(kafka: KafkaClientConfig, catalog: TopicCatalog, recorded: Iterable[Any]) -> int:
    """The newest event time the live flow published (candles, including in-progress ones,
    and its own orders): how far into md.ticks it got."""
    candle = codec_for(Candle)
    newest = max((candle.decode(v).ts_event for v in read_all(kafka, catalog.name("md.candles"))), default=0)
    return max([newest, *(v.ts_event for v in recorded)])


def replay_session(
    kafka: KafkaClientConfig,
    catalog: TopicCatalog,
    session: Mapping[str, Any],
    universe: Iterable[Instrument],
    warm: Mapping[str, list[Candle]],
) -> Diff:
    """Replay the session's md.ticks and diff against its ord.intents and ord.fills."""
    universe = list(universe)
    analytics = AnalyticsConfig(timeframes=tuple(session["timeframes"]), indicators=tuple(session["indicators"]),
                                publish_timeframes=(), patterns=False)  # fmt: skip
    strat = StrategySetup(deployments=session["deployments"], trade_from=session["trade_from"], warm=warm)
    cfg = PipelineConfig(analytics=analytics, open_interest=False, summary_timeframes=(), strategies=strat)
    trading = TradingSetup(accounts=tuple(session["accounts"]), halted=frozenset(session["halted"]))
    run = load_catalog().scoped(f"bt.parity-{uuid.uuid4().hex[:8]}")
    admin = kafka.admin()
    create_topics(admin, run)
    try:
        run_main(live.build(kafka, run, universe, cfg, tail=False, trading=trading, batch_size=20_000,
                            source=catalog.name("md.ticks")))  # fmt: skip
        replayed = _decoded(kafka, run)
    finally:
        delete_topics(admin, [s.name for s in run.values()])
    recorded = _decoded(kafka, catalog)
    return diff(recorded, replayed, horizon_of(kafka, catalog, recorded), session["trade_from"])
