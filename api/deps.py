"""What routes depend on: the database pool, the command publisher, the settings, the caller.

The app's lifespan opens one PostgreSQL pool and one command publisher; routes take them as
``Annotated`` dependencies. Time ranges and pages are parsed here once, with their limits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Query, Request, Response
from psycopg_pool import ConnectionPool

from api.errors import ApiError
from connectors.commands import CommandPublisher
from connectors.settings import Settings


@dataclass
class AppState:
    settings: Settings
    pool: ConnectionPool | None
    commands: CommandPublisher | None
    security: Any = None  # api.security.SecurityConfig (JWT secret, token lifetimes, lockout)
    box: Any = None  # api.credentials.SecretBox (master keys: TOTP secrets, broker credentials)
    bootstrap: str | None = None  # the broker and database in use (external or embedded)
    dsn: str | None = None


def state(request: Request) -> AppState:
    return request.app.state.ticktape  # type: ignore[no-any-return]


def conn(st: Annotated[AppState, Depends(state)]) -> Iterator[psycopg.Connection]:
    if st.pool is None:
        raise ApiError(503, "Database unavailable", "no database is configured or running")
    try:
        with st.pool.connection(timeout=5) as c:
            yield c
    except psycopg.OperationalError as exc:
        raise ApiError(503, "Database unavailable", str(exc).splitlines()[0]) from None


def publisher(st: Annotated[AppState, Depends(state)]) -> CommandPublisher:
    if st.commands is None:
        raise ApiError(503, "Broker unavailable", "no broker is configured or running")
    return st.commands


Conn = Annotated[psycopg.Connection, Depends(conn)]
Publisher = Annotated[CommandPublisher, Depends(publisher)]


@dataclass(frozen=True)
class Page:
    limit: int
    offset: int


def page(
    limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="items to skip")] = 0,
) -> Page:
    return Page(limit, offset)


Paged = Annotated[Page, Depends(page)]


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    truncated: bool = False  # the asked range was longer than the limit and was cut at start + limit


def time_range(max_span: timedelta, default_span: timedelta) -> Any:
    """A dependency parsing ``from``/``to`` (ISO-8601 with an offset). Only ``from``: the
    ``default_span`` after it; only ``to``: the one before it; neither: the last
    ``default_span``. A range longer than ``max_span`` is cut to ``from + max_span`` and the
    response says so in ``X-Time-Range`` (page through longer periods); an empty range
    (``from >= to``) simply has no rows."""

    def parse(
        response: Response,
        from_: Annotated[datetime | None, Query(alias="from", description="start, ISO-8601 with offset")] = None,
        to: Annotated[datetime | None, Query(description="end (exclusive), ISO-8601 with offset")] = None,
    ) -> TimeRange:
        for name, v in (("from", from_), ("to", to)):
            if v is not None and v.tzinfo is None:
                raise ApiError(422, "Invalid time", f"{name}={v.isoformat()} has no UTC offset")
        if from_ is None:
            end = to or datetime.now(UTC)
            start = end - default_span
        else:
            start = from_
            end = to or start + default_span
        cut = end - start > max_span
        if cut:
            end = start + max_span
        response.headers["X-Time-Range"] = f"{start.isoformat()}/{end.isoformat()}" + ("; truncated" if cut else "")
        return TimeRange(start, end, cut)

    return parse
