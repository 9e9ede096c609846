"""The instrument master refresh: Kite's dump parsed row by row, loaded into PostgreSQL in one
transaction, and the ``ticktape instruments`` CLI over a file, a URL and the simulator."""

from __future__ import annotations

import gzip
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import msgspec
import psycopg
import pytest

from connectors.brokers.master import MasterError, parse_kite_master
from connectors.brokers.universe import KITE_COLUMNS, build_universe, to_kite_csv
from connectors.kafka import KafkaClientConfig
from connectors.postgres.instruments import load_instruments, refresh_instruments, upsert_instruments
from schemas.market import Instrument, InstrumentType

HEADER = ",".join(KITE_COLUMNS)
# Rows in the shape of Kite's dump (index rows are EQ in the INDICES segment; derivatives
# name their underlying by its short name).
DUMP = [
    HEADER,
    "256265,1001,NIFTY 50,NIFTY 50,0,,0,0,0,EQ,INDICES,NSE",
    "265,1,SENSEX,SENSEX,0,,0,0,0,EQ,INDICES,BSE",
    "408065,1594,INFY,INFOSYS,0,,0,0.1,1,EQ,NSE,NSE",
    '13368834,52222,INFY26DECFUT,"INFY",0,2026-12-29,0,0.1,400,FUT,NFO-FUT,NFO',
    '10606850,41433,NIFTY26D0324200CE,"NIFTY",0,2026-12-03,24200,0.05,75,CE,NFO-OPT,NFO',
    '10607106,41434,NIFTY26D0324200PE,"NIFTY",0,2026-12-03,24200,0.05,75,PE,NFO-OPT,NFO',
    '281632261,1100907,SENSEX26D0485000CE,"SENSEX",0,2026-12-04,85000,0.05,20,CE,BFO-OPT,BFO',
    '112345863,438851,CRUDEOIL26DECFUT,"CRUDEOIL",0,2026-12-18,0,1,100,FUT,MCX-FUT,MCX',
    "",
]


def by_key(instruments: list[Instrument]) -> dict[str, Instrument]:
    return {i.instrument: i for i in instruments}


def test_the_simulator_master_round_trips_through_kites_format() -> None:
    for day, size in ((date(2026, 11, 23), 500), (date(2026, 12, 31), 60), (date(2027, 2, 1), 10)):
        universe = build_universe(day, size)
        parsed = parse_kite_master(to_kite_csv(universe).splitlines())
        # Everything but the freeze quantity, which Kite's dump does not carry.
        assert parsed.instruments == [msgspec.structs.replace(i, freeze_qty=None) for i in universe]
        assert parsed.rows == size and not parsed.skipped


def test_kite_rows_map_to_canonical_instruments() -> None:
    m = by_key(parse_kite_master(DUMP).instruments)
    assert m["NSE:NIFTY 50"].instrument_type is InstrumentType.INDEX
    assert m["BSE:SENSEX"].instrument_type is InstrumentType.INDEX
    assert m["NSE:INFY"].instrument_type is InstrumentType.EQ and m["NSE:INFY"].underlying is None
    fut = m["NFO:INFY26DECFUT"]
    assert (fut.instrument_type, fut.underlying, fut.lot_size, fut.expiry, fut.strike) == (
        InstrumentType.FUT, "NSE:INFY", 400, "2026-12-29", None)  # fmt: skip
    ce = m["NFO:NIFTY26D0324200CE"]
    assert (ce.instrument_type, ce.underlying, ce.strike, ce.instrument_token) == (
        InstrumentType.CE, "NSE:NIFTY 50", 24200.0, 10606850)  # fmt: skip
    assert m["BFO:SENSEX26D0485000CE"].underlying == "BSE:SENSEX"
    # No MCX:CRUDEOIL row in the dump: the underlying stays unknown rather than invented.
    assert m["MCX:CRUDEOIL26DECFUT"].underlying is None
    assert all(i.freeze_qty is None for i in m.values())


def test_an_exchange_filter_counts_what_it_leaves_out() -> None:
    m = parse_kite_master(DUMP, exchanges=["nse", "NFO"])
    assert sorted(m.exchanges) == ["NFO", "NSE"]
    assert len(m.instruments) == 5 and m.rows == 8
    assert m.skipped == {"BSE": 1, "BFO": 1, "MCX": 1}
    # The stock future still finds its NSE underlying; the index option its index.
    assert by_key(m.instruments)["NFO:INFY26DECFUT"].underlying == "NSE:INFY"


