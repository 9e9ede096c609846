"""Fixtures: one real embedded broker and one real PostgreSQL per test session.

Each test gets unique topic names (a run-scoped catalog) and a fresh database, so tests
never see each other's data. Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from connectors import embedded
from connectors.kafka import KafkaClientConfig, create_topics, delete_topics
from connectors.postgres.migrate import migrate
from connectors.processes import pid_alive
from schemas.topics import TopicCatalog, load_catalog

_BROKERS: list[tuple[Path, int]] = []  # (services home, pid) of the session's broker


@pytest.fixture(scope="session")
def services_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="ticktape-test-"))
    os.chmod(home, 0o755)
    yield home
    embedded.stop_postgres(home)
    embedded.stop_broker(home)
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def broker(services_home: Path) -> embedded.BrokerState:
    state = embedded.start_broker(services_home, owned=True)
    _BROKERS.append((services_home, state.pid))
    return state


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test whose session broker has died says so, with the end of the broker's log
    (the log goes with the session's temporary home)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if not report.failed:
        return
    for home, pid in _BROKERS:
        if not pid_alive(pid):
            log = home / "broker" / "tansu.log"
            tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else ["(no log)"]
            report.sections.append(("embedded broker", f"pid {pid} is not running; end of {log}:\n" + "\n".join(tail)))


@pytest.fixture(scope="session")
def postgres(services_home: Path) -> embedded.PostgresState:
    return embedded.start_postgres(services_home, owned=True, fast=True)


@pytest.fixture(scope="session")
def kafka(broker: embedded.BrokerState) -> KafkaClientConfig:
    return KafkaClientConfig(bootstrap=broker.bootstrap, tansu=True)


@pytest.fixture
def catalog(kafka: KafkaClientConfig) -> Iterator[TopicCatalog]:
    """The topic catalog under a unique prefix, created on the broker, deleted afterwards."""
    cat = load_catalog().scoped(f"t{uuid.uuid4().hex[:10]}")
    admin = kafka.admin()
    create_topics(admin, cat)
    yield cat
    delete_topics(admin, [s.name for s in cat.values()])


@pytest.fixture
def database_url(postgres: embedded.PostgresState) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:{postgres.port}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
