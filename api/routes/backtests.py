"""Backtests as background jobs: queue, status, results.

``POST /api/backtest`` validates the request (strategy params against the strategy's Params,
the data source), records the run as PENDING in ``backtest_runs`` and starts
``ticktape backtest --run-id ...`` as a child process (the API never imports the flows). The
job moves the row to RUNNING, then COMPLETED with its summary or FAILED with the reason; a
job that dies without saying so is marked FAILED when its status is read. Data files must
live under ``$TICKTAPE_HOME/data`` (a client cannot name arbitrary paths) or be ``db``.
"""

from __future__ import annotations

import enum
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from fastapi import Path as PathParam
from psycopg.types.json import Jsonb
from pydantic import BaseModel, Field

from api.auth import Caller, audit_action
from api.deps import AppState, Conn, Paged, state
from api.errors import PROBLEM_RESPONSES, ApiError, RequestBody

router = APIRouter(tags=["backtests"], responses=PROBLEM_RESPONSES)
RunId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,40}$")]
_JOBS: dict[str, subprocess.Popen[bytes]] = {}  # run id -> the job process (this API process's)
MAX_JOBS = 2  # concurrent backtest processes (one per core of the reference machine)


import strategies.builtin  # noqa: E402, F401  (registers the built-ins: their names are the schema's enum)
from strategies.registry import REGISTRY  # noqa: E402

StrategyName = enum.StrEnum("StrategyName", {name: name for name in sorted(REGISTRY)})  # type: ignore[misc]


class BacktestRequest(RequestBody):
    strategy: StrategyName = Field(description="registered strategy name")  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict, max_length=64)
    data: str = Field(pattern=r"^(db|[A-Za-z0-9_.-]{1,120})$", description="'db' or a file name under $TICKTAPE_HOME/data")
    instruments: list[Annotated[str, Field(pattern=r"^[A-Z0-9_]{1,12}:[A-Za-z0-9&_.\- ]{1,50}$")]] = Field(
        default_factory=list, max_length=500
    )
    start: datetime | None = Field(None, alias="from")
    end: datetime | None = Field(None, alias="to")
    timeframe: Literal["1s", "5s", "1m", "5m", "15m", "1h", "1d"] | None = None
    capital: float = Field(1_000_000.0, gt=0, le=1e12)


class BacktestRun(BaseModel):
    id: str
    status: str
    strategy: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None


class BacktestTrade(BaseModel):
    strategy: str
    instrument: str
    direction: str
    quantity: int
    entry_time: datetime
    entry_price: float
    exit_time: datetime | None
    exit_price: float | None
    gross_pnl: float | None
    charges: float | None
    net_pnl: float | None
    closed: bool


class BacktestResults(BaseModel):
    run: BacktestRun
    summary: dict[str, Any]
    trades: list[BacktestTrade]


def _argv(req: BacktestRequest, data: str, run_id: str, out: Path) -> list[str]:
    argv = [sys.executable, "-m", "flows.cli", "backtest", "--strategy", str(req.strategy)]
    argv += ["--params", json.dumps(req.params), "--data", data, "--capital", str(req.capital)]
    argv += ["--run-id", run_id, "--out", str(out)]
    if req.instruments:
        argv += ["--instruments", ",".join(req.instruments)]
    if req.start:
        argv += ["--from", req.start.isoformat()]
    if req.end:
        argv += ["--to", req.end.isoformat()]
    if req.timeframe:
        argv += ["--timeframe", req.timeframe]
    return argv


