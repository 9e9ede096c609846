"""Control commands written by the API (and the CLI) to ``ctl.commands``.

``command_id`` is chosen by the issuer and makes a command idempotent: a consumer that has
applied a command id ignores it when it is delivered again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.orders import OrderType, Product, Side


class _Command(msgspec.Struct, frozen=True, kw_only=True):
    command_id: str
    account: str
    issued_by: str
    ts_event: int
    ts_init: int


class EnableStrategy(_Command, tag=True, frozen=True, kw_only=True):
    strategy: str


class DisableStrategy(_Command, tag=True, frozen=True, kw_only=True):
    strategy: str
    flatten: bool = False


class ConfigureStrategy(_Command, tag=True, frozen=True, kw_only=True):
    strategy: str
    params: dict[str, Any]


class Halt(_Command, tag=True, frozen=True, kw_only=True):
    """Emergency stop: reject entries, cancel working orders, flatten, persist HALTED."""

    reason: str


class Resume(_Command, tag=True, frozen=True, kw_only=True):
    reason: str


class ManualOrder(_Command, tag=True, frozen=True, kw_only=True):
    """An operator's order; it passes the same risk gate as strategy orders."""

    instrument: str
    side: Side
    qty: int
    order_type: OrderType
    product: Product = Product.MIS
    price: float | None = None
    trigger_price: float | None = None


class CancelManualOrder(_Command, tag=True, frozen=True, kw_only=True):
    """Cancel a working operator order (strategy orders are the engine's: disable the strategy
    with ``flatten`` or halt instead)."""

    client_order_id: str


class ModifyManualOrder(_Command, tag=True, frozen=True, kw_only=True):
    """Change a working operator order: cancel and replace (the replacement passes the gate
    like a new manual order; ``None`` keeps the old value)."""

    client_order_id: str
    qty: int | None = None
    price: float | None = None
    trigger_price: float | None = None


class ClosePosition(_Command, tag=True, frozen=True, kw_only=True):
    """Flatten one (strategy, instrument) position with a market exit through the gate."""

    strategy: str
    instrument: str


Control = (
    EnableStrategy
    | DisableStrategy
    | ConfigureStrategy
    | Halt
    | Resume
    | ManualOrder
    | CancelManualOrder
    | ModifyManualOrder
    | ClosePosition
)
