"""What routes depend on: the database pools, the command publisher, the settings, the caller.

The app's lifespan opens the PostgreSQL pools and one command publisher; routes take them as
``Annotated`` dependencies. Time ranges and pages are parsed here once, with their limits.

Two pools, because the two kinds of route cost differently. A plain ``def`` route and every
plain ``def`` dependency run in the threadpool, one hand-off each; that is fine for control
actions and logins but at hundreds of reads a second the hand-offs themselves saturate the
process. So the hot read routes are ``async def`` on :data:`AConn` (an
:class:`~psycopg_pool.AsyncConnectionPool`), the dependencies that only parse or look
something up are ``async def`` too (they run on the event loop, no hand-off), and everything
else keeps the sync :data:`Conn`.

Big read answers skip the response model at run time. The query shapes its rows like the
model (its fields as columns, in order, numerics cast to ``float8``), :func:`model_rows`
makes each row a small msgspec struct and :func:`encoded_json` encodes them in one call:
the same bytes the model would have produced, several times cheaper than a model (or even a
dict) per row. The route still declares ``response_model=`` so the OpenAPI schema is
unchanged; the database's NOT NULL constraints stand in for the model's validation of
required fields.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, get_origin

import msgspec
import psycopg
from fastapi import Depends, Query, Request, Response
from fastapi.dependencies.models import Dependant
from psycopg.rows import AsyncRowFactory, RowMaker
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from pydantic import BaseModel

from api.errors import ApiError, annotation_kinds
from connectors.commands import CommandPublisher
from connectors.settings import Settings


@dataclass
class AppState:
    settings: Settings
    pool: ConnectionPool | None  # control actions, logins, the audit log (sync routes)
    commands: CommandPublisher | None
    security: Any = None  # api.security.SecurityConfig (JWT secret, token lifetimes, lockout)
    box: Any = None  # api.credentials.SecretBox (master keys: TOTP secrets, broker credentials)
    bootstrap: str | None = None  # the broker and database in use (external or embedded)
    dsn: str | None = None
    # The hot read routes' async pools, one per event loop serving the app: an async pool
    # belongs to the loop that opened it. A server runs one loop; tests may drive the same app
    # from a second one (an ASGI client with its own lifespan).
    apools: dict[asyncio.AbstractEventLoop, AsyncConnectionPool] = field(default_factory=dict)

    @property
    def apool(self) -> AsyncConnectionPool | None:
        """The async pool of the running event loop, if its lifespan opened one."""
        return self.apools.get(asyncio.get_running_loop())


async def state(request: Request) -> AppState:
    return request.app.state.ticktape  # type: ignore[no-any-return]


def conn(st: Annotated[AppState, Depends(state)]) -> Iterator[psycopg.Connection]:
    if st.pool is None:
        raise ApiError(503, "Database unavailable", "no database is configured or running")
    try:
        with st.pool.connection(timeout=5) as c:
            yield c
    except psycopg.OperationalError as exc:
        raise ApiError(503, "Database unavailable", str(exc).splitlines()[0]) from None


async def aconn(request: Request) -> AsyncIterator[psycopg.AsyncConnection]:
    # The state is read from the request, not taken as a dependency: every dependency costs
    # the busy read routes a resolution per request (FastAPI resolves even cached ones).
    if (pool := request.app.state.ticktape.apool) is None:
        raise ApiError(503, "Database unavailable", "no database is configured or running")
    try:
        async with pool.connection(timeout=5) as c:
            yield c
    except psycopg.OperationalError as exc:
        raise ApiError(503, "Database unavailable", str(exc).splitlines()[0]) from None


async def publisher(st: Annotated[AppState, Depends(state)]) -> CommandPublisher:
    if st.commands is None:
        raise ApiError(503, "Broker unavailable", "no broker is configured or running")
    return st.commands


def _query_params(dependant: Dependant) -> Iterator[tuple[str, bool]]:
    """(name, takes several values) of every query parameter of a route and its dependencies."""
    yield from ((p.alias, _takes_many(p.field_info.annotation)) for p in dependant.query_params)
    for sub in dependant.dependencies:
        yield from _query_params(sub)


def _takes_many(annotation: Any) -> bool:
    """True for a list, tuple, set or sequence annotation (``?k=1&k=2`` is then one value).

    >>> _takes_many(list[str] | None), _takes_many(Sequence[int]), _takes_many(int | None), _takes_many(str)
    (True, True, False, False)
    """
    return any((get_origin(k) or k) in (list, tuple, set, frozenset, Sequence) for k in annotation_kinds(annotation))


async def known_query(request: Request) -> None:
    """Refuse query parameters the route does not declare, and a single-valued one given more
    than once (422), as an unknown body field is refused: a misspelt ``limt=5`` would otherwise
    be ignored, and of ``q=INFY&q=TCS`` only the last kept, and the answer silently differ
    from what was asked. On every HTTP route (not the WebSocket, whose token rides in the
    query). The names come from the matched route (FastAPI puts the route as declared, not its
    included copy, in the scope: a router-level dependency's own query parameters would not be
    seen, and none has any) and are kept on it, worked out once."""
    if not request.scope["query_string"]:
        return
    route = request.scope["route"]
    if (known := getattr(route, "_ticktape_query", None)) is None:
        params = dict(_query_params(route.dependant))
        known = route._ticktape_query = (frozenset(params), frozenset(n for n, many in params.items() if not many))
    declared, single = known
    query = request.query_params
    if unknown := sorted(set(query) - declared):
        allowed = ", ".join(sorted(declared)) or "none"
        names = ", ".join(repr(u[:40]) for u in unknown[:5])
        raise ApiError(422, "Invalid request", f"unknown query parameter {names} (this route takes: {allowed})")
    if len(query.multi_items()) > len(query):  # some name repeats
        for name in sorted(single & set(query)):
            if (n := len(query.getlist(name))) > 1:
                raise ApiError(422, "Invalid request", f"query parameter {name!r} is given {n} times; it takes one value")


Conn = Annotated[psycopg.Connection, Depends(conn)]
# The connection goes back to the pool when the route returns, before the answer is sent.
AConn = Annotated[psycopg.AsyncConnection, Depends(aconn, scope="function")]
Publisher = Annotated[CommandPublisher, Depends(publisher)]

_json = msgspec.json.Encoder()
_NUMERIC = {psycopg.postgres.types["numeric"].oid, psycopg.postgres.types["numeric"].array_oid}


@functools.cache
def model_rows(model: type[BaseModel]) -> AsyncRowFactory[Any]:
    """A psycopg row factory for a query whose columns are ``model``'s fields, in order: each
    row becomes a struct with those fields, which encodes as the model would. A query whose
    columns are not exactly the fields, or still numeric (loaded as Decimal, slowly, and
    encoded as strings), fails loudly instead of answering something else."""
    fields = tuple(model.model_fields)
    row = msgspec.defstruct(f"{model.__name__}Row", fields)

    def factory(cursor: psycopg.AsyncCursor[Any]) -> RowMaker[Any]:
        description = cursor.description or []
        if (columns := tuple(c.name for c in description)) != fields:
            msg = f"the query's columns {columns} are not the fields of {model.__name__} {fields}"
            raise TypeError(msg)
        if numeric := [c.name for c in description if c.type_code in _NUMERIC]:
            msg = f"cast {numeric} to float8 in the query"
            raise TypeError(msg)
        return lambda values: row(*values)

    return factory


def encoded_json(content: object, response: Response | None = None) -> Response:
    """``content`` (rows or a page of them, already shaped like the route's response model)
    as JSON, with the headers dependencies set on the route's ``response`` (a returned
    response replaces that one)."""
    return json_body(_json.encode(content), response)


def json_body(body: bytes, response: Response | None = None) -> Response:
    """JSON already encoded (by msgspec, or by PostgreSQL), with the headers dependencies set
    on the route's ``response``."""
    headers = response.headers if response is not None else None
    return Response(body, media_type="application/json", headers=headers)


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


