"""Settings, read once at the edge from ``TICKTAPE_*`` variables and passed down frozen.

A bad value stops start-up with :class:`ConfigError`, whose message names the variable,
the value received and the form expected:

>>> import os
>>> from connectors.settings import load_settings, ConfigError
>>> try:
...     load_settings({"TICKTAPE_API_PORT": "99999"})
... except ConfigError as e:
...     print(e)
invalid configuration:
  TICKTAPE_API_PORT='99999': Input should be less than or equal to 65535
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "TICKTAPE_"

# Client settings for the embedded broker (Tansu). Its fetch path lists every stored batch
# of a partition on each request and gives up when fetch.wait.max.ms runs out (about
# 0.5-0.75 ms of wait per 1,000 batches). A producer that lingers 200 ms writes at most
# 5 batches/s per partition: 112,500 batches in a 6h15m session, which a 250 ms fetch wait
# reads with a 3x margin. tests/connectors/test_tansu_session.py proves it.
TANSU_LINGER_MS = 200
TANSU_FETCH_WAIT_MS = 250
# Redpanda/Kafka answer a waiting fetch as soon as data arrives: small linger, low latency.
KAFKA_LINGER_MS = 5
KAFKA_FETCH_WAIT_MS = 100
# Either broker: how soon a client with a full prefetch queue fetches again (librdkafka's
# default, 1000 ms, stalls replays; see connectors.kafka).
FETCH_QUEUE_BACKOFF_MS = 10
# Every client: the first wait before (re)connecting to a broker (doubling up to librdkafka's
# 10 s maximum). A new client's first request often found its connection still held back by
# half of the default 100 ms (53 ms against 2-3 ms); a small backtest, which makes several
# clients, took 0.47-0.62 s with it and 0.43-0.49 s without.
RECONNECT_BACKOFF_MS = 10


class ConfigError(Exception):
    """Configuration is invalid: stop at start-up (never retried)."""


class Settings(BaseSettings):
    """Every knob of a ticktape process. Field ``x`` is read from ``TICKTAPE_X``."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore")

    home: Path = Field(Path(".ticktape"), description="state directory (embedded broker, PostgreSQL, logs)")
    env: Literal["dev", "paper", "live"] = "dev"
    account: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")] = "paper"

    # External services; unset means the embedded broker / PostgreSQL under `home`.
    kafka_bootstrap: str | None = Field(None, description="host:port[,host:port] of Redpanda/Kafka")
    database_url: str | None = Field(None, description="postgresql://user:pass@host:port/db")
    kafka_profile: Literal["auto", "tansu", "kafka"] = "auto"
    topic_prefix: Annotated[str, Field(pattern=r"^([a-zA-Z0-9_-]+(\.[a-zA-Z0-9_-]+)*)?$")] = ""

    api_host: str = "127.0.0.1"
    api_port: Annotated[int, Field(ge=1, le=65535)] = 8000
    # Browser origins allowed to call the API (CORS) and open /ws; comma-separated.
    api_allowed_origins: str = "http://127.0.0.1:8000,http://localhost:8000"
    api_rate_limit_per_min: Annotated[int, Field(ge=1, le=10_000_000)] = 600  # requests per client address
    api_login_rate_limit_per_min: Annotated[int, Field(ge=1, le=10_000)] = 10  # login attempts per client address
    ws_queue_size: Annotated[int, Field(ge=10, le=100_000)] = 1000  # frames buffered per client before it is dropped
    ws_max_instruments: Annotated[int, Field(ge=1, le=5000)] = 500  # per client and channel
    metrics_port_base: Annotated[int, Field(ge=1024, le=65000)] = 9300  # flows get base, base+1, ...
    metrics_port: Annotated[int, Field(ge=1, le=65535)] | None = None  # set per flow by the supervisor

    log_format: Literal["console", "json"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Simulator (paper/demo market).
    sim_seed: int = 42
    sim_instruments: Annotated[int, Field(ge=10, le=2000)] = 500
    sim_speed: Annotated[float, Field(ge=0)] = 1.0  # 1 = real time, 60 = a session in ~6 min, 0 = unpaced
    sim_date: date | None = None  # trading day to simulate; default: today (IST)
    sim_bad_tick_rate: Annotated[float, Field(ge=0, le=1)] = 0.0  # inject malformed ticks (demos, tests)
    sim_seconds: Annotated[int, Field(ge=1)] | None = None  # stop after this much market time (bounded runs)
    ingest_partitions: Annotated[int, Field(ge=1, le=64)] = 4
    # Ingest scales with independent processes, each owning every Nth instrument group (no
    # Bytewax cluster: groups share no state, and one shard's crash must not stop the others).
    ingest_processes: Annotated[int, Field(ge=1, le=16)] = 1
    ingest_shard: Annotated[int, Field(ge=0, le=15)] = 0  # set per child by the supervisor

    # Live analytics flow (candles, indicators, patterns, OI).
    candle_timeframes: str = "1s,5s,1m,5m,15m,1h,1d"
    candle_grace_ms: Annotated[int, Field(ge=0, le=60_000)] = 500  # live: close an idle bar at end + grace
    candle_partial_ms: Annotated[int, Field(ge=0, le=60_000)] = 1000  # in-progress 1m updates; 0 = none
    indicators: str = "ema:9;ema:21;sma:20;rsi:14;macd:12,26,9;bbands:20,2;atr:14;adx:14;supertrend:10,3;vwap"

    # Trading (flows.live): strategies from the strategies table, the paper venue by default.
    trading: bool = True  # False: analytics only
    trading_mode: Literal["paper"] = "paper"  # live broker execution is a later connector
    strategy_warmup_days: Annotated[int, Field(ge=0, le=400)] = 5  # stored candles fed to strategies at start
    snapshot_interval_s: Annotated[int, Field(ge=1, le=300)] = 5  # flows.live recovery snapshots (replay window)
    # Most ticks per batch in flows.live while it keeps up: a decision leaves the flow once its
    # batch has been through every instrument step. Measured at 10k ticks/s (40 deployments on
    # 1s/5s bars), tick processed -> intent p50/p99: 20 -> 0.8/2.0 ms, 50 -> 1.7/16 ms,
    # 500 -> 7.6/35 ms. A flow that falls behind grows its batches by itself (OrderedSource).
    live_batch_size: Annotated[int, Field(ge=10, le=100_000)] = 20

    # Persistence flow.
    persist_batch_rows: Annotated[int, Field(ge=1, le=1_000_000)] = 20_000
    persist_batch_ms: Annotated[int, Field(ge=10, le=60_000)] = 500

    # Supervisor.
    restart_backoff_max_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    restart_limit: Annotated[int, Field(ge=0, le=1000)] = 5  # restarts within 5 minutes before giving up

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):  # type: ignore[no-untyped-def]
        # load_settings() reads the TICKTAPE_* variables itself (from os.environ or a given
        # mapping) so that tests and sub-processes are hermetic and errors name the variable.
        return (init_settings,)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_form(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        for part in v.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                msg = "expected host:port[,host:port]"
                raise ValueError(msg)
        return v

    @field_validator("database_url")
    @classmethod
    def _dsn_form(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if not v.startswith(("postgresql://", "postgres://")):
            msg = "expected postgresql://user:password@host:port/database"
            raise ValueError(msg)
        return v

    @field_validator("candle_timeframes")
    @classmethod
    def _timeframes_form(cls, v: str) -> str:
        from operators.candles import parse_timeframes

        parse_timeframes([t.strip() for t in v.split(",") if t.strip()])  # raises with the offending value
        return v

    @field_validator("indicators")
    @classmethod
    def _indicators_form(cls, v: str) -> str:
        from operators.indicators import make_indicator

        for spec in (x.strip() for x in v.split(";") if x.strip()):
            make_indicator(spec)
        return v

    @field_validator("ingest_processes")
    @classmethod
    def _processes_fit_groups(cls, v: int, info: ValidationInfo) -> int:
        groups = info.data.get("ingest_partitions")
        if groups is not None and v > groups:
            msg = f"expected at most TICKTAPE_INGEST_PARTITIONS={groups} processes (each owns whole groups)"
            raise ValueError(msg)
        return v

    @field_validator("ingest_shard")
    @classmethod
    def _shard_in_range(cls, v: int, info: ValidationInfo) -> int:
        n = info.data.get("ingest_processes")
        if n is not None and v >= n:
            msg = f"expected 0 <= shard < TICKTAPE_INGEST_PROCESSES={n}"
            raise ValueError(msg)
        return v

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def broker_is_tansu(self) -> bool:
        if self.kafka_profile == "auto":
            return self.kafka_bootstrap is None
        return self.kafka_profile == "tansu"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read settings from ``environ`` (default: the process environment) plus overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name in Settings.model_fields:
        key = PREFIX + name.upper()
        if key in env:
            values[name] = env[key]
    values.update(overrides)
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "?"
            var = PREFIX + field.upper()
            given = err.get("input")
            lines.append(f"  {var}={given!r}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
