"""Backtest input files: every bad row stops the read naming file, line and reason, or is skipped
and counted; good rows come back time-ordered with sequence numbers and day volumes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.history import HistoryError, ReadReport, Window, parse_timestamp, read_candles, read_ticks

T0 = parse_timestamp("2026-11-23T09:15:00+05:30")
MIN = 60 * 10**9
TICK_HEADER = "timestamp,instrument,price,quantity,volume,oi,bid,ask\n"
BAR_HEADER = "timestamp,instrument,open,high,low,close,volume\n"


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2026-11-23T09:15:01+05:30,NSE:INFY,-5,1,10,0,,", "price='-5' must be finite and > 0"),
        ("2026-11-23T09:15:01+05:30,NSE:INFY,nan,1,10,0,,", "price='nan' must be finite and > 0"),
        ("2026-11-23T09:15:01+05:30,NSE:INFY,abc,1,10,0,,", "price='abc' is not a number"),
        ("2026-11-23T09:15:01+05:30,NSE:INFY,100,1.5,10,0,,", "quantity='1.5' must be a whole number >= 0"),
        ("2026-11-23T09:15:01+05:30,NSE:INFY,100,-1,10,0,,", "quantity='-1' must be a whole number >= 0"),
        ("2026-11-23T09:15:01,NSE:INFY,100,1,10,0,,", "has no UTC offset"),
        ("yesterday,NSE:INFY,100,1,10,0,,", "neither ISO-8601 nor an epoch integer"),
        ("2026-11-23T09:15:01+05:30,INFY,100,1,10,0,,", "must be EXCHANGE:SYMBOL"),
        ("2026-11-23T09:15:01+05:30,NSE:INFY,100,1,10,0,101,100.5", "crossed book"),
        ("2026-11-23T09:15:01+05:30,NSE:INFY,100,1", "4 fields, header has 8"),
    ],
)
def test_a_bad_tick_row_names_file_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    good = "2026-11-23T09:15:00+05:30,NSE:INFY,100,1,5,0,99.95,100.05\n"
    path = _write(tmp_path, "ticks.csv", TICK_HEADER + good + row + "\n")
    with pytest.raises(HistoryError) as err:
        read_ticks(path)
    assert err.value.line == 3 and err.value.source == str(path)
    assert reason in str(err.value) and str(err.value).startswith(f"{path}:3: ")
    report = ReadReport()
    assert len(read_ticks(path, skip_bad=True, report=report)) == 1
    assert report.skipped == 1 and reason in report.errors[0]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "ticks.csv", "time,instrument,price\n1,NSE:A,1\n")
    with pytest.raises(HistoryError, match=r"ticks.csv:1: missing column\(s\) timestamp, quantity"):
        read_ticks(path)
    with pytest.raises(HistoryError, match=r"expected a \.csv, \.csv\.gz or \.parquet file"):
        read_ticks(_write(tmp_path, "ticks.txt", "x"))


def test_ticks_come_back_time_ordered_with_seq_and_day_volume(tmp_path: Path) -> None:
    rows = [
        f"{T0 + 2 * 10**9},NSE:B,50,3,,,,",
        f"{(T0 + 10**9) // 10**6},NSE:A,100,2,,,,",  # epoch ms
        f"{T0},NSE:A,99.5,1,,,,",
        f"{T0 + 3 * 10**9},NSE:A,100.5,4,,,,",
    ]
    ticks = read_ticks(_write(tmp_path, "t.csv", TICK_HEADER + "\n".join(rows) + "\n"))
    assert [(t.instrument, t.ts_event - T0, t.seq, t.volume, t.bid) for t in ticks] == [
        ("NSE:A", 0, 1, 1, 99.5),
        ("NSE:A", 10**9, 2, 3, 100.0),
        ("NSE:B", 2 * 10**9, 1, 3, 50.0),
        ("NSE:A", 3 * 10**9, 3, 7, 100.5),
    ]
    window = Window(frozenset({"NSE:A"}), T0 + 1, T0 + 3 * 10**9)
    assert [t.ts_event - T0 for t in read_ticks(tmp_path / "t.csv", window)] == [10**9]


def test_volume_falling_within_a_day_is_refused(tmp_path: Path) -> None:
    rows = [f"{T0},NSE:A,100,1,50,0,,", f"{T0 + 10**9},NSE:A,100,1,40,0,,"]
    with pytest.raises(HistoryError, match=r"t.csv:3: cumulative volume 40 < 50"):
        read_ticks(_write(tmp_path, "t.csv", TICK_HEADER + "\n".join(rows) + "\n"))


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("2026-11-23T09:16:00+05:30,NSE:A,10,9,9.5,10,5", "high=9.0 low=9.5 do not contain open=10.0 close=10.0"),
        ("2026-11-23T09:16:30+05:30,NSE:A,10,11,9,10,5", "is not on the 1m grid from 09:15 IST"),
        ("2026-11-23T08:00:00+05:30,NSE:A,10,11,9,10,5", "outside the 09:15-15:30 IST session"),
        (
            "2026-11-23T09:15:00+05:30,NSE:A,10,11,9,10,5",
            "duplicate 1m bar of NSE:A at 2026-11-23 09:15:00 IST (also line 2",
        ),
        ("2026-11-23T09:16:00+05:30,NSE:A,10,11,9,10,-5", "volume='-5' must be a whole number >= 0"),
    ],
)
def test_a_bad_candle_row_names_file_line_and_reason(tmp_path: Path, row: str, reason: str) -> None:
    good = "2026-11-23T09:15:00+05:30,NSE:A,10,11,9,10.5,100\n"
    path = _write(tmp_path, "bars.csv", BAR_HEADER + good + row + "\n")
    with pytest.raises(HistoryError) as err:
        read_candles(path, "1m")
    assert err.value.line == 3 and reason in str(err.value)
    report = ReadReport()
    assert len(read_candles(path, "1m", skip_bad=True, report=report)) == 1 and report.skipped == 1


def test_candles_close_one_timeframe_after_their_open(tmp_path: Path) -> None:
    path = _write(tmp_path, "bars.csv", BAR_HEADER + "2026-11-23T09:20:00+05:30,NSE:A,10,11,9,10.5,100\n")
    (c,) = read_candles(path, "5m")
    assert (c.open_time - T0, c.ts_event - c.open_time, c.final, c.timeframe) == (5 * MIN, 5 * MIN, True, "5m")


def test_parquet_input_with_zone_aware_and_epoch_timestamps(tmp_path: Path) -> None:
    ts = [datetime(2026, 11, 23, 3, 45, tzinfo=UTC), datetime(2026, 11, 23, 3, 46, tzinfo=UTC)]
    table = pa.table({
        "timestamp": pa.array(ts, pa.timestamp("ms", tz="UTC")), "instrument": ["NSE:A", "NSE:A"],
        "open": [10.0, 10.5], "high": [11.0, 11.0], "low": [9.0, 10.0], "close": [10.5, 10.8], "volume": [100, 120],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "bars.parquet")
    bars = read_candles(tmp_path / "bars.parquet", "1m")
    assert [(b.open_time - T0, b.close) for b in bars] == [(0, 10.5), (MIN, 10.8)]
    naive = table.set_column(0, "timestamp", pa.array([t.replace(tzinfo=None) for t in ts], pa.timestamp("ms")))
    pq.write_table(naive, tmp_path / "naive.parquet")
    with pytest.raises(HistoryError, match=r"naive\.parquet: column timestamp has no time zone"):
        read_candles(tmp_path / "naive.parquet", "1m")
    bad = table.set_column(5, "close", pa.array([10.5, -1.0]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(HistoryError, match=r"bad.parquet:2: close=-1.0 must be finite and > 0"):
        read_candles(tmp_path / "bad.parquet", "1m")