@pytest.mark.parametrize(
    ("line", "column", "reason"),
    [
        ("x,1001,NIFTY NEXT 50,NIFTY NEXT 50,0,,0,0,0,EQ,INDICES,NSE", "instrument_token", "not an integer"),
        ('1,2,TCS26DECFUT,"TCS",0,29-12-2026,0,0.1,400,FUT,NFO-FUT,NFO', "expiry", "not a YYYY-MM-DD date"),
        ('1,2,TCS26DECFUT,"TCS",0,,0,0.1,400,FUT,NFO-FUT,NFO', "expiry", "a FUT needs an expiry"),
        ('1,2,NIFTY26D03CE,"NIFTY",0,2026-12-03,0,0.05,75,CE,NFO-OPT,NFO', "strike", "an option needs a strike > 0"),
        ("1,2,TCS,TCS,0,,0,nan,1,EQ,NSE,NSE", "tick_size", "not a finite number >= 0"),
        ("1,2,TCS,TCS,0,,0,0.1,1.5,EQ,NSE,NSE", "lot_size", "not an integer"),
        ("1,2,TCS,TCS,0,,0,0.1,1,ETF,NSE,NSE", "instrument_type", "not one of EQ, FUT, CE, PE"),
        ("1,2,TCS,TCS,0,,0,0.1,1,INDEX,NSE,NSE", "instrument_type", "INDEX outside the INDICES segment"),
        ("1,2,TCS,TCS,0,,0,0.1,1,EQ,NSE", "(row)", "11 fields, the header has 12"),
        ("1,2,,INFOSYS,0,,0,0.1,1,EQ,NSE,NSE", "tradingsymbol", "empty"),
        (f"1,2,TCS,{'T' * 101},0,,0,0.1,1,EQ,NSE,NSE", "name", "longer than 100 characters"),
        ("408065,1594,INFY,INFOSYS,0,,0,0.1,1,EQ,NSE,NSE", "tradingsymbol", "NSE:INFY is already on line 4"),
    ],
)
def test_a_malformed_row_stops_the_parse_naming_line_and_column(line: str, column: str, reason: str) -> None:
    rows = [*DUMP[:-1], line]
    with pytest.raises(MasterError) as err:
        parse_kite_master(rows)
    assert (err.value.line, err.value.column) == (len(rows), column)
    assert reason in str(err.value) and f"line {len(rows)}" in str(err.value)


def test_a_file_that_is_not_a_kite_dump_is_refused_at_its_header() -> None:
    with pytest.raises(MasterError, match="the file is empty"):
        parse_kite_master([])
    with pytest.raises(MasterError, match="missing column\\(s\\) lot_size, segment"):
        parse_kite_master(["instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
                           "instrument_type,exchange"])  # fmt: skip


# ----------------------------------------------------------------------------- PostgreSQL


def _active(url: str) -> dict[str, tuple[bool, int | None]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT symbol, is_active, freeze_qty FROM instruments").fetchall()
    return {s: (a, f) for s, a, f in rows}


def test_a_refresh_replaces_the_master_of_its_exchanges_and_keeps_freeze_quantities(database_url: str) -> None:
    old = build_universe(date(2026, 11, 23), 100)  # freeze quantities set
    # The next master lists fewer strikes (the outer ones went away) and has no freeze quantities.
    new = parse_kite_master(to_kite_csv(build_universe(date(2026, 11, 23), 80)).splitlines()).instruments
    bse = Instrument(instrument="BSE:SENSEX", instrument_token=265, exchange_token=1, tradingsymbol="SENSEX",
                     name="SENSEX", exchange="BSE", segment="INDICES", instrument_type=InstrumentType.INDEX,
                     tick_size=0.0, lot_size=0)  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, [*old, bse])
        n, gone = refresh_instruments(conn, new, ["NSE", "NFO"])
    state = _active(database_url)
    expired = {i.instrument for i in old} - {i.instrument for i in new}
    assert n == 80 and gone == len(expired) > 0
    assert all(not state[k][0] for k in expired)
    assert all(state[i.instrument][0] for i in new)
    assert state["BSE:SENSEX"][0]  # an exchange the refresh did not cover is left alone
    # A contract in both masters keeps the freeze quantity the dump does not carry.
    kept = next(i for i in old if i.freeze_qty and i.instrument not in expired)
    assert state[kept.instrument][1] == kept.freeze_qty
    with psycopg.connect(database_url) as conn:
        assert {i.instrument for i in load_instruments(conn)} == {i.instrument for i in new} | {"BSE:SENSEX"}


