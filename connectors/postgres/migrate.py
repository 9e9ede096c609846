"""Ordered SQL migrations, recorded in ``schema_migrations``.

Files ``migrations/NNNN_name.sql`` are applied in order, each in its own transaction,
under an advisory lock so two migrators never race. A recorded migration whose file
changed since it was applied is an error (write a new migration instead).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import psycopg
from psycopg import sql

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_ID = 0x7469636B  # 'tick'


class MigrationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationStatus:
    migration: Migration
    applied_at: datetime | None
    checksum_ok: bool


def discover() -> list[Migration]:
    found = []
    for entry in resources.files("connectors.postgres").joinpath("migrations").iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        msg = f"duplicate migration versions: {versions}"
        raise MigrationError(msg)
    return found


_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
)"""


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, datetime]]:
    rows = conn.execute("SELECT version, checksum, applied_at FROM schema_migrations").fetchall()
    return {v: (c, t) for v, c, t in rows}


def migrate(conn: psycopg.Connection) -> list[Migration]:
    """Apply pending migrations; returns those applied (empty when up to date)."""
    conn.autocommit = True
    conn.execute(_TABLE)
    done: list[Migration] = []
    conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
    try:
        applied = _applied(conn)
        for mig in discover():
            if mig.version in applied:
                if applied[mig.version][0] != mig.checksum:
                    msg = (
                        f"migration {mig.version:04d}_{mig.name} changed after it was applied; "
                        "add a new migration instead of editing an applied one"
                    )
                    raise MigrationError(msg)
                continue
            with conn.transaction():
                conn.execute(mig.sql)  # type: ignore[arg-type]  # trusted file, several statements
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                    (mig.version, mig.name, mig.checksum),
                )
            done.append(mig)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return done


def status(conn: psycopg.Connection) -> list[MigrationStatus]:
    conn.autocommit = True
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    applied = _applied(conn) if exists and exists[0] else {}
    out = []
    for mig in discover():
        rec = applied.get(mig.version)
        out.append(MigrationStatus(mig, rec[1] if rec else None, rec is None or rec[0] == mig.checksum))
    return out


def timescale_enabled(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def apply_retention(conn: psycopg.Connection) -> dict[str, int]:
    """Delete rows older than each table's policy (plain PostgreSQL; TimescaleDB runs its own).

    Returns the number of rows deleted per table.
    """
    conn.autocommit = True
    if timescale_enabled(conn):
        return {}
    deleted: dict[str, int] = {}
    policies = conn.execute("SELECT table_name, time_column, keep FROM retention_policies ORDER BY 1").fetchall()
    for table, column, keep in policies:
        query = sql.SQL("DELETE FROM {} WHERE {} < NOW() - %s").format(sql.Identifier(table), sql.Identifier(column))
        cur = conn.execute(query, (keep,))
        deleted[table] = cur.rowcount
    return deleted
