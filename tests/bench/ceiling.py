"""The framework's ceiling on this machine: how fast a market topic goes through the flows'
own source (read, decode, event-time merge) into a step keyed by instrument that does
nothing. No candle book, indicator, strategy or desk runs, so whatever they cost comes on top;
a per-item target above this figure cannot be met by tuning ticktape's own code.
"""

from __future__ import annotations

import time
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from connectors.kafka import KafkaClientConfig, OrderedSource
from flows.pipeline import market_parser
from schemas.market import Candle, Tick


class _Discard(op.StatefulBatchLogic[Any, Any, None]):
    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        return [], op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


def framework_ceiling(kafka: KafkaClientConfig, topic: str, records: int, timeframe: str | None = None) -> float:
    """Records per second of ``topic`` (``records`` of them; ticks, or closed ``timeframe``
    candles) through the market source into a keyed step that discards them."""
    parse = market_parser(Tick if timeframe is None else Candle, topic, timeframe)
    flow = Dataflow("ceiling")
    market = op.input("md", flow, OrderedSource(kafka, topic, parse, tail=False, batch_size=20_000))
    op.inspect("end", op.stateful_batch("instrument", market, lambda _: _Discard()), lambda *_: None)
    t0 = time.perf_counter()
    run_main(flow)
    return records / (time.perf_counter() - t0)
