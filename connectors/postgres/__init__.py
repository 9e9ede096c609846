"""PostgreSQL access: connections, migrations, retention and the COPY sinks."""

from __future__ import annotations

import psycopg


def connect(url: str, *, autocommit: bool = False, timeout: float = 5.0) -> psycopg.Connection:
    """A connection with the settings every ticktape process uses (UTC session)."""
    conn = psycopg.connect(url, autocommit=autocommit, connect_timeout=max(1, int(timeout)), options="-c TimeZone=UTC")
    return conn
