"""Historical market data for backtests: CSV, Parquet or PostgreSQL into time-ordered events.

Columns (a header row names them; order does not matter, extra columns are ignored):

* ticks: ``timestamp,instrument,price,quantity[,volume,oi,bid,ask]``
* candles: ``timestamp,instrument,open,high,low,close,volume[,oi]`` - ``timestamp`` is the bar's
  **open** time, bars are one ``timeframe`` long, on the NSE session grid (09:15 IST + k·tf).

``timestamp`` is ISO-8601 with a UTC offset (``2026-11-23T09:15:00+05:30``, ``...Z``) or epoch
time as an integer whose magnitude gives the unit (seconds < 10¹¹ ≤ ms < 10¹⁴ ≤ µs < 10¹⁷ ≤ ns).
A timestamp without an offset is refused: it could be IST or UTC. Parquet timestamp columns
must carry a time zone for the same reason (integer columns follow the epoch rule).

Every row is checked (prices finite and > 0, quantities whole and ≥ 0, a candle's high/low
containing its open and close, bars on the session grid and inside the session, cumulative
volume never falling within a day, no duplicate bar). A bad row stops the read with
:class:`HistoryError` naming the file, the line (the header is line 1; Parquet: row number
from 1) and the reason - or, with ``skip_bad``, is skipped and counted in the
:class:`ReadReport`, never dropped silently.

Events come back sorted by (event time, instrument, line). Ticks get a per-instrument ``seq``
in that order; a tick file without ``volume`` gets the running day sum of ``quantity``; without
``bid``/``ask`` both are the price.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from operators.candles import DAY_NS, IST_OFFSET_NS, parse_timeframe, session_bounds
from schemas.market import Candle, Tick

TICK_COLUMNS = ("timestamp", "instrument", "price", "quantity")
CANDLE_COLUMNS = ("timestamp", "instrument", "open", "high", "low", "close", "volume")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


class HistoryError(ValueError):
    """A row (or the file) cannot be used; says where and why."""

    def __init__(self, source: str, line: int, reason: str) -> None:
        self.source, self.line, self.reason = source, line, reason
        super().__init__(f"{source}:{line}: {reason}" if line else f"{source}: {reason}")


@dataclass
class ReadReport:
    """What a read kept and skipped (``skip_bad``): the first errors are kept for the summary."""

    rows: int = 0  # events returned
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    keep_errors: int = 20

    def skip(self, err: HistoryError) -> None:
        self.skipped += 1
        if len(self.errors) < self.keep_errors:
            self.errors.append(str(err))


@dataclass(frozen=True)
class Window:
    """Which rows to keep: instruments (empty = all) and event times in [start, end) ns."""

    instruments: frozenset[str] = frozenset()
    start: int | None = None
    end: int | None = None

    def keeps(self, instrument: str, ts: int) -> bool:
        if self.instruments and instrument not in self.instruments:
            return False
        return (self.start is None or ts >= self.start) and (self.end is None or ts < self.end)


def parse_timestamp(text: Any) -> int:
    """UTC epoch ns from ISO-8601 with an offset or an epoch integer (unit by magnitude).

    >>> parse_timestamp("2026-11-23T09:15:00+05:30"), parse_timestamp("1795405500000"), parse_timestamp("2026-11-23T03:45Z")
    (1795405500000000000, 1795405500000000000, 1795405500000000000)
    """
    if isinstance(text, int) or (isinstance(text, str) and text.strip().lstrip("-").isdigit()):
        n = int(text)
        if n < 0:
            msg = f"timestamp {text!r} is negative"
            raise ValueError(msg)
        scale = 10**9 if n < 10**11 else 10**6 if n < 10**14 else 10**3 if n < 10**17 else 1
        return n * scale
    if isinstance(text, datetime):
        dt = text
    else:
        s = str(text).strip()
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            msg = f"timestamp {s!r} is neither ISO-8601 nor an epoch integer"
            raise ValueError(msg) from None
    if dt.tzinfo is None or dt.utcoffset() is None:
        msg = f"timestamp {text!s} has no UTC offset (write +05:30 for IST or Z for UTC)"
        raise ValueError(msg)
    return (dt - _EPOCH) // _MICRO * 1000


def _price(row: dict[str, Any], name: str) -> float:
    raw = row.get(name)
    try:
        x = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        msg = f"{name}={raw!r} is not a number"
        raise ValueError(msg) from None
    if not math.isfinite(x) or x <= 0:
        msg = f"{name}={raw!r} must be finite and > 0"
        raise ValueError(msg)
    return x


def _count(row: dict[str, Any], name: str, default: int | None = None) -> int:
    raw = row.get(name)
    if raw is None or raw == "":
        if default is None:
            msg = f"{name} is missing"
            raise ValueError(msg)
        return default
    try:
        x = float(raw)
    except (TypeError, ValueError):
        msg = f"{name}={raw!r} is not a number"
        raise ValueError(msg) from None
    if not math.isfinite(x) or x != int(x) or x < 0:
        msg = f"{name}={raw!r} must be a whole number >= 0"
        raise ValueError(msg)
    return int(x)


def _instrument(row: dict[str, Any]) -> str:
    name = str(row.get("instrument") or "").strip()
    if ":" not in name:
        msg = f"instrument {name!r} must be EXCHANGE:SYMBOL (e.g. NSE:INFY)"
        raise ValueError(msg)
    return name


# ----------------------------------------------------------------------------- rows


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, row) pairs of a CSV (optionally .gz) or Parquet file, checking the header."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq")):
        yield from _parquet_rows(path, required)
        return
    if not name.endswith((".csv", ".csv.gz")):
        raise HistoryError(str(path), 0, "expected a .csv, .csv.gz or .parquet file")
    opener: Callable[..., Any] = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise HistoryError(str(path), 1, f"missing column(s) {', '.join(missing)}; header is {','.join(header)}")
        for line, values in enumerate(reader, start=2):
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            if len(values) != len(header):
                yield line, {"__error__": f"{len(values)} fields, header has {len(header)}"}
                continue
            yield line, dict(zip(header, values, strict=True))


def _parquet_rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise HistoryError(str(path), 0, f"not a readable Parquet file: {exc}") from None
    table = table.rename_columns([c.strip().lower() for c in table.column_names])
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise HistoryError(str(path), 0, f"missing column(s) {', '.join(missing)}; columns are {table.column_names}")
    ts_col = table.column("timestamp")
    if pa.types.is_timestamp(ts_col.type):
        if ts_col.type.tz is None:
            raise HistoryError(str(path), 0, "column timestamp has no time zone (store it tz-aware, e.g. UTC)")
        ns = ts_col.cast(pa.timestamp("ns", tz=ts_col.type.tz)).cast(pa.int64())
        table = table.set_column(table.column_names.index("timestamp"), "timestamp", ns)
    for batch in table.to_batches(max_chunksize=65_536):
        cols = batch.to_pydict()
        names = list(cols)
        base = 0
        for i, values in enumerate(zip(*cols.values(), strict=True)):
            yield base + i + 1, dict(zip(names, values, strict=True))
        base += batch.num_rows


# ----------------------------------------------------------------------------- ticks and candles


def _read(
    path: Path,
    required: Sequence[str],
    parse: Callable[[dict[str, Any]], tuple[str, int, Any]],
    window: Window,
    skip_bad: bool,
    report: ReadReport,
) -> list[tuple[int, str, int, Any]]:
    source = str(path)
    kept: list[tuple[int, str, int, Any]] = []
    for line, row in _rows(path, required):
        try:
            if "__error__" in row:
                raise ValueError(row["__error__"])
            instrument, ts, value = parse(row)
        except ValueError as exc:
            err = HistoryError(source, line, str(exc))
            if not skip_bad:
                raise err from None
            report.skip(err)
            continue
        if window.keeps(instrument, ts):
            kept.append((ts, instrument, line, value))
    kept.sort(key=lambda r: (r[0], r[1], r[2]))
    return kept


def _tick_row(row: dict[str, Any]) -> tuple[str, int, Any]:
    instrument, ts = _instrument(row), parse_timestamp(row.get("timestamp"))
    price, qty = _price(row, "price"), _count(row, "quantity")
    volume = _count(row, "volume", -1)
    oi = _count(row, "oi", 0)
    bid = _price(row, "bid") if row.get("bid") not in (None, "") else price
    ask = _price(row, "ask") if row.get("ask") not in (None, "") else price
    if bid > ask:
        msg = f"bid={bid} > ask={ask} (crossed book)"
        raise ValueError(msg)
    return instrument, ts, (price, qty, volume, oi, bid, ask)


def read_ticks(
    path: Path, window: Window = Window(), *, skip_bad: bool = False, report: ReadReport | None = None
) -> list[Tick]:
    """Every tick of ``path`` in ``window``, time-ordered, checked (see the module docstring)."""
    report = report if report is not None else ReadReport()
    rows = _read(path, TICK_COLUMNS, _tick_row, window, skip_bad, report)
    return _ticks(rows, str(path), skip_bad, report)


def _ticks(rows: Iterable[tuple[int, str, int, Any]], source: str, skip_bad: bool, report: ReadReport) -> list[Tick]:
    out: list[Tick] = []
    seq: dict[str, int] = {}
    day_volume: dict[str, tuple[int, int]] = {}  # instrument -> (IST day, cumulative volume)
    for ts, instrument, line, (price, qty, volume, oi, bid, ask) in rows:
        day = (ts + IST_OFFSET_NS) // DAY_NS
        prev_day, prev = day_volume.get(instrument, (day, 0))
        if prev_day != day:
            prev = 0
        if volume < 0:  # no volume column: the running day sum of quantities
            volume = prev + qty  # noqa: PLW2901
        elif volume < prev:
            err = HistoryError(source, line, f"cumulative volume {volume} < {prev} earlier that day for {instrument}")
            if not skip_bad:
                raise err
            report.skip(err)
            continue
        day_volume[instrument] = (day, volume)
        n = seq[instrument] = seq.get(instrument, 0) + 1
        out.append(
            Tick(
                instrument=instrument,
                ts_event=ts,
                ts_init=ts,
                seq=n,
                ltp=price,
                last_qty=qty,
                volume=volume,
                oi=oi,
                bid=bid,
                ask=ask,
                bid_qty=0,
                ask_qty=0,
            )
        )
    report.rows += len(out)
    return out


def _candle_parser(timeframe: str) -> Callable[[dict[str, Any]], tuple[str, int, Any]]:
    tf = parse_timeframe(timeframe)

    def parse(row: dict[str, Any]) -> tuple[str, int, Any]:
        instrument, ts = _instrument(row), parse_timestamp(row.get("timestamp"))
        o, h, lo, c = (_price(row, k) for k in ("open", "high", "low", "close"))
        if not (lo <= min(o, c) and h >= max(o, c)):
            msg = f"high={h} low={lo} do not contain open={o} close={c}"
            raise ValueError(msg)
        volume, oi = _count(row, "volume"), _count(row, "oi", 0)
        s_open, s_close = session_bounds(ts)
        if not s_open <= ts < s_close:
            msg = f"bar opens at {_ist(ts)}, outside the 09:15-15:30 IST session"
            raise ValueError(msg)
        if not tf.daily and (ts - s_open) % tf.ns:
            msg = f"bar open {_ist(ts)} is not on the {timeframe} grid from 09:15 IST (is the timestamp the bar's open?)"
            raise ValueError(msg)
        if tf.daily and ts != s_open:
            msg = f"a daily bar must open at 09:15 IST, not {_ist(ts)}"
            raise ValueError(msg)
        close_at = s_close if tf.daily else min(ts + tf.ns, s_close)
        return instrument, ts, (close_at, o, h, lo, c, volume, oi)

    return parse


def read_candles(
    path: Path,
    timeframe: str,
    window: Window = Window(),
    *,
    skip_bad: bool = False,
    report: ReadReport | None = None,
) -> list[Candle]:
    """Every ``timeframe`` bar of ``path`` whose open time is in ``window``, time-ordered."""
    report = report if report is not None else ReadReport()
    rows = _read(path, CANDLE_COLUMNS, _candle_parser(timeframe), window, skip_bad, report)
    return _candles(rows, timeframe, str(path), skip_bad, report)


def _candles(
    rows: Iterable[tuple[int, str, int, Any]], timeframe: str, source: str, skip_bad: bool, report: ReadReport
) -> list[Candle]:
    out: list[Candle] = []
    last: dict[str, tuple[int, int]] = {}  # instrument -> (open time, line) of the previous bar
    for ts, instrument, line, (close_at, o, h, lo, c, volume, oi) in rows:
        prev = last.get(instrument)
        if prev is not None and prev[0] == ts:
            err = HistoryError(
                source, line, f"duplicate {timeframe} bar of {instrument} at {_ist(ts)} (also line {prev[1]})"
            )
            if not skip_bad:
                raise err
            report.skip(err)
            continue
        last[instrument] = (ts, line)
        out.append(
            Candle(
                instrument=instrument,
                timeframe=timeframe,
                open_time=ts,
                ts_event=close_at,
                ts_init=close_at,
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=volume,
                trade_count=1,
                vwap=(h + lo + c) / 3,
                oi=oi,
                final=True,
            )
        )
    report.rows += len(out)
    return out


def _ist(ts: int) -> str:
    return f"{datetime.fromtimestamp((ts + IST_OFFSET_NS) // 10**9, tz=UTC):%Y-%m-%d %H:%M:%S} IST"


# ----------------------------------------------------------------------------- PostgreSQL


def db_ticks(conn: Any, window: Window) -> list[Tick]:
    """Ticks from ``tick_data`` in ``window`` (instrument filter and time range in SQL)."""
    rows = conn.execute(
        """SELECT t.time, i.symbol, t.seq, t.price, t.quantity, t.volume, t.oi, t.bid, t.ask, t.bid_qty, t.ask_qty
           FROM tick_data t JOIN instruments i ON i.id = t.instrument_id
           WHERE (%(all)s OR i.symbol = ANY(%(syms)s))
             AND (%(start)s::bigint IS NULL OR t.time >= to_timestamp(%(start)s::bigint / 1e9))
             AND (%(end)s::bigint IS NULL OR t.time < to_timestamp(%(end)s::bigint / 1e9))
           ORDER BY t.time, i.symbol, t.seq""",
        {"all": not window.instruments, "syms": sorted(window.instruments), "start": window.start, "end": window.end},
    )
    out = []
    for t, sym, seq, px, qty, vol, oi, bid, ask, bq, aq in rows:
        ts = _ns(t)
        price = float(px)
        out.append(
            Tick(
                instrument=sym,
                ts_event=ts,
                ts_init=ts,
                seq=int(seq),
                ltp=price,
                last_qty=int(qty),
                volume=int(vol),
                oi=int(oi or 0),
                bid=float(bid or price),
                ask=float(ask or price),
                bid_qty=int(bq or 0),
                ask_qty=int(aq or 0),
            )
        )
    return out


def db_candles(conn: Any, timeframe: str, window: Window) -> list[Candle]:
    """Closed ``timeframe`` candles from ``ohlc_candles`` whose open time is in ``window``."""
    parse_timeframe(timeframe)  # a bad timeframe fails before the query
    rows = conn.execute(
        """SELECT c.time, i.symbol, c.open_price, c.high_price, c.low_price, c.close_price, c.volume,
                  c.trade_count, c.vwap, c.oi
           FROM ohlc_candles c JOIN instruments i ON i.id = c.instrument_id
           WHERE c.timeframe = %(tf)s AND (%(all)s OR i.symbol = ANY(%(syms)s))
             AND (%(start)s::bigint IS NULL OR c.time >= to_timestamp(%(start)s::bigint / 1e9))
             AND (%(end)s::bigint IS NULL OR c.time < to_timestamp(%(end)s::bigint / 1e9))
           ORDER BY c.time, i.symbol""",
        {
            "tf": timeframe,
            "all": not window.instruments,
            "syms": sorted(window.instruments),
            "start": window.start,
            "end": window.end,
        },
    )
    return [stored_candle(sym, timeframe, t, o, h, lo, c, v, n, vwap, oi) for t, sym, o, h, lo, c, v, n, vwap, oi in rows]


def stored_candle(
    instrument: str, timeframe: str, t: datetime, o: Any, h: Any, lo: Any, c: Any, v: Any, n: Any, vwap: Any, oi: Any
) -> Candle:
    """A closed candle from an ``ohlc_candles`` row (``t`` is the bar's open; it closes one
    timeframe later, or at the session close)."""
    tf = parse_timeframe(timeframe)
    ts = _ns(t)
    s_open, s_close = session_bounds(ts)
    close_at = ts + tf.ns
    if s_open <= ts < s_close:  # a bar of the session ends with it at the latest
        close_at = s_close if tf.daily else min(close_at, s_close)
    return Candle(
        instrument=instrument,
        timeframe=timeframe,
        open_time=ts,
        ts_event=close_at,
        ts_init=close_at,
        open=float(o),
        high=float(h),
        low=float(lo),
        close=float(c),
        volume=int(v or 0),
        trade_count=int(n or 0),
        vwap=float(vwap or c),
        oi=int(oi or 0),
        final=True,
    )


def _ns(t: datetime) -> int:
    return (t - _EPOCH) // _MICRO * 1000
