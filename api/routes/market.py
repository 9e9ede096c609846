"""Instruments and stored market data: candles, ticks, depth (paged, time-bounded)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from api.deps import Conn, Paged, TimeRange, time_range
from api.errors import PROBLEM_RESPONSES, ApiError

router = APIRouter(tags=["market data"], responses=PROBLEM_RESPONSES)
SYMBOL = r"^[A-Z0-9_]{1,12}:[A-Za-z0-9&_.\- ]{1,50}$"
Symbol = Annotated[str, Path(pattern=SYMBOL, description="EXCHANGE:TRADINGSYMBOL, e.g. NSE:INFY")]
TIMEFRAMES = ("1s", "5s", "1m", "5m", "15m", "1h", "1d")


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


def _instrument_id(conn: Conn, symbol: str) -> int:
    row = conn.execute("SELECT id FROM instruments WHERE symbol = %s", (symbol,)).fetchone()
    if row is None:
        raise ApiError(404, "Unknown instrument", f"{symbol} is not in the instrument master")
    return int(row[0])


@router.get("/api/instruments", response_model=InstrumentPage)
def instruments(
    conn: Conn,
    page: Paged,
    q: Annotated[str | None, Query(max_length=50, description="symbol or name contains")] = None,
    exchange: Annotated[str | None, Query(pattern=r"^[A-Z]{2,6}$")] = None,
    instrument_type: Annotated[str | None, Query(pattern=r"^(EQ|FUT|CE|PE|INDEX)$")] = None,
    underlying: Annotated[str | None, Query(pattern=SYMBOL)] = None,
) -> InstrumentPage:
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
    total = conn.execute(f"SELECT count(*) FROM instruments WHERE {cond}", args).fetchone()[0]  # type: ignore[index]
    rows = conn.execute(
        f"""SELECT symbol, tradingsymbol, name, exchange, instrument_type, tick_size, lot_size, expiry_date,
                   strike_price, underlying FROM instruments WHERE {cond} ORDER BY symbol LIMIT %(l)s OFFSET %(o)s""",
        {**args, "l": page.limit, "o": page.offset},
    ).fetchall()
    items = [
        InstrumentOut(instrument=r[0], tradingsymbol=r[1], name=r[2], exchange=r[3], instrument_type=r[4],
                      tick_size=float(r[5]) if r[5] is not None else None, lot_size=r[6],
                      expiry=r[7].isoformat() if r[7] else None, strike=float(r[8]) if r[8] is not None else None,
                      underlying=r[9])
        for r in rows
    ]  # fmt: skip
    return InstrumentPage(items=items, total=int(total), limit=page.limit, offset=page.offset)


@router.get("/api/market-data/{instrument}/candles", response_model=list[CandleOut])
def candles(
    conn: Conn,
    instrument: Symbol,
    page: Paged,
    span: Annotated[TimeRange, Depends(time_range(timedelta(days=400), timedelta(days=1)))],
    timeframe: Annotated[str, Query(pattern=r"^(1s|5s|1m|5m|15m|1h|1d)$")] = "1m",
) -> list[CandleOut]:
    """Closed candles of ``timeframe`` opening in [from, to), oldest first."""
    iid = _instrument_id(conn, instrument)
    rows = conn.execute(
        """SELECT time, open_price, high_price, low_price, close_price, volume, trade_count, vwap, oi FROM ohlc_candles
           WHERE instrument_id = %s AND timeframe = %s AND time >= %s AND time < %s ORDER BY time LIMIT %s OFFSET %s""",
        (iid, timeframe, span.start, span.end, page.limit, page.offset),
    ).fetchall()
    return [
        CandleOut(time=r[0], open=float(r[1]), high=float(r[2]), low=float(r[3]), close=float(r[4]), volume=int(r[5]),
                  trade_count=r[6], vwap=float(r[7]) if r[7] is not None else None, oi=r[8])
        for r in rows
    ]  # fmt: skip


@router.get("/api/market-data/{instrument}/ticks", response_model=list[TickOut])
def ticks(
    conn: Conn,
    instrument: Symbol,
    page: Paged,
    span: Annotated[TimeRange, Depends(time_range(timedelta(days=1), timedelta(minutes=15)))],
) -> list[TickOut]:
    """Stored ticks in [from, to), oldest first (at most one day per request)."""
    iid = _instrument_id(conn, instrument)
    rows = conn.execute(
        """SELECT time, seq, price, quantity, volume, oi, bid, ask FROM tick_data
           WHERE instrument_id = %s AND time >= %s AND time < %s ORDER BY time, seq LIMIT %s OFFSET %s""",
        (iid, span.start, span.end, page.limit, page.offset),
    ).fetchall()
    return [
        TickOut(time=r[0], seq=r[1], price=float(r[2]), quantity=r[3], volume=r[4], oi=r[5],
                bid=float(r[6]) if r[6] is not None else None, ask=float(r[7]) if r[7] is not None else None)
        for r in rows
    ]  # fmt: skip


@router.get("/api/market-data/{instrument}/depth", response_model=list[DepthOut])
def depth(
    conn: Conn,
    instrument: Symbol,
    page: Paged,
    span: Annotated[TimeRange, Depends(time_range(timedelta(days=1), timedelta(minutes=5)))],
) -> list[DepthOut]:
    """Stored 5-level order book snapshots in [from, to), oldest first."""
    iid = _instrument_id(conn, instrument)
    rows = conn.execute(
        """SELECT time, bid_prices, bid_quantities, ask_prices, ask_quantities FROM order_book_snapshots
           WHERE instrument_id = %s AND time >= %s AND time < %s ORDER BY time LIMIT %s OFFSET %s""",
        (iid, span.start, span.end, page.limit, page.offset),
    ).fetchall()
    return [
        DepthOut(time=r[0], bid_prices=[float(x) for x in r[1]], bid_quantities=list(r[2]),
                 ask_prices=[float(x) for x in r[3]], ask_quantities=list(r[4]))
        for r in rows
    ]  # fmt: skip
