"""Manual trading: place, modify and cancel operator orders; close a position.

Every action is a control command on ``ctl.commands`` for the account's trading desk, which
puts it through the same risk gate as strategy orders (limits, price collar, trading state).
The answer is 202 once the broker has acknowledged the command, with the ``client_order_id``
the order will carry - deterministic from the command id, so the outcome can be followed in
``GET /api/orders`` (or as a ``RiskRejected`` on ``risk.events`` when the gate refuses it).

Orders placed here are the operator's (strategy ``manual``); only those can be modified or
cancelled - strategy orders belong to the engine (disable the strategy with ``flatten``, close
the position or halt instead). A modify is a cancel-replace: the replacement is a new order
with a new ``client_order_id``. An order the database does not know yet (persistence lags the
flow by a batch) is still passed on: the desk is the authority and refuses unknown ids.
"""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from api.auth import Caller, publish_command
from api.deps import Conn, Publisher
from api.errors import PROBLEM_RESPONSES, ApiError, RequestBody
from api.routes.market import SYMBOL
from connectors.commands import command_fields
from operators.risk import MANUAL_STRATEGY
from operators.risk import client_order_id as order_id_of
from schemas.control import CancelManualOrder, ClosePosition, ManualOrder, ModifyManualOrder
from schemas.orders import OrderType, Product, Side

router = APIRouter(tags=["risk and trading"], responses=PROBLEM_RESPONSES)
Account = Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,32}$")]
OrderId = Annotated[str, Path(pattern=r"^MN[A-Z2-7]{16}$", description="client_order_id of an operator order")]
Price = Annotated[float, Field(gt=0, lt=10_000_000)]
Qty = Annotated[int, Field(ge=1, le=1_000_000)]
_TERMINAL = ("COMPLETE", "CANCELLED", "REJECTED")


class _OrderIn(RequestBody):
    instrument: str = Field(pattern=SYMBOL, description="EXCHANGE:TRADINGSYMBOL")
    side: Side
    qty: Qty
    product: Product = Product.MIS
    account: str = Field("paper", pattern=r"^[A-Za-z0-9_-]{1,32}$")


class MarketOrderIn(_OrderIn):
    order_type: Literal["MARKET"]


class LimitOrderIn(_OrderIn):
    order_type: Literal["LIMIT"]
    price: Price


class StopLimitOrderIn(_OrderIn):
    """SL: a LIMIT at ``price`` once ``trigger_price`` trades; GTT: the same, good till triggered."""

    order_type: Literal["SL", "GTT"]
    price: Price
    trigger_price: Price


class StopMarketOrderIn(_OrderIn):
    order_type: Literal["SL-M"]
    trigger_price: Price


OrderIn = Annotated[MarketOrderIn | LimitOrderIn | StopLimitOrderIn | StopMarketOrderIn, Field(discriminator="order_type")]


class ModifyIn(RequestBody):
    """What changes; omitted fields keep the order's values."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"minProperties": 1})
    qty: Qty | SkipJsonSchema[None] = None
    price: Price | SkipJsonSchema[None] = None
    trigger_price: Price | SkipJsonSchema[None] = None

    @field_validator("qty", "price", "trigger_price", mode="before")
    @classmethod
    def _no_null(cls, v: object) -> object:
        if v is None:  # omit a field to keep its value; null is not a value
            msg = "must be a number (omit the field to keep the order's value)"
            raise ValueError(msg)
        return v

    @model_validator(mode="after")
    def _something(self) -> ModifyIn:
        if self.qty is None and self.price is None and self.trigger_price is None:
            msg = "give at least one of qty, price, trigger_price"
            raise ValueError(msg)
        return self


class OrderAccepted(BaseModel):
    command_id: str
    command: str
    account: str
    client_order_id: str  # the (first leg of the) new order; for a cancel, the order cancelled


class CloseAccepted(BaseModel):
    command_id: str
    account: str
    strategy: str
    instrument: str
    quantity: int  # the position as last persisted


@router.post("/api/orders", response_model=OrderAccepted, status_code=202)
def place_order(
    conn: Conn, pub: Publisher, user: Caller, request: Request, body: Annotated[OrderIn, Body()]
) -> OrderAccepted:
    """An operator order, through the account's risk gate like any strategy order."""
    if conn.execute("SELECT 1 FROM instruments WHERE symbol = %s AND is_active", (body.instrument,)).fetchone() is None:
        raise ApiError(404, "Unknown instrument", f"{body.instrument} is not in the instrument master")
    cmd = ManualOrder(
        instrument=body.instrument, side=body.side, qty=body.qty, order_type=OrderType(body.order_type),
        product=body.product, price=getattr(body, "price", None), trigger_price=getattr(body, "trigger_price", None),
        **command_fields(body.account, "api"),
    )  # fmt: skip
    publish_command(conn, pub, user, request, cmd, body.instrument, side=cmd.side, qty=cmd.qty, order_type=cmd.order_type)
    return OrderAccepted(command_id=cmd.command_id, command="ManualOrder", account=cmd.account,
                         client_order_id=order_id_of("MN", cmd.account, cmd.command_id, 0))  # fmt: skip


