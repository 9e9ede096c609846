"""The instrument master from Kite's instruments dump (CSV), checked row by row.

Kite regenerates the dump every morning (``GET https://api.kite.trade/instruments``, about
100k rows across NSE, BSE, NFO, BFO, CDS, MCX, ...). :func:`parse_kite_master` turns it into
:class:`~schemas.market.Instrument` rows under the canonical key ``EXCHANGE:TRADINGSYMBOL``:

- index rows (``segment`` INDICES, which Kite lists as ``instrument_type`` EQ) become INDEX;
- a derivative's ``underlying`` is the canonical key of what it derives from: Kite only gives
  the name (``NIFTY``, ``INFY``), so index names are mapped to their index rows (``NIFTY`` ->
  ``NSE:NIFTY 50``) and a stock name to the cash-market row of its exchange (``NFO`` ->
  ``NSE:INFY``) when the dump has it;
- ``freeze_qty`` is not in the dump (the exchanges publish it separately), so it is left
  empty and the database keeps the value it had.

Nothing is dropped silently. A malformed row (a missing field, a number that is not one, a
date that is not ISO, an unknown instrument type, a duplicate key) stops the parse with
:class:`MasterError` naming the line, the column and the value, before anything is written.
Rows outside the asked ``exchanges`` are counted per exchange in :attr:`KiteMaster.skipped`.

>>> rows = [",".join(KITE_COLUMNS),
...         "256265,1001,NIFTY 50,NIFTY 50,0,,0,0.0,0,EQ,INDICES,NSE",
...         "12345602,48225,NIFTY26NOVFUT,NIFTY,0,2026-11-24,0,0.1,75,FUT,NFO-FUT,NFO"]
>>> m = parse_kite_master(rows)
>>> [(i.instrument, i.instrument_type.value, i.underlying) for i in m.instruments]
[('NSE:NIFTY 50', 'INDEX', None), ('NFO:NIFTY26NOVFUT', 'FUT', 'NSE:NIFTY 50')]
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from datetime import date

import msgspec

from connectors.brokers.universe import KITE_COLUMNS
from schemas.market import Instrument, InstrumentType

KITE_INSTRUMENTS_URL = "https://api.kite.trade/instruments"

# Derivative names of indices -> the index row's canonical key (Kite lists index options and
# futures under a short name that is not the index's tradingsymbol).
INDEX_UNDERLYINGS = {
    "NIFTY": "NSE:NIFTY 50",
    "BANKNIFTY": "NSE:NIFTY BANK",
    "FINNIFTY": "NSE:NIFTY FIN SERVICE",
    "MIDCPNIFTY": "NSE:NIFTY MID SELECT",
    "NIFTYNXT50": "NSE:NIFTY NEXT 50",
    "SENSEX": "BSE:SENSEX",
    "BANKEX": "BSE:BANKEX",
    "SENSEX50": "BSE:SNSX50",
}
# A derivatives exchange -> the cash exchange its stock underlyings trade on.
CASH_EXCHANGE = {"NFO": "NSE", "BFO": "BSE"}
_DERIVATIVES = {InstrumentType.FUT, InstrumentType.CE, InstrumentType.PE}
# Column widths of the instruments table (connectors/postgres/migrations/0001_core.sql).
_WIDTHS = {"tradingsymbol": 50, "name": 100, "exchange": 20, "segment": 20}
_KEY_WIDTH = 64


class MasterError(ValueError):
    """A row of the dump that cannot be loaded; nothing of the dump was written."""

    def __init__(self, line: int, column: str, value: str, reason: str) -> None:
        self.line, self.column, self.value, self.reason = line, column, value, reason
        super().__init__(f"line {line}, column {column} = {value[:60]!r}: {reason}")


@dataclass
class KiteMaster:
    instruments: list[Instrument]
    rows: int  # data rows read (loaded + skipped)
    skipped: Counter[str] = field(default_factory=Counter)  # exchange -> rows outside the asked exchanges

    @property
    def exchanges(self) -> set[str]:
        return {i.exchange for i in self.instruments}


def _int(line: int, column: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MasterError(line, column, value, "not an integer") from None


def _float(line: int, column: str, value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise MasterError(line, column, value, "not a number") from None
    if not math.isfinite(x) or x < 0:
        raise MasterError(line, column, value, "not a finite number >= 0")
    return x


def _text(line: int, column: str, value: str) -> str:
    value = value.strip()
    if len(value) > _WIDTHS[column]:
        raise MasterError(line, column, value, f"longer than {_WIDTHS[column]} characters")
    return value


def parse_kite_master(lines: Iterable[str], exchanges: Collection[str] = ()) -> KiteMaster:
    """The instruments of a Kite instruments dump (its lines, header first); only those of
    ``exchanges`` when given (the others are counted in ``skipped``)."""
    reader = csv.reader(iter(lines))
    header = next(reader, None)
    if header is None:
        raise MasterError(1, "(header)", "", "the file is empty")
    header = [h.strip() for h in header]
    if missing := [c for c in KITE_COLUMNS if c not in header]:
        raise MasterError(1, "(header)", ",".join(header), f"missing column(s) {', '.join(missing)}")
    pos = {c: header.index(c) for c in KITE_COLUMNS}
    wanted = {e.upper() for e in exchanges}
    out: list[Instrument] = []
    seen: dict[str, int] = {}
    skipped: Counter[str] = Counter()
    derivatives: list[tuple[int, str, str]] = []  # (position in out, name, exchange): underlyings resolved at the end
    rows = 0
    for line, row in enumerate(reader, start=2):
        if not row or row == [""]:
            continue  # a blank line (the dump ends with one)
        rows += 1
        if len(row) != len(header):
            raise MasterError(line, "(row)", ",".join(row), f"{len(row)} fields, the header has {len(header)}")
        col = {c: row[p] for c, p in pos.items()}
        exchange = _text(line, "exchange", col["exchange"]).upper()
        if not exchange:
            raise MasterError(line, "exchange", col["exchange"], "empty")
        if wanted and exchange not in wanted:
            skipped[exchange] += 1
            continue
        tradingsymbol = _text(line, "tradingsymbol", col["tradingsymbol"])
        if not tradingsymbol:
            raise MasterError(line, "tradingsymbol", col["tradingsymbol"], "empty")
        key = f"{exchange}:{tradingsymbol}"
        if len(key) > _KEY_WIDTH:
            raise MasterError(line, "tradingsymbol", tradingsymbol, f"the key {key!r} is longer than {_KEY_WIDTH}")
        if key in seen:
            raise MasterError(line, "tradingsymbol", tradingsymbol, f"{key} is already on line {seen[key]}")
        seen[key] = line
        segment = _text(line, "segment", col["segment"])
        raw_type = col["instrument_type"].strip().upper()
        if segment == "INDICES":
            kind = InstrumentType.INDEX
        else:
            try:
                kind = InstrumentType(raw_type)
            except ValueError:
                raise MasterError(line, "instrument_type", raw_type, "not one of EQ, FUT, CE, PE") from None
            if kind is InstrumentType.INDEX:
                raise MasterError(line, "instrument_type", raw_type, "INDEX outside the INDICES segment")
        expiry = col["expiry"].strip() or None
        if expiry is not None:
            try:
                date.fromisoformat(expiry)
            except ValueError:
                raise MasterError(line, "expiry", expiry, "not a YYYY-MM-DD date") from None
        if kind in _DERIVATIVES and expiry is None:
            raise MasterError(line, "expiry", "", f"a {kind.value} needs an expiry")
        strike = _float(line, "strike", col["strike"] or "0")
        if kind in (InstrumentType.CE, InstrumentType.PE) and strike <= 0:
            raise MasterError(line, "strike", col["strike"], "an option needs a strike > 0")
        name = _text(line, "name", col["name"])
        out.append(
            Instrument(
                instrument=key,
                instrument_token=_int(line, "instrument_token", col["instrument_token"]),
                exchange_token=_int(line, "exchange_token", col["exchange_token"]),
                tradingsymbol=tradingsymbol,
                name=name,
                exchange=exchange,
                segment=segment,
                instrument_type=kind,
                tick_size=_float(line, "tick_size", col["tick_size"] or "0"),
                lot_size=_int(line, "lot_size", col["lot_size"] or "0"),
                last_price=_float(line, "last_price", col["last_price"] or "0"),
                expiry=expiry,
                strike=strike if kind in (InstrumentType.CE, InstrumentType.PE) else None,
            )
        )
        if kind in _DERIVATIVES:
            derivatives.append((len(out) - 1, name, exchange))
    for k, name, exchange in derivatives:
        underlying = INDEX_UNDERLYINGS.get(name)
        if underlying is None and (stock := f"{CASH_EXCHANGE.get(exchange, exchange)}:{name}") in seen:
            underlying = stock
        if underlying is not None:
            out[k] = msgspec.structs.replace(out[k], underlying=underlying)
    return KiteMaster(out, rows, skipped)
