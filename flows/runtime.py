"""What every flow process does at start-up: settings, logging, shutdown, endpoints."""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from connectors import embedded
from connectors.kafka import KafkaClientConfig
from connectors.logs import setup_logging
from connectors.settings import ConfigError, Settings, load_settings
from connectors.shutdown import install_handlers
from schemas.topics import TopicCatalog, load_catalog

# The collector's default thresholds (700, 10, 10) start a young collection every 700 net
# container allocations. A flow allocates several objects per tick (records, ticks, candles,
# events) and holds a large long-lived state (500 instruments x 7 timeframes of candles and
# indicators), so by default it spends about a fifth of its time collecting garbage that
# reference counting frees anyway. Measured on a 220k-tick replay of 500 instruments, one
# process: analytics 48k -> 60k ticks/s, with 40 strategies and the desk 43k -> 55k ticks/s;
# collection off entirely was no faster than these thresholds.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Garbage-collector settings for a flow process: ``flow_context`` (live, ingest, persist),
    the ``ticktape`` command (backtest, optimize, replay) and optimize workers. What start-up
    built (modules, settings, clients) is frozen out of every later collection, and young
    collections run every 50k allocations instead of 700."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@dataclass(frozen=True)
class Endpoints:
    bootstrap: str
    database_url: str
    cluster_id: str | None  # the embedded broker's incarnation, when embedded


def endpoints(settings: Settings) -> Endpoints:
    """Where the broker and PostgreSQL are: external ones from settings, else the embedded
    services recorded under the home directory (they must be running)."""
    state = embedded.read_state(settings.home_dir)
    bootstrap = settings.kafka_bootstrap
    cluster = None
    if bootstrap is None:
        if state.broker is None:
            msg = (
                f"no Kafka broker: TICKTAPE_KAFKA_BOOTSTRAP is unset and no embedded broker runs under "
                f"{settings.home_dir} (start one with `ticktape services start` or `ticktape up`)"
            )
            raise ConfigError(msg)
        bootstrap, cluster = state.broker.bootstrap, state.broker.cluster_id
    dsn = settings.database_url
    if dsn is None:
        if state.postgres is None:
            msg = (
                f"no database: TICKTAPE_DATABASE_URL is unset and no embedded PostgreSQL runs under "
                f"{settings.home_dir} (start one with `ticktape services start` or `ticktape up`)"
            )
            raise ConfigError(msg)
        dsn = state.postgres.url
    return Endpoints(bootstrap=bootstrap, database_url=dsn, cluster_id=cluster)


@dataclass(frozen=True)
class FlowContext:
    settings: Settings
    endpoints: Endpoints
    kafka: KafkaClientConfig
    catalog: TopicCatalog


def flow_context(component: str) -> FlowContext:
    """Read settings once, configure logging, graceful shutdown and the collector for a flow
    process."""
    settings = load_settings()
    setup_logging(component, settings.log_format, settings.log_level)
    install_handlers()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.metrics_port, addr="127.0.0.1")
        except OSError as exc:  # observability must not stop trading: say so loudly and go on
            logging.getLogger(f"ticktape.{component}").error(
                "cannot serve /metrics on 127.0.0.1:%d (%s); set TICKTAPE_METRICS_PORT_BASE to a free range",
                settings.metrics_port,
                exc,
            )
    ep = endpoints(settings)
    catalog = load_catalog()
    if settings.topic_prefix:
        catalog = catalog.scoped(settings.topic_prefix)
    tune_gc()
    return FlowContext(settings, ep, KafkaClientConfig.from_settings(settings, ep.bootstrap), catalog)


def process_env(settings: Settings) -> dict[str, str]:
    """The environment for child processes: ours plus the resolved home directory."""
    env = dict(os.environ)
    env["TICKTAPE_HOME"] = str(settings.home_dir)
    return env


def recovery_env(home: Path, flow: str, cluster: str, snapshot_s: int) -> dict[str, str]:
    """Bytewax recovery for ``flow`` under ``home/recovery/<flow>``, valid for one broker.

    Recovery stores the input offsets with the state; offsets of another broker incarnation
    (the embedded broker keeps topics in memory, so each start is a new cluster) would point
    past the end of the new topics, so the store is recreated when the cluster id changes.
    """
    import shutil

    from bytewax.recovery import init_db_dir

    path = home / "recovery" / flow
    marker = path / "cluster_id"
    if path.exists() and (not marker.exists() or marker.read_text() != cluster):
        shutil.rmtree(path)
    if not path.exists():
        path.mkdir(parents=True)
        init_db_dir(path, 1)
        marker.write_text(cluster)
    return {
        "BYTEWAX_RECOVERY_DIRECTORY": str(path),
        "BYTEWAX_SNAPSHOT_INTERVAL": str(snapshot_s),
        "BYTEWAX_RECOVERY_BACKUP_INTERVAL": "0",
    }
