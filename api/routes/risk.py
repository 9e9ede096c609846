"""Risk and the book: account state, positions, orders, the emergency stop."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from pydantic import BaseModel, Field

from api.auth import Caller, audit_action
from api.deps import Conn, Paged, Publisher
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


def _f(x: object) -> float | None:
    return float(x) if x is not None else None  # type: ignore[arg-type]


def _positions(conn: Conn, account: str, page: Paged) -> list[PositionOut]:
    rows = conn.execute(
        """SELECT p.id::text, p.account, p.strategy_id, i.symbol, p.quantity, p.average_entry_price, p.current_price,
                  p.unrealized_pnl, p.realized_pnl, p.status, p.updated_at
           FROM positions p JOIN instruments i ON i.id = p.instrument_id
           WHERE p.account = %s AND p.status = 'OPEN' AND p.quantity <> 0
           ORDER BY p.strategy_id, i.symbol LIMIT %s OFFSET %s""",
        (account, page.limit, page.offset),
    ).fetchall()
    return [
        PositionOut(id=r[0], account=r[1], strategy=r[2], instrument=r[3], quantity=r[4], average_entry_price=float(r[5]),
                    current_price=_f(r[6]), unrealized_pnl=_f(r[7]), realized_pnl=float(r[8]), status=r[9],
                    updated_at=r[10])
        for r in rows
    ]  # fmt: skip


@router.get("/api/positions", response_model=list[PositionOut])
def positions(conn: Conn, page: Paged, account: Account = "paper") -> list[PositionOut]:
    """Open positions of the account."""
    return _positions(conn, account, page)


@router.get("/api/risk/positions", response_model=list[PositionOut])
def risk_positions(conn: Conn, page: Paged, account: Account = "paper") -> list[PositionOut]:
    return _positions(conn, account, page)


@router.get("/api/risk/portfolio", response_model=Portfolio)
def portfolio(conn: Conn, account: Account = "paper") -> Portfolio:
    state = conn.execute("SELECT state FROM trading_state WHERE account = %s", (account,)).fetchone()
    p = conn.execute(
        """SELECT count(*) FILTER (WHERE status = 'OPEN' AND quantity <> 0),
                  coalesce(sum(abs(quantity) * coalesce(current_price, average_entry_price))
                           FILTER (WHERE status = 'OPEN'), 0),
                  coalesce(sum(realized_pnl), 0), coalesce(sum(unrealized_pnl), 0)
           FROM positions WHERE account = %s""",
        (account,),
    ).fetchone()
    c = conn.execute("SELECT coalesce(sum(charges), 0) FROM fills WHERE account = %s", (account,)).fetchone()
    assert p is not None and c is not None
    realized, unrealized, charges = float(p[2]), float(p[3]), float(c[0])
    return Portfolio(account=account, state=state[0] if state else "ACTIVE", open_positions=p[0],
                     gross_exposure=float(p[1]), realized_pnl=realized, unrealized_pnl=unrealized, charges=charges,
                     net_pnl=round(realized + unrealized - charges, 2))  # fmt: skip


@router.get("/api/orders", response_model=list[OrderOut])
def orders(
    conn: Conn,
    page: Paged,
    account: Account = "paper",
    status: Annotated[str | None, Query(pattern=r"^[A-Z_ ]{3,20}$")] = None,
    strategy: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9_.-]{1,100}$")] = None,
) -> list[OrderOut]:
    """Orders of the account, newest first."""
    rows = conn.execute(
        """SELECT o.client_order_id, o.account, o.strategy_id, i.symbol, o.side, o.quantity, o.order_type, o.price,
                  o.trigger_price, o.current_status, o.filled_quantity, o.average_price, o.status_reason, o.created_at,
                  o.updated_at
           FROM orders o JOIN instruments i ON i.id = o.instrument_id
           WHERE o.account = %(a)s AND (%(s)s::text IS NULL OR o.current_status = %(s)s)
             AND (%(st)s::text IS NULL OR o.strategy_id = %(st)s)
           ORDER BY o.created_at DESC, o.client_order_id LIMIT %(l)s OFFSET %(o)s""",
        {"a": account, "s": status, "st": strategy, "l": page.limit, "o": page.offset},
    ).fetchall()
    return [
        OrderOut(client_order_id=r[0], account=r[1], strategy=r[2], instrument=r[3], side=r[4], quantity=r[5],
                 order_type=r[6], price=_f(r[7]), trigger_price=_f(r[8]), status=r[9], filled_quantity=r[10],
                 average_price=_f(r[11]), reason=r[12], created_at=r[13], updated_at=r[14])
        for r in rows
    ]  # fmt: skip


@router.post("/api/risk/emergency-stop", response_model=StopAccepted, status_code=202)
def emergency_stop(
    conn: Conn, pub: Publisher, user: Caller, request: Request, body: Annotated[EmergencyStop, Body()]
) -> StopAccepted:
    """The kill switch: the account's desk refuses entries, cancels working orders and flattens;
    only an explicit resume clears it (it survives restarts)."""
    cmd = Halt(reason=body.reason, **command_fields(body.account, "api"))
    pub.publish(cmd)
    audit_action(conn, user, request, "Halt", body.account, command_id=cmd.command_id, reason=body.reason[:200])
    return StopAccepted(command_id=cmd.command_id, account=body.account)
