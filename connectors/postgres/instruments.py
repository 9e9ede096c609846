"""The instrument master in PostgreSQL (upsert by canonical symbol)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from schemas.market import Instrument, InstrumentType

_UPSERT = """INSERT INTO instruments (symbol, instrument_token, exchange_token, tradingsymbol, name, exchange,
    segment, instrument_type, tick_size, lot_size, expiry_date, strike_price, underlying, freeze_qty, last_price,
    is_active, updated_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, TRUE, NOW())
ON CONFLICT (symbol) DO UPDATE SET instrument_token = EXCLUDED.instrument_token,
    exchange_token = EXCLUDED.exchange_token, name = EXCLUDED.name, segment = EXCLUDED.segment,
    instrument_type = EXCLUDED.instrument_type, tick_size = EXCLUDED.tick_size, lot_size = EXCLUDED.lot_size,
    expiry_date = EXCLUDED.expiry_date, strike_price = EXCLUDED.strike_price, underlying = EXCLUDED.underlying,
    freeze_qty = EXCLUDED.freeze_qty, is_active = TRUE, updated_at = NOW()"""


def upsert_instruments(conn: psycopg.Connection, instruments: Iterable[Instrument]) -> int:
    rows = [
        (
            i.instrument,
            i.instrument_token,
            i.exchange_token,
            i.tradingsymbol,
            i.name,
            i.exchange,
            i.segment,
            i.instrument_type.value,
            i.tick_size,
            i.lot_size,
            i.expiry,
            i.strike,
            i.underlying,
            i.freeze_qty,
            i.last_price,
        )
        for i in instruments
    ]
    with conn.transaction():
        conn.cursor().executemany(_UPSERT, rows)
    return len(rows)


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
