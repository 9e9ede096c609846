"""Factories and helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from flows.ingest import SimConfig, _SimPartition
from schemas.market import Instrument, InstrumentType


def instrument(
    key: str,
    kind: InstrumentType = InstrumentType.EQ,
    *,
    lot: int = 1,
    tick: float = 0.05,
    freeze: int | None = None,
) -> Instrument:
    """A minimal instrument-master row for ``EXCHANGE:SYMBOL``."""
    exchange, symbol = key.split(":")
    return Instrument(
        instrument=key,
        instrument_token=1,
        exchange_token=1,
        tradingsymbol=symbol,
        name=symbol,
        exchange=exchange,
        segment=exchange,
        instrument_type=kind,
        tick_size=tick,
        lot_size=lot,
        freeze_qty=freeze,
    )


def drain(part: _SimPartition) -> list[tuple[str, tuple[str, Any]]]:
    """Every item a simulator partition emits until its bounded run ends."""
    out: list[tuple[str, tuple[str, Any]]] = []
    while True:
        try:
            out += part.next_batch()
        except StopIteration:
            return out


def simulated(cfg: SimConfig) -> list[tuple[str, Any]]:
    """``(kind, event)`` for every group of ``cfg``, group by group."""
    return [item for g in range(cfg.groups) for _key, item in drain(_SimPartition(cfg, g, None))]
