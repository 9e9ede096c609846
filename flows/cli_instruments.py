"""``ticktape instruments``: the instrument master (refresh it from a broker or the simulator, show it).

    ticktape instruments refresh kite                  # Kite's daily dump, every exchange
    ticktape instruments refresh kite -e NSE -e NFO    # only these exchanges
    ticktape instruments refresh ./instruments.csv.gz  # a saved dump (Kite's columns)
    ticktape instruments refresh simulator             # the simulator's master for today
    ticktape instruments status

A refresh makes the source the whole active master of the exchanges it covers: its rows are
upserted and the active rows of those exchanges it no longer lists (expired contracts,
delisted stocks) are deactivated, in one transaction. A malformed row stops the refresh
naming the line, column and value, and nothing is written.
"""

from __future__ import annotations

import gzip
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

instruments_app = typer.Typer(no_args_is_help=True, help="Instrument master: refresh from a broker or the simulator.")
console = Console()
DOWNLOAD_TIMEOUT_S = 60.0


def _read_source(source: str, today_size: int) -> tuple[list[str] | None, str]:
    """The source's CSV lines (None for the simulator) and a description of where they came from."""
    from connectors.brokers.master import KITE_INSTRUMENTS_URL

    if source == "simulator":
        return None, f"simulator master for today ({today_size} instruments)"
    url = KITE_INSTRUMENTS_URL if source == "kite" else source
    if url.startswith(("http://", "https://")):
        request = urllib.request.Request(url, headers={"X-Kite-Version": "3", "Accept-Encoding": "gzip"})
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as r:
                body = r.read()
                if r.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            console.print(f"[red]cannot download the instrument master from {url}: {exc}; nothing was changed[/red]")
            raise typer.Exit(1) from None
        took = time.monotonic() - t0
        return body.decode("utf-8-sig").splitlines(), f"{url} ({len(body) / 1e6:.1f} MB in {took:.1f} s)"
    path = Path(source)
    if not path.is_file():
        console.print(f"[red]{source}: not 'kite', 'simulator', an http(s) URL or a file[/red]")
        raise typer.Exit(2)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8-sig").splitlines(), str(path)


@instruments_app.command("refresh")
def refresh(
    source: Annotated[
        str, typer.Argument(help="kite (Kite's daily dump), simulator, or a Kite-format CSV (.csv/.csv.gz) file or URL")
    ],
    exchange: Annotated[
        list[str] | None,
        typer.Option("--exchange", "-e", help="load only this exchange (repeat); default: every one in the source"),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="check and summarize the source, write nothing")] = False,
) -> None:
    """Load the instrument master and deactivate what the source no longer lists."""
    from connectors.brokers.master import MasterError, parse_kite_master
    from connectors.postgres.instruments import refresh_instruments
    from flows.cli import _db, _settings
    from flows.ingest import sim_config_from_settings

    s = _settings()
    wanted = sorted({e.upper() for e in exchange or ()})
    sim = sim_config_from_settings(s).universe
    with console.status("reading the instrument master"):
        lines, where = _read_source(source, len(sim))
        skipped: Counter[str] = Counter()
        if lines is None:
            instruments = [i for i in sim if not wanted or i.exchange in wanted]
            skipped.update(i.exchange for i in sim if wanted and i.exchange not in wanted)
        else:
            try:
                master = parse_kite_master(lines, wanted)
            except MasterError as exc:
                console.print(f"[red]{where}: {exc}; nothing was written[/red]")
                raise typer.Exit(2) from None
            instruments, skipped = master.instruments, master.skipped
    if not instruments:
        console.print(
            f"[red]{where}: no instruments{' of ' + ', '.join(wanted) if wanted else ''}; nothing was written[/red]"
        )
        raise typer.Exit(2)
    covered = wanted or sorted({i.exchange for i in instruments})
    table = Table("exchange", *(t for t in ("EQ", "FUT", "CE", "PE", "INDEX")), "total")
    by: Counter[tuple[str, str]] = Counter((i.exchange, i.instrument_type.value) for i in instruments)
    for ex in covered:
        counts = [by[(ex, t)] for t in ("EQ", "FUT", "CE", "PE", "INDEX")]
        table.add_row(ex, *(f"{n:,}" for n in counts), f"{sum(counts):,}")
    console.print(f"source: {where}")
    console.print(table)
    if skipped:
        console.print("not loaded (other exchanges): " + ", ".join(f"{ex} {n:,}" for ex, n in sorted(skipped.items())))
    if dry_run:
        console.print(f"dry run: {len(instruments):,} instrument(s) checked, nothing written")
        return
    with _db(s) as conn:
        n, gone = refresh_instruments(conn, instruments, covered)
    console.print(f"upserted {n:,} instrument(s) of {', '.join(covered)}; deactivated {gone:,} no longer listed")


@instruments_app.command("status")
def status() -> None:
    """Active and inactive instruments per exchange and type, and when each exchange was last refreshed."""
    from flows.cli import _db, _settings

    with _db(_settings()) as conn:
        rows = conn.execute(
            """SELECT exchange, instrument_type, count(*) FILTER (WHERE is_active), count(*) FILTER (WHERE NOT is_active),
                      max(updated_at)
               FROM instruments GROUP BY exchange, instrument_type ORDER BY exchange, instrument_type"""
        ).fetchall()
    if not rows:
        console.print("the instrument master is empty (ticktape instruments refresh kite|simulator|FILE)")
        raise typer.Exit(1)
    table = Table("exchange", "type", "active", "inactive", "last updated (UTC)")
    for ex, kind, active, inactive, updated in rows:
        table.add_row(ex, kind, f"{active:,}", f"{inactive:,}", updated.isoformat(timespec="seconds"))
    console.print(table)