@router.post("/api/backtest", response_model=BacktestRun, status_code=202)
def start(
    conn: Conn,
    st: Annotated[AppState, Depends(state)],
    user: Caller,
    request: Request,
    req: Annotated[BacktestRequest, Body()],
) -> BacktestRun:
    from strategies.registry import ParamsError, UnknownStrategy

    params = dict(req.params)
    if req.instruments and "instruments" not in params:
        params["instruments"] = req.instruments
    try:
        REGISTRY.params(str(req.strategy), params)
    except (ParamsError, UnknownStrategy) as exc:
        raise ApiError(422, "Invalid strategy or params", str(exc)) from None
    for name, v in (("from", req.start), ("to", req.end)):
        if v is not None and v.tzinfo is None:
            raise ApiError(422, "Invalid time", f"{name} has no UTC offset")
    if st.bootstrap is None or st.dsn is None:
        raise ApiError(503, "Backtests unavailable", "a backtest needs the broker and the database")
    running = [rid for rid, job in _JOBS.items() if job.poll() is None]
    if len(running) >= MAX_JOBS:
        raise ApiError(429, "Too many backtests", f"{len(running)} are running; try again when one finishes",
                       headers={"Retry-After": "10"})  # fmt: skip
    home = st.settings.home_dir
    data = "db"
    if req.data != "db":
        path = (home / "data" / req.data).resolve()
        if not path.is_file() or (home / "data").resolve() not in path.parents:
            raise ApiError(422, "Unknown data file", f"{req.data} is not a file under {home / 'data'}")
        data = str(path)
    run_id = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{uuid.uuid4().hex[:6]}"
    spec = {"strategies": [{"id": str(req.strategy), "kind": str(req.strategy), "params": params}], "data": req.data,
            "instruments": req.instruments, "capital": req.capital, "timeframe": req.timeframe}  # fmt: skip
    row = conn.execute(
        """INSERT INTO backtest_runs (id, status, strategy, params, instruments, data_source, timeframe, from_time,
                                      to_time, spec)
           VALUES (%s, 'PENDING', %s, %s, %s, %s, %s, %s, %s, %s) RETURNING created_at""",
        (
            run_id,
            str(req.strategy),
            Jsonb(params),
            req.instruments,
            req.data,
            req.timeframe,
            req.start,
            req.end,
            Jsonb(spec),
        ),
    ).fetchone()
    out = home / "backtests" / run_id
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "job.log").open("wb")
    env = {**os.environ, "TICKTAPE_HOME": str(home), "TICKTAPE_TOPIC_PREFIX": st.settings.topic_prefix,
           "TICKTAPE_KAFKA_BOOTSTRAP": st.bootstrap or "", "TICKTAPE_DATABASE_URL": st.dsn or ""}  # fmt: skip
    _JOBS[run_id] = subprocess.Popen(_argv(req, data, run_id, out), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, env=env)  # fmt: skip
    assert row is not None
    audit_action(conn, user, request, "backtest", run_id, strategy=str(req.strategy), data=req.data)
    return BacktestRun(id=run_id, status="PENDING", strategy=str(req.strategy), created_at=row[0], started_at=None,
                       finished_at=None, error=None)  # fmt: skip


def _run(conn: Conn, run_id: str) -> BacktestRun:
    r = conn.execute(
        "SELECT id, status, strategy, created_at, started_at, finished_at, error FROM backtest_runs WHERE id = %s",
        (run_id,),
    ).fetchone()
    if r is None:
        raise ApiError(404, "Unknown backtest", f"no backtest run {run_id!r}")
    run = BacktestRun(id=r[0], status=r[1], strategy=r[2], created_at=r[3], started_at=r[4], finished_at=r[5], error=r[6])
    job = _JOBS.get(run_id)
    if job is not None and job.poll() is not None:
        _JOBS.pop(run_id, None)
        if run.status in ("PENDING", "RUNNING"):  # the job ended without recording its end
            why = f"the backtest process exited with code {job.returncode}"
            conn.execute("UPDATE backtest_runs SET status = 'FAILED', error = %s, finished_at = now() WHERE id = %s",
                         (why, run_id))  # fmt: skip
            run = run.model_copy(update={"status": "FAILED", "error": why})
    return run


@router.get("/api/backtest/{run_id}", response_model=BacktestRun)
def status(conn: Conn, run_id: RunId) -> BacktestRun:
    return _run(conn, run_id)


@router.get("/api/backtest/{run_id}/results", response_model=BacktestResults)
def results(conn: Conn, run_id: RunId, page: Paged) -> BacktestResults:
    run = _run(conn, run_id)
    if run.status != "COMPLETED":
        raise ApiError(409, "Backtest not completed", f"run {run_id} is {run.status}")
    summary = conn.execute("SELECT metrics FROM backtest_runs WHERE id = %s", (run_id,)).fetchone()
    rows = conn.execute(
        """SELECT strategy, instrument, side, quantity, entry_time, entry_price, exit_time, exit_price, pnl_gross, charges,
                  pnl_net, closed FROM backtest_trades WHERE run_id = %s ORDER BY trade_no LIMIT %s OFFSET %s""",
        (run_id, page.limit, page.offset),
    ).fetchall()
    f = lambda x: float(x) if x is not None else None  # noqa: E731
    trades = [
        BacktestTrade(strategy=r[0], instrument=r[1], direction=r[2], quantity=r[3], entry_time=r[4],
                      entry_price=float(r[5]), exit_time=r[6], exit_price=f(r[7]), gross_pnl=f(r[8]), charges=f(r[9]),
                      net_pnl=f(r[10]), closed=r[11])
        for r in rows
    ]  # fmt: skip
    return BacktestResults(run=run, summary=summary[0] if summary and summary[0] else {}, trades=trades)
