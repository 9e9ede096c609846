"""Instruments and stored market data: candles, ticks, depth (paged, time-bounded).

These are the API's busiest reads (a chart asks for a day of 1m candles at a time), so they
are ``async def`` on the async pool and answer JSON encoded once: each query selects the
response model's fields, in order, with numerics cast to ``float8``. The instrument list is
encoded by msgspec (see :mod:`api.deps`); a series (candles, ticks, depth: hundreds of rows)
is written by PostgreSQL itself (``json_agg``), so its values never become Python objects.
A series for one instrument is one round trip (the instrument master is joined, not looked
up first); only an empty answer asks the master whether the instrument exists (404 if not).
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta
from typing import Annotated, Any, LiteralString

from fastapi import APIRouter, Depends, Path, Query, Response
from pydantic import BaseModel

from api.deps import AConn, Paged, Window, encoded_json, json_body, model_rows, series_window
from api.errors import PROBLEM_RESPONSES, ApiError

router = APIRouter(tags=["market data"], responses=PROBLEM_RESPONSES)
SYMBOL = r"^[A-Z0-9_]{1,12}:[A-Za-z0-9&_.\- ]{1,50}$"
Symbol = Annotated[str, Path(pattern=SYMBOL, description="EXCHANGE:TRADINGSYMBOL, e.g. NSE:INFY")]
TIMEFRAMES = ("1s", "5s", "1m", "5m", "15m", "1h", "1d")
# What a series route reads: at most this long a range (longer ones are cut), this long when unsaid.
CandleWindow = Annotated[Window, Depends(series_window(timedelta(days=400), timedelta(days=1)))]
TickWindow = Annotated[Window, Depends(series_window(timedelta(days=1), timedelta(minutes=15)))]
DepthWindow = Annotated[Window, Depends(series_window(timedelta(days=1), timedelta(minutes=5)))]


class InstrumentOut(BaseModel):
    instrument: str
    tradingsymbol: str
    name: str | None
    exchange: str
    instrument_type: str
    tick_size: float | None
    lot_size: int | None
    expiry: str | None
    strike: float | None
    underlying: str | None


class InstrumentPage(BaseModel):
    items: list[InstrumentOut]
    total: int
    limit: int
    offset: int


class CandleOut(BaseModel):
    time: datetime
    open: float
    high: float
    low: float
    close: float
    volume: int
    trade_count: int | None
    vwap: float | None
    oi: int | None


class TickOut(BaseModel):
    time: datetime
    seq: int
    price: float
    quantity: int
    volume: int
    oi: int
    bid: float | None
    ask: float | None


class DepthOut(BaseModel):
    time: datetime
    bid_prices: list[float]
    bid_quantities: list[int]
    ask_prices: list[float]
    ask_quantities: list[int]


@functools.cache
def _as_json_array(query: LiteralString, order: LiteralString) -> LiteralString:
    """``query`` wrapped so PostgreSQL answers its rows as one JSON array (one text value).

    The busiest reads return hundreds of rows; PostgreSQL's ``json_agg`` writes them in C in
    the database process, where the API process would otherwise load every value into Python
    and encode it again: at 500 candle requests a second that work saturated the API's one
    core (tests/bench/test_bench_api.py). The keys are the query's column names: the query
    names exactly the fields of the route's response model, in order (numerics cast to float8,
    which JSON writes shortest), and the route tests compare real rows' keys with the model."""
    return f"SELECT coalesce(json_agg(r ORDER BY {order}), '[]')::text FROM ({query}) r"  # type: ignore[return-value]


async def _series(conn: AConn, query: LiteralString, order: LiteralString, args: dict[str, Any]) -> bytes:
    """The rows of ``query`` (the response model's fields, from a table joined to the instrument master
    as ``i`` on ``i.symbol = %(instrument)s``) as a JSON array, ordered by ``order`` (columns
    of the query as ``r``). Only when there are none is the master asked whether it knows the
    instrument at all: 404 if not, else the range is simply empty."""
    cur = await conn.execute(_as_json_array(query, order), args)
    body: str = (await cur.fetchone() or ("[]",))[0]
    if body == "[]":
        known = await conn.execute("SELECT 1 FROM instruments WHERE symbol = %s", (args["instrument"],))
        if await known.fetchone() is None:
            raise ApiError(404, "Unknown instrument", f"{args['instrument']} is not in the instrument master")
    return body.encode()


