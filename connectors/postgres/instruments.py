"""The instrument master in PostgreSQL (upsert by canonical symbol)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from schemas.market import Instrument, InstrumentType

_COLUMNS = ("symbol", "instrument_token", "exchange_token", "tradingsymbol", "name", "exchange", "segment",
            "instrument_type", "tick_size", "lot_size", "expiry_date", "strike_price", "underlying", "freeze_qty",
            "last_price")  # fmt: skip
_COLS = ", ".join(_COLUMNS)
# freeze_qty: a master without it (Kite's dump has none) keeps the value already stored.
_MERGE = f"""INSERT INTO instruments ({_COLS}, is_active, updated_at)
SELECT {_COLS}, TRUE, NOW() FROM instruments_incoming
ON CONFLICT (symbol) DO UPDATE SET instrument_token = EXCLUDED.instrument_token,
    exchange_token = EXCLUDED.exchange_token, tradingsymbol = EXCLUDED.tradingsymbol, name = EXCLUDED.name,
    exchange = EXCLUDED.exchange, segment = EXCLUDED.segment, instrument_type = EXCLUDED.instrument_type,
    tick_size = EXCLUDED.tick_size, lot_size = EXCLUDED.lot_size, expiry_date = EXCLUDED.expiry_date,
    strike_price = EXCLUDED.strike_price, underlying = EXCLUDED.underlying,
    freeze_qty = COALESCE(EXCLUDED.freeze_qty, instruments.freeze_qty),
    is_active = TRUE, updated_at = NOW()"""
# Listed before, on an exchange the new master covers, and not in it: expired or delisted.
_DEACTIVATE = """UPDATE instruments SET is_active = FALSE, updated_at = NOW()
WHERE is_active AND exchange = ANY(%s)
    AND NOT EXISTS (SELECT 1 FROM instruments_incoming n WHERE n.symbol = instruments.symbol)"""


def _copy_incoming(conn: psycopg.Connection, instruments: Iterable[Instrument]) -> int:
    """The rows into a transaction-scoped table ``instruments_incoming``: one COPY, then one merge
    (a 100k-row broker master refreshes in about 1 s here, under half the time of an executemany)."""
    # (Dropped first: a caller's own transaction may have made one already.)
    conn.execute("DROP TABLE IF EXISTS pg_temp.instruments_incoming")
    conn.execute(f"CREATE TEMP TABLE instruments_incoming ON COMMIT DROP AS SELECT {_COLS} FROM instruments WITH NO DATA")
    n = 0
    with conn.cursor().copy(f"COPY instruments_incoming ({_COLS}) FROM STDIN") as cp:
        for i in instruments:
            cp.write_row((i.instrument, i.instrument_token, i.exchange_token, i.tradingsymbol, i.name, i.exchange,
                          i.segment, i.instrument_type.value, i.tick_size, i.lot_size, i.expiry, i.strike,
                          i.underlying, i.freeze_qty, i.last_price))  # fmt: skip
            n += 1
    return n


def upsert_instruments(conn: psycopg.Connection, instruments: Iterable[Instrument]) -> int:
    """Insert or update ``instruments`` by canonical symbol (all active); the rows written."""
    with conn.transaction():
        n = _copy_incoming(conn, instruments)
        conn.execute(_MERGE)
    return n


def refresh_instruments(
    conn: psycopg.Connection, instruments: Iterable[Instrument], exchanges: Iterable[str]
) -> tuple[int, int]:
    """Make ``instruments`` the whole active master of ``exchanges``: upsert them and
    deactivate the active rows of those exchanges that they no longer list (expired
    contracts, delisted stocks; rows stay for history, orders and candles keep their
    references). One transaction: a failure changes nothing. Returns (upserted, deactivated)."""
    with conn.transaction():
        n = _copy_incoming(conn, instruments)
        conn.execute(_MERGE)
        gone = conn.execute(_DEACTIVATE, (sorted(set(exchanges)),)).rowcount
    return n, gone


_SELECT = """SELECT symbol, instrument_token, exchange_token, tradingsymbol, name, exchange, segment, instrument_type,
    tick_size, lot_size, last_price, expiry_date, strike_price, underlying, freeze_qty
FROM instruments WHERE is_active ORDER BY symbol"""


def load_instruments(conn: psycopg.Connection) -> list[Instrument]:
    """The active instrument master, as the flows use it."""
    out = []
    for row in conn.execute(_SELECT).fetchall():
        sym, tok, etok, ts, name, exch, seg, itype, tick, lot, last, expiry, strike, under, freeze = row
        out.append(
            Instrument(
                instrument=sym,
                instrument_token=int(tok or 0),
                exchange_token=int(etok or 0),
                tradingsymbol=ts,
                name=name or "",
                exchange=exch,
                segment=seg or "",
                instrument_type=InstrumentType(itype),
                tick_size=float(tick or 0.05),
                lot_size=int(lot or 1),
                last_price=float(last or 0.0),
                expiry=expiry.isoformat() if expiry else None,
                strike=float(strike) if strike is not None else None,
                underlying=under,
                freeze_qty=freeze,
            )
        )
    return out
