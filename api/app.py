"""The API application factory.

    uvicorn api.app:create_app --factory --host 127.0.0.1 --port 8000

``/health`` reports the broker, the database and every supervised flow; it answers 200
when all are healthy and 503 otherwise (with the same typed body). Probes are cheap to
answer, not to compute: the broker and database probes run at most once a second and one
at a time (:class:`_Probes`), the flows' status files are read per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Literal

import psycopg
from fastapi import Depends, FastAPI, Response, WebSocket
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from api import auth, errors, security
from api.deps import AppState, known_query
from api.routes import backtests, market, risk, strategies, trading
from api.ws import Hub
from connectors.settings import Settings, load_settings
from connectors.supervision import FlowStatus, read_flow_status

Status = Literal["ok", "degraded", "down"]
HEALTH_TTL_S = 1.0


class ComponentHealth(BaseModel):
    status: Status
    detail: str = ""
    latency_ms: float | None = None


class FlowHealth(BaseModel):
    status: Status
    pid: int | None
    restarts: int
    uptime_s: float | None
    detail: str = ""
    metrics_url: str | None = None


class Health(BaseModel):
    status: Status
    broker: ComponentHealth
    database: ComponentHealth
    flows: dict[str, FlowHealth]
    persisted_lag_s: float | None = None
    trading: dict[str, str] = {}  # account -> ACTIVE / REDUCING / HALTED, as last persisted


def _endpoints(settings: Settings) -> tuple[str | None, str | None]:
    from connectors import embedded

    state = embedded.read_state(settings.home_dir)
    bootstrap = settings.kafka_bootstrap or (state.broker.bootstrap if state.broker else None)
    dsn = settings.database_url or (state.postgres.url if state.postgres else None)
    return bootstrap, dsn


def _check_broker(bootstrap: str | None) -> ComponentHealth:
    from connectors.kafka import KafkaClientConfig

    if bootstrap is None:
        return ComponentHealth(status="down", detail="no broker configured or running")
    t = time.perf_counter()
    try:
        md = KafkaClientConfig(bootstrap, tansu=False).admin().list_topics(timeout=2)  # an admin client ignores tansu
    except Exception as exc:
        return ComponentHealth(status="down", detail=f"{bootstrap}: {exc}")
    return ComponentHealth(
        status="ok", detail=f"{bootstrap}, {len(md.topics)} topics", latency_ms=round((time.perf_counter() - t) * 1000, 1)
    )


DatabaseProbe = tuple[ComponentHealth, float | None, dict[str, str]]  # (health, persisted lag, trading states)


async def _check_database(pool: AsyncConnectionPool | None) -> DatabaseProbe:
    """The database as the routes see it: through the app's pool (a connection from it, or
    the pool's own error when it cannot get one)."""
    if pool is None:
        return ComponentHealth(status="down", detail="no database configured or running"), None, {}
    t = time.perf_counter()
    try:
        async with pool.connection(timeout=2) as conn:
            cur = await conn.execute(
                "SELECT (SELECT EXTRACT(EPOCH FROM NOW() - MAX(updated_at)) FROM kafka_offsets WHERE consumer = 'persist'),"
                " to_regclass('trading_state') IS NOT NULL"
            )
            lag, has_trading = await cur.fetchone() or (None, False)
            trading: dict[str, str] = {}
            if has_trading:
                cur = await conn.execute("SELECT account, state FROM trading_state ORDER BY account")
                trading = dict(await cur.fetchall())
    except psycopg.Error as exc:
        return ComponentHealth(status="down", detail=str(exc).strip().splitlines()[0]), None, {}
    latency_ms = round((time.perf_counter() - t) * 1000, 1)
    return ComponentHealth(status="ok", latency_ms=latency_ms), float(lag) if lag is not None else None, trading


class _Probes:
    """The broker and database probes, refreshed at most every ``HEALTH_TTL_S`` and one
    refresh at a time: a request that finds them stale starts the refresh and waits for it
    (so a probe after a quiet spell is fresh); requests arriving meanwhile answer with the
    previous result instead of each starting its own refresh (each would open a broker
    client and take a database connection, and under load they pile up)."""

    def __init__(self, settings: Settings, st: AppState) -> None:
        self._settings, self._st = settings, st
        self._last: tuple[ComponentHealth, DatabaseProbe] | None = None
        self._at = -math.inf
        self._refresh: asyncio.Task[tuple[ComponentHealth, DatabaseProbe]] | None = None

    async def latest(self) -> tuple[ComponentHealth, DatabaseProbe]:
        refresh = self._refresh
        if refresh is None and time.monotonic() - self._at > HEALTH_TTL_S:
            refresh = self._refresh = asyncio.create_task(self._probe())
        elif self._last is not None:
            return self._last
        assert refresh is not None  # (no result yet means the first refresh is running)
        return await asyncio.shield(refresh)  # a caller that goes away does not cancel it for the others

    async def _probe(self) -> tuple[ComponentHealth, DatabaseProbe]:
        try:
            bootstrap, _dsn = _endpoints(self._settings)
            broker, database = await asyncio.gather(asyncio.to_thread(_check_broker, bootstrap),
                                                    _check_database(self._st.apool))  # fmt: skip
            self._last, self._at = (broker, database), time.monotonic()
            return self._last
        finally:
            self._refresh = None


