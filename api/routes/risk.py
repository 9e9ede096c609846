"""Risk and the book: account state, positions, orders, the emergency stop.

The reads are polled by every dashboard, so they are ``async def`` on the async pool and
the lists answer pre-encoded JSON (see :mod:`api.deps`); the emergency stop is a control
action on the sync pool.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response
from pydantic import BaseModel, Field

from api.auth import Caller, publish_command
from api.deps import AConn, Conn, Paged, Publisher, encoded_json, model_rows
from api.errors import NO_NUL, PROBLEM_RESPONSES, RequestBody
from connectors.commands import command_fields
from schemas.control import Halt

router = APIRouter(tags=["risk and trading"], responses=PROBLEM_RESPONSES)
Account = Annotated[str, Query(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


class PositionOut(BaseModel):
    id: str
    account: str
    strategy: str
    instrument: str
    quantity: int
    average_entry_price: float
    current_price: float | None
    unrealized_pnl: float | None
    realized_pnl: float
    status: str
    updated_at: datetime


class Portfolio(BaseModel):
    account: str
    state: str  # ACTIVE / REDUCING / HALTED (as last persisted)
    open_positions: int
    gross_exposure: float
    realized_pnl: float
    unrealized_pnl: float
    charges: float
    net_pnl: float


class OrderOut(BaseModel):
    client_order_id: str
    account: str
    strategy: str
    instrument: str
    side: str
    quantity: int
    order_type: str
    price: float | None
    trigger_price: float | None
    status: str
    filled_quantity: int
    average_price: float | None
    reason: str | None
    created_at: datetime
    updated_at: datetime


class EmergencyStop(RequestBody):
    reason: str = Field(min_length=3, max_length=500, pattern=NO_NUL)
    account: str = Field("paper", pattern=r"^[A-Za-z0-9_-]{1,32}$")


class StopAccepted(BaseModel):
    command_id: str
    account: str


async def _positions(conn: AConn, account: str, page: Paged) -> Response:
    async with conn.cursor(row_factory=model_rows(PositionOut), binary=True) as cur:
        await cur.execute(
            """SELECT p.id::text AS id, p.account, p.strategy_id AS strategy, i.symbol AS instrument, p.quantity,
                      p.average_entry_price::float8 AS average_entry_price, p.current_price::float8 AS current_price,
                      p.unrealized_pnl::float8 AS unrealized_pnl, p.realized_pnl::float8 AS realized_pnl, p.status,
                      p.updated_at
               FROM positions p JOIN instruments i ON i.id = p.instrument_id
               WHERE p.account = %s AND p.status = 'OPEN' AND p.quantity <> 0
               ORDER BY p.strategy_id, i.symbol LIMIT %s OFFSET %s""",
            (account, page.limit, page.offset),
        )
        return encoded_json(await cur.fetchall())


@router.get("/api/positions", response_model=list[PositionOut])
async def positions(conn: AConn, page: Paged, account: Account = "paper") -> Response:
    """Open positions of the account."""
    return await _positions(conn, account, page)


@router.get("/api/risk/positions", response_model=list[PositionOut])
async def risk_positions(conn: AConn, page: Paged, account: Account = "paper") -> Response:
    return await _positions(conn, account, page)


@router.get("/api/risk/portfolio", response_model=Portfolio)
async def portfolio(conn: AConn, account: Account = "paper") -> Portfolio:
    cur = await conn.execute(
        """SELECT (SELECT state FROM trading_state WHERE account = %(a)s),
                  p.open_positions, p.gross_exposure, p.realized_pnl, p.unrealized_pnl,
                  (SELECT coalesce(sum(charges), 0) FROM fills WHERE account = %(a)s)
           FROM (SELECT count(*) FILTER (WHERE status = 'OPEN' AND quantity <> 0) AS open_positions,
                        coalesce(sum(abs(quantity) * coalesce(current_price, average_entry_price))
                                 FILTER (WHERE status = 'OPEN'), 0) AS gross_exposure,
                        coalesce(sum(realized_pnl), 0) AS realized_pnl, coalesce(sum(unrealized_pnl), 0) AS unrealized_pnl
                 FROM positions WHERE account = %(a)s) p""",
        {"a": account},
    )
    row = await cur.fetchone()
    assert row is not None  # (an aggregate without GROUP BY has one row)
    state, open_positions, gross, realized, unrealized, charges = row
    realized, unrealized, charges = float(realized), float(unrealized), float(charges)
    return Portfolio(account=account, state=state or "ACTIVE", open_positions=open_positions,
                     gross_exposure=float(gross), realized_pnl=realized, unrealized_pnl=unrealized, charges=charges,
                     net_pnl=round(realized + unrealized - charges, 2))  # fmt: skip


@router.get("/api/orders", response_model=list[OrderOut])
async def orders(
    conn: AConn,
    page: Paged,
    account: Account = "paper",
    status: Annotated[str | None, Query(pattern=r"^[A-Z_ ]{3,20}$")] = None,
    strategy: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = None,
) -> Response:
    """Orders of the account, newest first."""
    async with conn.cursor(row_factory=model_rows(OrderOut), binary=True) as cur:
        await cur.execute(
            """SELECT o.client_order_id, o.account, o.strategy_id AS strategy, i.symbol AS instrument, o.side, o.quantity,
                      o.order_type, o.price::float8 AS price, o.trigger_price::float8 AS trigger_price,
                      o.current_status AS status, o.filled_quantity, o.average_price::float8 AS average_price,
                      o.status_reason AS reason, o.created_at, o.updated_at
               FROM orders o JOIN instruments i ON i.id = o.instrument_id
               WHERE o.account = %(a)s AND (%(s)s::text IS NULL OR o.current_status = %(s)s)
                 AND (%(st)s::text IS NULL OR o.strategy_id = %(st)s)
               ORDER BY o.created_at DESC, o.client_order_id LIMIT %(l)s OFFSET %(o)s""",
            {"a": account, "s": status, "st": strategy, "l": page.limit, "o": page.offset},
        )
        return encoded_json(await cur.fetchall())


@router.post("/api/risk/emergency-stop", response_model=StopAccepted, status_code=202)
def emergency_stop(
    conn: Conn, pub: Publisher, user: Caller, request: Request, body: Annotated[EmergencyStop, Body()]
) -> StopAccepted:
    """The kill switch: the account's desk refuses entries, cancels working orders and flattens;
    only an explicit resume clears it (it survives restarts)."""
    cmd = Halt(reason=body.reason, **command_fields(body.account, "api"))
    publish_command(conn, pub, user, request, cmd, body.account, reason=body.reason[:200])
    return StopAccepted(command_id=cmd.command_id, account=body.account)