# A page's parameters, shared by :func:`page` and :func:`series_window`.
Limit = Annotated[int, Query(ge=1, le=1000, description="items per page")]
Offset = Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")]


async def page(limit: Limit = 100, offset: Offset = 0) -> Page:
    return Page(limit, offset)


Paged = Annotated[Page, Depends(page)]


@dataclass(frozen=True)
class Window:
    """A time range and a page of the rows in it: what a series route (candles, ticks, depth)
    reads, parsed by one dependency (each dependency costs a busy route a resolution per request)."""

    start: datetime
    end: datetime
    limit: int
    offset: int
    truncated: bool = False  # the asked range was longer than the limit and was cut at start + limit

    def args(self) -> dict[str, Any]:
        """The query arguments ``start``, ``end``, ``limit`` and ``offset``."""
        return {"start": self.start, "end": self.end, "limit": self.limit, "offset": self.offset}


_FIRST, _LAST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _shifted(t: datetime, by: timedelta) -> datetime:
    """``t + by``, stopping at the calendar's first or last instant: a window next to year 1
    or 9999 is a valid question (with no rows), not an overflow.

    >>> _shifted(datetime(1, 1, 1, tzinfo=UTC), -timedelta(days=1)).isoformat()
    '0001-01-01T00:00:00+00:00'
    """
    try:
        return t + by
    except OverflowError:
        return _LAST if by > timedelta(0) else _FIRST


def series_window(max_span: timedelta, default_span: timedelta) -> Any:
    """A dependency parsing ``from``/``to`` (ISO-8601 with an offset) and the page
    (``limit``/``offset``, as :func:`page`). Only ``from``: the ``default_span`` after it; only
    ``to``: the one before it; neither: the last ``default_span``. A range longer than
    ``max_span`` is cut to ``from + max_span`` and the response says so in ``X-Time-Range``
    (page through longer periods); an empty range (``from >= to``) simply has no rows."""

    async def parse(
        response: Response,
        from_: Annotated[datetime | None, Query(alias="from", description="start, ISO-8601 with offset")] = None,
        to: Annotated[datetime | None, Query(description="end (exclusive), ISO-8601 with offset")] = None,
        limit: Limit = 100,
        offset: Offset = 0,
    ) -> Window:
        for name, v in (("from", from_), ("to", to)):
            if v is not None and v.tzinfo is None:
                raise ApiError(422, "Invalid time", f"{name}={v.isoformat()} has no UTC offset")
        if from_ is None:
            end = to or datetime.now(UTC)
            start = _shifted(end, -default_span)
        else:
            start = from_
            end = to or _shifted(start, default_span)
        cut = end - start > max_span
        if cut:
            end = _shifted(start, max_span)
        response.headers["X-Time-Range"] = f"{start.isoformat()}/{end.isoformat()}" + ("; truncated" if cut else "")
        return Window(start, end, limit, offset, cut)

    return parse
