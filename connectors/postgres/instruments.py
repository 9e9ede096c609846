"""The instrument master in PostgreSQL (upsert by canonical symbol)."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from schemas.market import Instrument

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