def _flow_health(fs: FlowStatus) -> FlowHealth:
    status: Status = "ok" if fs.state == "running" else "degraded" if fs.state in {"starting", "restarting"} else "down"
    return FlowHealth(
        status=status,
        pid=fs.pid,
        restarts=fs.restarts,
        uptime_s=round(time.time() - fs.started_at, 1) if fs.started_at else None,
        detail=fs.detail,
        metrics_url=f"http://127.0.0.1:{fs.metrics_port}/metrics" if fs.metrics_port else None,
    )


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The PostgreSQL pools (sync and async, see api.deps) and one command publisher for the app's lifetime."""
    from psycopg_pool import ConnectionPool

    from connectors.commands import CommandPublisher
    from connectors.kafka import KafkaClientConfig
    from schemas.topics import load_catalog

    st: AppState = app.state.ticktape
    bootstrap, dsn = _endpoints(st.settings)
    st.bootstrap, st.dsn = bootstrap, dsn
    kwargs = {"autocommit": True, "options": "-c TimeZone=UTC", "connect_timeout": 3}
    if dsn is not None and st.pool is None:  # (a test may hand in its own)
        st.pool = ConnectionPool(dsn, min_size=1, max_size=8, open=False, timeout=5, kwargs=kwargs)
        st.pool.open(wait=False)
    loop = asyncio.get_running_loop()
    if dsn is not None and loop not in st.apools:
        # Async connections are busy only while a query runs, so a few serve many requests.
        apool = AsyncConnectionPool(dsn, min_size=2, max_size=8, open=False, timeout=5, kwargs=kwargs)
        await apool.open(wait=False)
        st.apools[loop] = apool
    hub: Hub = app.state.hub
    if bootstrap is not None:
        catalog = load_catalog()
        if st.settings.topic_prefix:
            catalog = catalog.scoped(st.settings.topic_prefix)
        kafka = KafkaClientConfig.from_settings(st.settings, bootstrap)
        if st.commands is None:
            st.commands = CommandPublisher(kafka, catalog)
        hub.configure(kafka, catalog)  # its consumer starts with the first WebSocket client
    # Everything built so far (modules, routes, models, pools) lives as long as the process:
    # move it out of the collector's reach, so a full collection under load walks only the
    # objects requests create (unfrozen, such a pause cost 20-70 ms of p99 at 500 req/s).
    # Once per process: a test session that opens many apps keeps collecting their leftovers.
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()
    try:
        yield
    finally:
        # Kafka clients are destroyed here, not whenever the app is collected: a client left
        # alive refreshes metadata of topics that may be gone by then.
        hub.stop()
        if st.commands is not None:
            st.commands.close()
            st.commands = None
        if st.pool is not None:
            st.pool.close()
        if loop in st.apools:
            await st.apools.pop(loop).close()


def _audit_ws(st: AppState, websocket: WebSocket, reason: str) -> None:
    """A refused WebSocket connection goes into the audit log (best effort: never blocks the refusal)."""
    if st.pool is None:
        return
    client = websocket.client.host if websocket.client else None
    with contextlib.suppress(Exception), st.pool.connection(timeout=2) as conn:
        security.audit(conn, "?", "ws_connect", "/ws", False, client, {"reason": reason})


def create_app(settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> FastAPI:
    """The app; secrets are read from ``environ`` (default: the process environment) now, so a
    missing or default secret stops start-up naming its variable."""
    settings = settings or load_settings()
    sec, box = auth.load_secrets(os.environ if environ is None else environ, settings.home_dir, settings.env)

    app = FastAPI(
        title="ticktape",
        version="0.1.0",
        description="Status and control API of the ticktape trading engine. Errors are application/problem+json.",
        lifespan=_lifespan,
    )
    app.state.ticktape = AppState(settings=settings, pool=None, commands=None, security=sec, box=box)
    app.state.hub = Hub(queue_size=settings.ws_queue_size, max_instruments=settings.ws_max_instruments)
    origins = [o.strip() for o in settings.api_allowed_origins.split(",") if o.strip()]
    app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST", "PUT", "DELETE"],
                       allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    errors.install(app)
    auth.install(app, auth.RateLimiter(settings.api_login_rate_limit_per_min, settings.api_rate_limit_per_min))
    strict = Depends(known_query)
    app.include_router(auth.router, dependencies=[strict])

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        """Live events (see api.ws). Browsers must come from an allowed origin."""
        origin = websocket.headers.get("origin")
        refused = None
        if origin is not None and origin not in origins:
            refused = f"origin {origin[:100]} not allowed"
        else:
            try:
                claims = security.verify_access_token(websocket.query_params.get("token", ""), sec)
            except security.AuthError as exc:
                refused = f"token: {exc.code}"
        if refused is not None:
            await asyncio.to_thread(_audit_ws, app.state.ticktape, websocket, refused)
            await websocket.close(code=1008, reason=refused)
            return
        websocket.state.user_id = claims.user_id
        await websocket.accept()
        app.state.hub.ensure_started()
        await app.state.hub.serve(websocket)

    for router in (market.router, strategies.router, risk.router, trading.router, backtests.router):
        app.include_router(router, dependencies=[strict, Depends(auth.current_user)])

    probes = _Probes(settings, app.state.ticktape)

    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, dependencies=[strict])
    async def health(response: Response) -> Health:
        broker, (db, lag, trading) = await probes.latest()
        flows = {name: _flow_health(fs) for name, fs in read_flow_status(settings.home_dir).items() if name != "api"}
        parts = [broker.status, db.status, *(f.status for f in flows.values())]
        overall: Status = "ok" if all(p == "ok" for p in parts) else "down" if "down" in parts[:2] else "degraded"
        if overall != "ok":
            response.status_code = 503
        return Health(status=overall, broker=broker, database=db, flows=flows, persisted_lag_s=lag, trading=trading)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["create_app"]
