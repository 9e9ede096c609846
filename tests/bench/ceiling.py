"""The framework's ceiling on this machine: how fast a market topic goes through the flows'
own market input (:func:`flows.live.market_input`: read, decode, event-time merge) into a step
keyed by instrument that does nothing, in one worker. No candle book, indicator, strategy or
desk runs, so whatever they cost comes on top: a per-item target above this figure needs a
faster source, or more than one worker, before anything else.
"""

from __future__ import annotations

import time
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main

from connectors.kafka import KafkaClientConfig
from flows.live import market_input


class _Discard(op.StatefulBatchLogic[Any, Any, None]):
    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        return [], op.StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


def framework_ceiling(kafka: KafkaClientConfig, topic: str, records: int, timeframe: str | None = None) -> float:
    """Records per second of ``topic`` (``records`` of them; ticks, or closed ``timeframe``
    candles) through the market source into a keyed step that discards them."""
    flow = Dataflow("ceiling")
    market = market_input(flow, kafka, topic, timeframe, tail=False, batch_size=20_000)
    op.inspect("end", op.stateful_batch("instrument", market, lambda _: _Discard()), lambda *_: None)
    t0 = time.perf_counter()
    run_main(flow)
    return records / (time.perf_counter() - t0)