def _operator_order(conn: Conn, coid: str, account: str) -> None:
    """409 for a strategy's or a finished order; an id not (yet) persisted passes (see the module docstring)."""
    row = conn.execute(
        "SELECT strategy_id, current_status FROM orders WHERE client_order_id = %s AND account = %s", (coid, account)
    ).fetchone()
    if row is None:
        return
    if row[0] != MANUAL_STRATEGY:
        detail = f"{coid} belongs to strategy {row[0]!r}; only manual orders change here"
        raise ApiError(409, "Not an operator order", detail)
    if row[1] in _TERMINAL:
        raise ApiError(409, "Order finished", f"{coid} is {row[1]}")


@router.put("/api/orders/{client_order_id}", response_model=OrderAccepted, status_code=202)
def modify_order(
    conn: Conn, pub: Publisher, user: Caller, request: Request, client_order_id: OrderId, body: Annotated[ModifyIn, Body()],
    account: Account = "paper",
) -> OrderAccepted:  # fmt: skip
    """Cancel-replace a working operator order; the replacement passes the risk gate again."""
    _operator_order(conn, client_order_id, account)
    cmd = ModifyManualOrder(client_order_id=client_order_id, qty=body.qty, price=body.price,
                            trigger_price=body.trigger_price, **command_fields(account, "api"))  # fmt: skip
    publish_command(conn, pub, user, request, cmd, client_order_id)
    return OrderAccepted(command_id=cmd.command_id, command="ModifyManualOrder", account=account,
                         client_order_id=order_id_of("MN", account, cmd.command_id, 0))  # fmt: skip


@router.delete("/api/orders/{client_order_id}", response_model=OrderAccepted, status_code=202)
def cancel_order(
    conn: Conn, pub: Publisher, user: Caller, request: Request, client_order_id: OrderId, account: Account = "paper"
) -> OrderAccepted:
    """Cancel a working operator order."""
    _operator_order(conn, client_order_id, account)
    cmd = CancelManualOrder(client_order_id=client_order_id, **command_fields(account, "api"))
    publish_command(conn, pub, user, request, cmd, client_order_id)
    return OrderAccepted(command_id=cmd.command_id, command="CancelManualOrder", account=account,
                         client_order_id=client_order_id)  # fmt: skip


@router.post("/api/positions/{position_id}/close", response_model=CloseAccepted, status_code=202)
def close_position(conn: Conn, pub: Publisher, user: Caller, request: Request, position_id: UUID) -> CloseAccepted:
    """Flatten one open position (a market exit through the gate; exits pass in every trading state)."""
    row = conn.execute(
        """SELECT p.account, p.strategy_id, i.symbol, p.quantity
           FROM positions p JOIN instruments i ON i.id = p.instrument_id WHERE p.id = %s AND p.status = 'OPEN'""",
        (position_id,),
    ).fetchone()
    if row is None:
        raise ApiError(404, "Unknown position", f"no open position {position_id}")
    account, strategy, instrument, qty = row
    if qty == 0:
        raise ApiError(409, "Position flat", f"position {position_id} holds nothing")
    cmd = ClosePosition(strategy=strategy, instrument=instrument, **command_fields(account, "api"))
    publish_command(conn, pub, user, request, cmd, f"{strategy}/{instrument}", quantity=qty)
    return CloseAccepted(command_id=cmd.command_id, account=account, strategy=strategy, instrument=instrument,
                         quantity=qty)  # fmt: skip
