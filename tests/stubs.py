"""Factories and helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from flows.ingest import SimConfig, _SimPartition


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
