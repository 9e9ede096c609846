"""Risk events: every denial carries a reason code; state changes are explicit."""

from __future__ import annotations

import enum

import msgspec


class TradingState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"  # only risk-reducing orders pass
    HALTED = "HALTED"  # nothing passes; working orders cancelled, positions flattened


class RiskRejected(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account: str
    strategy: str
    instrument: str
    reason_code: str
    detail: str
    ts_event: int
    ts_init: int
    signal_id: str = ""
    client_order_id: str = ""


class TradingStateChanged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    account: str
    previous: TradingState
    current: TradingState
    reason: str
    ts_event: int
    ts_init: int


class StrategyError(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    strategy: str
    instrument: str
    error_type: str
    message: str
    error_count: int
    disabled: bool
    ts_event: int
    ts_init: int


class StopAlert(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A position lost (part of) its stop-loss protection and needs an operator:
    ``STOP_FAILED`` (the market exits were used up with qty left) or ``BACKSTOP_FAILED`` (the
    broker-side stop kept being refused; only the local watch is left)."""

    account: str
    strategy: str
    instrument: str
    code: str
    detail: str
    ts_event: int
    ts_init: int


RiskEvent = RiskRejected | TradingStateChanged | StrategyError | StopAlert
