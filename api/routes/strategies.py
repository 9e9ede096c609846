"""Strategy deployments: list, get, enable, disable, configure, performance.

Changes are control commands on ``ctl.commands`` (the running flow applies them within its
next batch; the persistence flow writes them back to the ``strategies`` table); the response
is 202 with the command id once the broker has acknowledged it. New params are validated
against the strategy's Params before anything is sent, so an invalid config is a 422 here,
not an error in the flow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel

from api.auth import Caller, publish_command
from api.deps import Conn, Publisher
from api.errors import PROBLEM_RESPONSES, ApiError
from connectors.commands import command_fields
from schemas.control import ConfigureStrategy, DisableStrategy, EnableStrategy

router = APIRouter(tags=["strategies"], responses=PROBLEM_RESPONSES)
StrategyId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]


class StrategyOut(BaseModel):
    id: str
    kind: str
    description: str | None
    enabled: bool
    account: str
    params: dict[str, Any]
    updated_at: datetime
    # What live start says of it: params it refuses, or (enabled) instruments of the active
    # master it can never trade - a lot above its qty, or an index. None: nothing to say.
    warning: str | None = None


class Accepted(BaseModel):
    command_id: str
    command: str
    strategy: str


class Performance(BaseModel):
    strategy: str
    fills: int
    realized_pnl: float
    unrealized_pnl: float
    charges: float
    net_pnl: float
    open_positions: int
    orders: int
    rejected_orders: int


_COLUMNS = "id, class_name, description, is_enabled, account, config, updated_at"


def _out(conn: Conn, r: tuple[Any, ...], warn: bool, counted: dict[tuple[str, ...], Any] | None = None) -> StrategyOut:
    warning = None
    if warn:
        import strategies.builtin  # noqa: F401  (registers the built-ins)
        from connectors.postgres.strategies import deployment_warning
        from strategies.registry import REGISTRY

        warning = deployment_warning(conn, REGISTRY, r[1], r[5], r[3], counted)
    return StrategyOut(id=r[0], kind=r[1], description=r[2], enabled=r[3], account=r[4], params=r[5], updated_at=r[6],
                       warning=warning)  # fmt: skip


def _row(conn: Conn, sid: str, warn: bool = False) -> StrategyOut:
    r = conn.execute(f"SELECT {_COLUMNS} FROM strategies WHERE id = %s", (sid,)).fetchone()
    if r is None:
        raise ApiError(404, "Unknown strategy", f"no deployment {sid!r}")
    return _out(conn, r, warn)


@router.get("/api/strategies", response_model=list[StrategyOut])
def list_strategies(conn: Conn) -> list[StrategyOut]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM strategies ORDER BY id LIMIT 1000").fetchall()
    counted: dict[tuple[str, ...], Any] = {}  # the master's lots, counted once per instrument list
    return [_out(conn, r, True, counted) for r in rows]


@router.get("/api/strategies/{strategy_id}", response_model=StrategyOut)
def get_strategy(conn: Conn, strategy_id: StrategyId) -> StrategyOut:
    return _row(conn, strategy_id, warn=True)


def _send(conn: Conn, pub: Publisher, user: Caller, request: Request, cmd: Any) -> Accepted:
    publish_command(conn, pub, user, request, cmd, cmd.strategy)
    return Accepted(command_id=cmd.command_id, command=type(cmd).__name__, strategy=cmd.strategy)


@router.post("/api/strategies/{strategy_id}/enable", response_model=Accepted, status_code=202)
def enable(conn: Conn, pub: Publisher, user: Caller, request: Request, strategy_id: StrategyId) -> Accepted:
    s = _row(conn, strategy_id)
    return _send(conn, pub, user, request, EnableStrategy(strategy=s.id, **command_fields(s.account, "api")))


@router.post("/api/strategies/{strategy_id}/disable", response_model=Accepted, status_code=202)
def disable(
    conn: Conn, pub: Publisher, user: Caller, request: Request, strategy_id: StrategyId, flatten: bool = False
) -> Accepted:
    s = _row(conn, strategy_id)
    cmd = DisableStrategy(strategy=s.id, flatten=flatten, **command_fields(s.account, "api"))
    return _send(conn, pub, user, request, cmd)


@router.put("/api/strategies/{strategy_id}/config", response_model=Accepted, status_code=202)
def configure(
    conn: Conn,
    pub: Publisher,
    user: Caller,
    request: Request,
    strategy_id: StrategyId,
    params: Annotated[dict[str, Any], Body(max_length=64)],
) -> Accepted:
    """Replace the deployment's whole params object (validated against its strategy's Params)."""
    import strategies.builtin  # noqa: F401  (registers the built-ins)
    from strategies.registry import REGISTRY, ParamsError, UnknownStrategy

    s = _row(conn, strategy_id)
    try:
        REGISTRY.params(s.kind, params)
    except (ParamsError, UnknownStrategy) as exc:
        raise ApiError(422, "Invalid params", str(exc)) from None
    return _send(
        conn, pub, user, request, ConfigureStrategy(strategy=s.id, params=params, **command_fields(s.account, "api"))
    )


@router.get("/api/strategies/{strategy_id}/performance", response_model=Performance)
def performance(conn: Conn, strategy_id: StrategyId) -> Performance:
    s = _row(conn, strategy_id)
    f = conn.execute("SELECT count(*), coalesce(sum(charges), 0) FROM fills WHERE strategy_id = %s", (s.id,)).fetchone()
    p = conn.execute(
        """SELECT coalesce(sum(realized_pnl), 0), coalesce(sum(unrealized_pnl), 0),
                  count(*) FILTER (WHERE status = 'OPEN' AND quantity <> 0) FROM positions WHERE strategy_id = %s""",
        (s.id,),
    ).fetchone()
    o = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE current_status = 'REJECTED') FROM orders WHERE strategy_id = %s", (s.id,)
    ).fetchone()
    assert f is not None and p is not None and o is not None
    realized, unrealized, charges = float(p[0]), float(p[1]), float(f[1])
    return Performance(strategy=s.id, fills=f[0], realized_pnl=realized, unrealized_pnl=unrealized, charges=charges,
                       net_pnl=round(realized + unrealized - charges, 2), open_positions=p[2], orders=o[0],
                       rejected_orders=o[1])  # fmt: skip