@router.get("/api/instruments", response_model=InstrumentPage)
async def instruments(
    conn: AConn,
    page: Paged,
    q: Annotated[str | None, Query(max_length=50, description="symbol or name contains")] = None,
    exchange: Annotated[str | None, Query(pattern=r"^[A-Z]{2,6}$")] = None,
    instrument_type: Annotated[str | None, Query(pattern=r"^(EQ|FUT|CE|PE|INDEX)$")] = None,
    underlying: Annotated[str | None, Query(pattern=SYMBOL)] = None,
) -> Response:
    where = ["is_active"]
    args: dict[str, object] = {}
    if q:
        where.append("(symbol ILIKE %(q)s OR name ILIKE %(q)s)")
        args["q"] = f"%{q.replace('%', '').replace('_', '')}%"
    for col, val in (("exchange", exchange), ("instrument_type", instrument_type), ("underlying", underlying)):
        if val:
            where.append(f"{col} = %({col})s")
            args[col] = val
    cond = " AND ".join(where)
    counted = await conn.execute(f"SELECT count(*) FROM instruments WHERE {cond}", args)
    total = (await counted.fetchone() or (0,))[0]
    async with conn.cursor(row_factory=model_rows(InstrumentOut), binary=True) as cur:
        await cur.execute(
            f"""SELECT symbol AS instrument, tradingsymbol, name, exchange, instrument_type, tick_size::float8 AS tick_size,
                       lot_size, expiry_date AS expiry, strike_price::float8 AS strike, underlying
                FROM instruments WHERE {cond} ORDER BY symbol LIMIT %(l)s OFFSET %(o)s""",
            {**args, "l": page.limit, "o": page.offset},
        )
        items = await cur.fetchall()
    return encoded_json({"items": items, "total": total, "limit": page.limit, "offset": page.offset})


@router.get("/api/market-data/{instrument}/candles", response_model=list[CandleOut])
async def candles(
    conn: AConn,
    instrument: Symbol,
    window: CandleWindow,
    response: Response,
    timeframe: Annotated[str, Query(pattern=r"^(1s|5s|1m|5m|15m|1h|1d)$")] = "1m",
) -> Response:
    """Closed candles of ``timeframe`` opening in [from, to), oldest first."""
    body = await _series(
        conn,
        """SELECT c.time, c.open_price::float8 AS open, c.high_price::float8 AS high, c.low_price::float8 AS low,
                  c.close_price::float8 AS close, c.volume, c.trade_count, c.vwap::float8 AS vwap, c.oi
           FROM ohlc_candles c JOIN instruments i ON i.id = c.instrument_id
           WHERE i.symbol = %(instrument)s AND c.timeframe = %(timeframe)s AND c.time >= %(start)s AND c.time < %(end)s
           ORDER BY c.time LIMIT %(limit)s OFFSET %(offset)s""",
        "r.time",
        {**window.args(), "instrument": instrument, "timeframe": timeframe},
    )
    return json_body(body, response)


@router.get("/api/market-data/{instrument}/ticks", response_model=list[TickOut])
async def ticks(
    conn: AConn,
    instrument: Symbol,
    window: TickWindow,
    response: Response,
) -> Response:
    """Stored ticks in [from, to), oldest first (at most one day per request)."""
    body = await _series(
        conn,
        """SELECT t.time, t.seq, t.price::float8 AS price, t.quantity, t.volume, t.oi, t.bid::float8 AS bid,
                  t.ask::float8 AS ask
           FROM tick_data t JOIN instruments i ON i.id = t.instrument_id
           WHERE i.symbol = %(instrument)s AND t.time >= %(start)s AND t.time < %(end)s
           ORDER BY t.time, t.seq LIMIT %(limit)s OFFSET %(offset)s""",
        "r.time, r.seq",
        {**window.args(), "instrument": instrument},
    )
    return json_body(body, response)


@router.get("/api/market-data/{instrument}/depth", response_model=list[DepthOut])
async def depth(
    conn: AConn,
    instrument: Symbol,
    window: DepthWindow,
    response: Response,
) -> Response:
    """Stored 5-level order book snapshots in [from, to), oldest first."""
    body = await _series(
        conn,
        """SELECT d.time, d.bid_prices::float8[] AS bid_prices, d.bid_quantities, d.ask_prices::float8[] AS ask_prices,
                  d.ask_quantities
           FROM order_book_snapshots d JOIN instruments i ON i.id = d.instrument_id
           WHERE i.symbol = %(instrument)s AND d.time >= %(start)s AND d.time < %(end)s
           ORDER BY d.time LIMIT %(limit)s OFFSET %(offset)s""",
        "r.time",
        {**window.args(), "instrument": instrument},
    )
    return json_body(body, response)
