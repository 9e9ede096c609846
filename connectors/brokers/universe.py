"""A deterministic NSE-like instrument universe for the simulator.

NIFTY and BANKNIFTY indices, their near-month futures, a weekly NIFTY and a monthly
BANKNIFTY options chain around the money, and liquid stocks, up to ``size`` instruments.
Rows use the columns of Kite's instruments dump (``instrument_token = exchange_token << 8 |
segment``), so the same code paths handle the simulator and the real master.

>>> from datetime import date
>>> u = build_universe(date(2026, 11, 23), size=40)
>>> [i.instrument for i in u[:4]]
['NSE:NIFTY 50', 'NSE:NIFTY BANK', 'NFO:NIFTY26NOVFUT', 'NFO:BANKNIFTY26NOVFUT']
>>> len(u)
40
"""

from __future__ import annotations

import calendar
import csv
import io
from dataclasses import dataclass
from datetime import date, timedelta

from schemas.market import Instrument, InstrumentType

SEGMENT_CODES = {"NSE": 1, "NFO": 2, "INDICES": 9}
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_WEEKLY_MONTH = "123456789OND"  # Kite's one-letter month in weekly option symbols


@dataclass(frozen=True)
class Underlying:
    key: str
    name: str
    tradingsymbol: str
    price: float
    strike_step: int
    lot_size: int
    freeze_qty: int
    annual_vol: float


INDICES = (
    Underlying("NSE:NIFTY 50", "NIFTY", "NIFTY 50", 24_150.0, 50, 75, 1800, 0.13),
    Underlying("NSE:NIFTY BANK", "BANKNIFTY", "NIFTY BANK", 51_800.0, 100, 35, 900, 0.16),
)

# (symbol, reference price, annual volatility): liquid NSE names, prices of the right order.
STOCKS = (
    ("RELIANCE", 1285.0, 0.24),
    ("HDFCBANK", 1720.0, 0.20),
    ("ICICIBANK", 1290.0, 0.22),
    ("INFY", 1890.0, 0.25),
    ("TCS", 4150.0, 0.21),
    ("BHARTIARTL", 1610.0, 0.23),
    ("SBIN", 815.0, 0.27),
    ("ITC", 470.0, 0.19),
    ("LT", 3620.0, 0.24),
    ("HINDUNILVR", 2480.0, 0.18),
    ("KOTAKBANK", 1760.0, 0.22),
    ("AXISBANK", 1140.0, 0.25),
    ("BAJFINANCE", 6950.0, 0.30),
    ("MARUTI", 11200.0, 0.24),
    ("ASIANPAINT", 2460.0, 0.22),
    ("SUNPHARMA", 1810.0, 0.23),
    ("TITAN", 3320.0, 0.25),
    ("ULTRACEMCO", 11400.0, 0.23),
    ("NTPC", 365.0, 0.26),
    ("POWERGRID", 322.0, 0.24),
    ("TATAMOTORS", 780.0, 0.33),
    ("TATASTEEL", 148.0, 0.32),
    ("M&M", 2950.0, 0.28),
    ("WIPRO", 560.0, 0.26),
    ("HCLTECH", 1880.0, 0.24),
    ("ONGC", 262.0, 0.29),
    ("COALINDIA", 410.0, 0.28),
    ("ADANIENT", 2450.0, 0.40),
    ("ADANIPORTS", 1230.0, 0.35),
    ("JSWSTEEL", 960.0, 0.29),
    ("GRASIM", 2580.0, 0.24),
    ("TECHM", 1690.0, 0.27),
    ("HINDALCO", 640.0, 0.31),
    ("BAJAJFINSV", 1640.0, 0.26),
    ("NESTLEIND", 2240.0, 0.17),
    ("CIPLA", 1480.0, 0.22),
    ("DRREDDY", 1260.0, 0.23),
    ("EICHERMOT", 4890.0, 0.26),
    ("HEROMOTOCO", 4620.0, 0.25),
    ("BRITANNIA", 4960.0, 0.20),
    ("DIVISLAB", 5880.0, 0.26),
    ("APOLLOHOSP", 7050.0, 0.27),
    ("BPCL", 292.0, 0.30),
    ("INDUSINDBK", 980.0, 0.34),
    ("SBILIFE", 1450.0, 0.22),
    ("HDFCLIFE", 640.0, 0.23),
    ("TATACONSUM", 930.0, 0.24),
    ("SHRIRAMFIN", 3010.0, 0.31),
    ("TRENT", 6900.0, 0.35),
    ("BEL", 290.0, 0.32),
    ("DLF", 820.0, 0.33),
    ("IRCTC", 790.0, 0.28),
    ("ZOMATO", 245.0, 0.42),
    ("VEDL", 455.0, 0.35),
    ("PNB", 102.0, 0.34),
    ("BANKBARODA", 238.0, 0.32),
    ("CANBK", 101.0, 0.34),
    ("GAIL", 198.0, 0.29),
    ("IOC", 138.0, 0.29),
    ("HAL", 4350.0, 0.36),
)


def last_weekday_of_month(year: int, month: int, weekday: int) -> date:
    last = date(year, month, calendar.monthrange(year, month)[1])
    return last - timedelta(days=(last.weekday() - weekday) % 7)


def monthly_expiry(day: date) -> date:
    """NSE monthly F&O expiry: the last Tuesday of the month (rolled after it passes)."""
    exp = last_weekday_of_month(day.year, day.month, calendar.TUESDAY)
    if exp < day:
        y, m = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
        exp = last_weekday_of_month(y, m, calendar.TUESDAY)
    return exp