def test_a_refresh_that_fails_half_way_changes_nothing(database_url: str) -> None:
    old = build_universe(date(2026, 11, 23), 50)
    with psycopg.connect(database_url, autocommit=True) as conn:
        upsert_instruments(conn, old)
    before = _active(database_url)

    def rows() -> Iterator[Instrument]:
        yield from build_universe(date(2026, 12, 2), 50)[:20]
        raise OSError("connection to the broker reset")

    with psycopg.connect(database_url, autocommit=True) as conn, pytest.raises(OSError):
        refresh_instruments(conn, rows(), ["NSE", "NFO"])
    assert _active(database_url) == before


# ----------------------------------------------------------------------------- the CLI


def _cli(args: list[str], kafka: KafkaClientConfig, database_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap, "TICKTAPE_DATABASE_URL": database_url,
           "TICKTAPE_HOME": str(home), "COLUMNS": "160"}  # fmt: skip
    exe = Path(sys.executable).parent / "ticktape"
    return subprocess.run([str(exe), "instruments", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server answering /instruments with the dump, gzip-encoded as Kite sends it."""
    body = gzip.compress("\n".join(DUMP).encode())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/instruments" or self.headers.get("X-Kite-Version") != "3":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_cli_refreshes_from_a_url_a_file_and_the_simulator(
    kafka: KafkaClientConfig, database_url: str, tmp_path: Path, served: str
) -> None:
    done = _cli(["refresh", f"{served}/instruments", "-e", "NSE", "-e", "NFO"], kafka, database_url, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "upserted 5 instrument(s) of NFO, NSE; deactivated 0" in done.stdout
    assert "not loaded (other exchanges): BFO 1, BSE 1, MCX 1" in done.stdout
    assert {k for k, (a, _) in _active(database_url).items() if a} == {
        "NSE:NIFTY 50", "NSE:INFY", "NFO:INFY26DECFUT", "NFO:NIFTY26D0324200CE", "NFO:NIFTY26D0324200PE"}  # fmt: skip

    # A saved dump (gzip) without a filter: every exchange, nothing deactivated that it lists.
    dump = tmp_path / "instruments.csv.gz"
    dump.write_bytes(gzip.compress("\n".join(DUMP).encode()))
    done = _cli(["refresh", str(dump)], kafka, database_url, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "upserted 8 instrument(s) of BFO, BSE, MCX, NFO, NSE; deactivated 0" in done.stdout

    # The simulator's master for today takes over NSE and NFO: the dump's rows there go inactive.
    done = _cli(["refresh", "simulator"], kafka, database_url, tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    state = _active(database_url)
    assert not state["NFO:INFY26DECFUT"][0] and state["NSE:INFY"][0] and state["MCX:CRUDEOIL26DECFUT"][0]
    status = _cli(["status"], kafka, database_url, tmp_path)
    assert status.returncode == 0 and "MCX" in status.stdout and "INDEX" in status.stdout


def test_the_cli_refuses_bad_sources_and_writes_nothing(
    kafka: KafkaClientConfig, database_url: str, tmp_path: Path, served: str
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([*DUMP[:4], "1,2,INFY26DECFUT,INFY,0,soon,0,0.1,400,FUT,NFO-FUT,NFO"]))
    done = _cli(["refresh", str(bad)], kafka, database_url, tmp_path)
    assert done.returncode == 2
    assert "line 5, column expiry = 'soon': not a YYYY-MM-DD date; nothing was written" in " ".join(done.stdout.split())
    assert _active(database_url) == {}
    done = _cli(["refresh", f"{served}/missing"], kafka, database_url, tmp_path)
    assert done.returncode == 1 and "cannot download" in done.stdout and "nothing was changed" in done.stdout
    done = _cli(["refresh", str(tmp_path / "nope.csv")], kafka, database_url, tmp_path)
    assert done.returncode == 2 and "not 'kite', 'simulator', an http(s) URL or a file" in done.stdout
    done = _cli(["refresh", "simulator", "--dry-run"], kafka, database_url, tmp_path)
    assert done.returncode == 0 and "nothing written" in done.stdout and _active(database_url) == {}
    done = _cli(["refresh", "simulator", "-e", "BSE"], kafka, database_url, tmp_path)
    assert done.returncode == 2 and "no instruments of BSE" in done.stdout