def weekly_expiry(day: date) -> date:
    """NIFTY weekly expiry: the next Tuesday on or after ``day``."""
    return day + timedelta(days=(calendar.TUESDAY - day.weekday()) % 7)


def _option_symbol(name: str, expiry: date, strike: int, kind: str, weekly: bool) -> str:
    yy = expiry.strftime("%y")
    if weekly and expiry != monthly_expiry(expiry):
        return f"{name}{yy}{_WEEKLY_MONTH[expiry.month - 1]}{expiry.day:02d}{strike}{kind}"
    return f"{name}{yy}{_MONTHS[expiry.month - 1]}{strike}{kind}"


class _Tokens:
    def __init__(self) -> None:
        self.next = {"NSE": 3000, "NFO": 40000, "INDICES": 256}

    def take(self, segment_key: str) -> tuple[int, int]:
        exchange_token = self.next[segment_key]
        self.next[segment_key] += 1
        return (exchange_token << 8) | SEGMENT_CODES[segment_key], exchange_token


def build_universe(day: date, size: int = 500) -> list[Instrument]:
    """The instrument master for trading day ``day`` (deterministic), ``size`` rows."""
    if size < 10:
        msg = f"universe size must be >= 10, got {size}"
        raise ValueError(msg)
    tok = _Tokens()
    out: list[Instrument] = []
    for u in INDICES:
        token, etok = tok.take("INDICES")
        out.append(
            Instrument(
                instrument=u.key,
                instrument_token=token,
                exchange_token=etok,
                tradingsymbol=u.tradingsymbol,
                name=u.name,
                exchange="NSE",
                segment="INDICES",
                instrument_type=InstrumentType.INDEX,
                tick_size=0.05,
                lot_size=0,
                last_price=u.price,
            )
        )
    mexp = monthly_expiry(day)
    for u in INDICES:
        sym = f"{u.name}{mexp.strftime('%y')}{_MONTHS[mexp.month - 1]}FUT"
        token, etok = tok.take("NFO")
        out.append(
            Instrument(
                instrument=f"NFO:{sym}",
                instrument_token=token,
                exchange_token=etok,
                tradingsymbol=sym,
                name=u.name,
                exchange="NFO",
                segment="NFO-FUT",
                instrument_type=InstrumentType.FUT,
                tick_size=0.05,
                lot_size=u.lot_size,
                expiry=mexp.isoformat(),
                underlying=u.key,
                freeze_qty=u.freeze_qty,
                last_price=u.price,
            )
        )
    remaining = size - len(out)
    n_stocks = min(len(STOCKS), max(remaining // 3, 1), remaining)
    for sym, price, _vol in STOCKS[:n_stocks]:
        token, etok = tok.take("NSE")
        out.append(
            Instrument(
                instrument=f"NSE:{sym}",
                instrument_token=token,
                exchange_token=etok,
                tradingsymbol=sym,
                name=sym,
                exchange="NSE",
                segment="NSE",
                instrument_type=InstrumentType.EQ,
                tick_size=0.05 if price > 250 else 0.01,
                lot_size=1,
                last_price=price,
            )
        )
    n_opts = size - len(out)
    # Strike pairs (CE+PE) alternate between the two chains, NIFTY first, nearest the money first.
    chains = [(INDICES[0], weekly_expiry(day), True), (INDICES[1], mexp, False)]
    made = 0
    ring = 0
    while made < n_opts:
        for u, exp, weekly in chains:
            atm = round(u.price / u.strike_step) * u.strike_step
            offset = (ring + 1) // 2 * (1 if ring % 2 else -1)  # 0, +1, -1, +2, -2, ...
            strike = atm + offset * u.strike_step
            for kind in ("CE", "PE"):
                if made >= n_opts:
                    break
                sym = _option_symbol(u.name, exp, strike, kind, weekly)
                token, etok = tok.take("NFO")
                out.append(
                    Instrument(
                        instrument=f"NFO:{sym}",
                        instrument_token=token,
                        exchange_token=etok,
                        tradingsymbol=sym,
                        name=u.name,
                        exchange="NFO",
                        segment="NFO-OPT",
                        instrument_type=InstrumentType(kind),
                        tick_size=0.05,
                        lot_size=u.lot_size,
                        expiry=exp.isoformat(),
                        strike=float(strike),
                        underlying=u.key,
                        freeze_qty=u.freeze_qty,
                    )
                )
                made += 1
        ring += 1
    return out


KITE_COLUMNS = (
    "instrument_token",
    "exchange_token",
    "tradingsymbol",
    "name",
    "last_price",
    "expiry",
    "strike",
    "tick_size",
    "lot_size",
    "instrument_type",
    "segment",
    "exchange",
)


def to_kite_csv(instruments: list[Instrument]) -> str:
    """The master in Kite's instruments-dump CSV format."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(KITE_COLUMNS)
    for i in instruments:
        kind = "EQ" if i.instrument_type is InstrumentType.INDEX else i.instrument_type.value
        w.writerow(
            [
                i.instrument_token,
                i.exchange_token,
                i.tradingsymbol,
                i.name,
                i.last_price,
                i.expiry or "",
                i.strike or 0,
                i.tick_size,
                i.lot_size,
                kind,
                i.segment,
                i.exchange,
            ]
        )
    return buf.getvalue()
