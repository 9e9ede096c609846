"""``ticktape``: the single entry point for operators."""

from __future__ import annotations

import logging
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from connectors import embedded
from connectors.logs import setup_logging
from connectors.settings import ConfigError, Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="ticktape: real-time trading engine.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics from redpanda/topics.yaml.")
db_app = typer.Typer(no_args_is_help=True, help="PostgreSQL schema: migrations and retention.")
services_app = typer.Typer(no_args_is_help=True, help="Embedded broker and PostgreSQL (development).")
app.add_typer(topics_app, name="topics")
app.add_typer(db_app, name="db")
app.add_typer(services_app, name="services")
strategies_app = typer.Typer(no_args_is_help=True, help="Strategy deployments: list, enable, disable, configure.")
app.add_typer(strategies_app, name="strategies")
console = Console()
log = logging.getLogger("ticktape.cli")


def _settings(**overrides: object) -> Settings:
    try:
        s = load_settings(**overrides)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    setup_logging("cli", s.log_format, s.log_level)
    return s


def _endpoints(s: Settings):  # type: ignore[no-untyped-def]
    from flows.runtime import endpoints

    try:
        return endpoints(s)
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _catalog(s: Settings):  # type: ignore[no-untyped-def]
    from schemas.topics import load_catalog

    cat = load_catalog()
    return cat.scoped(s.topic_prefix) if s.topic_prefix else cat


# ----------------------------------------------------------------------------- topics


@topics_app.command("create")
def topics_create() -> None:
    """Create every topic of the catalog that does not exist yet."""
    from connectors.kafka import KafkaClientConfig, create_topics

    s = _settings()
    ep = _endpoints(s)
    created = create_topics(KafkaClientConfig.from_settings(s, ep.bootstrap).admin(), _catalog(s))
    console.print(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else " (all exist)"))


@topics_app.command("list")
def topics_list() -> None:
    """Show the catalog's topics and whether the broker has them."""
    from connectors.kafka import KafkaClientConfig, existing_topics

    s = _settings()
    ep = _endpoints(s)
    have = existing_topics(KafkaClientConfig.from_settings(s, ep.bootstrap).admin())
    table = Table("topic", "partitions", "key", "value", "retention", "on broker")
    for spec in _catalog(s).values():
        on = have.get(spec.name)
        ok = (
            "[green]yes[/green]"
            if on == spec.partitions
            else "[red]missing[/red]"
            if on is None
            else f"[yellow]{on} partitions[/yellow]"
        )
        table.add_row(spec.name, str(spec.partitions), spec.key, spec.value, f"{spec.retention_ms // 3_600_000} h", ok)
    console.print(table)


# ----------------------------------------------------------------------------- db


def _db(s: Settings):  # type: ignore[no-untyped-def]
    from connectors.postgres import connect

    return connect(_endpoints(s).database_url, autocommit=True)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (safe to re-run: applied ones are skipped)."""
    from connectors.postgres.migrate import migrate

    with _db(_settings()) as conn:
        done = migrate(conn)
    console.print(
        f"applied {len(done)} migration(s)"
        + (": " + ", ".join(f"{m.version:04d}_{m.name}" for m in done) if done else " (up to date)")
    )


@db_app.command("status")
def db_status() -> None:
    """Show every migration and when it was applied."""
    from connectors.postgres.migrate import status, timescale_enabled

    with _db(_settings()) as conn:
        rows = status(conn)
        ts = timescale_enabled(conn)
    table = Table("version", "name", "applied at", "checksum")
    for r in rows:
        table.add_row(
            f"{r.migration.version:04d}",
            r.migration.name,
            r.applied_at.isoformat(timespec="seconds") if r.applied_at else "[yellow]pending[/yellow]",
            "ok" if r.checksum_ok else "[red]changed since applied[/red]",
        )
    console.print(table)
    kind = "TimescaleDB hypertables" if ts else "plain PostgreSQL (BRIN indexes, ticktape db retention)"
    console.print(f"storage: {kind}")
    if any(r.applied_at is None for r in rows):
        raise typer.Exit(1)


@db_app.command("retention")
def db_retention() -> None:
    """Delete rows older than the retention policy (plain PostgreSQL; cron runs this daily)."""
    from connectors.postgres.migrate import apply_retention

    with _db(_settings()) as conn:
        deleted = apply_retention(conn)
    if not deleted:
        console.print("TimescaleDB enforces retention itself; nothing to do")
    for table, n in deleted.items():
        console.print(f"{table}: deleted {n} row(s)")


# ----------------------------------------------------------------------------- services


@services_app.command("start")
def services_start() -> None:
    """Start the embedded broker and PostgreSQL in the background (they outlive this command)."""
    s = _settings()
    if s.kafka_bootstrap is None:
        embedded.start_broker(s.home_dir)
    if s.database_url is None:
        embedded.start_postgres(s.home_dir)
    services_status()


@services_app.command("stop")
def services_stop() -> None:
    """Stop the embedded services."""
    s = _settings()
    pg = embedded.stop_postgres(s.home_dir)
    br = embedded.stop_broker(s.home_dir)
    console.print(f"postgres: {'stopped' if pg else 'not running'}; broker: {'stopped' if br else 'not running'}")


@services_app.command("status")
def services_status() -> None:
    """Print the broker bootstrap address and PostgreSQL URL in use (also while `up` runs)."""
    from connectors.supervision import read_flow_status

    s = _settings()
    st = embedded.read_state(s.home_dir)
    broker = s.kafka_bootstrap or (st.broker.bootstrap if st.broker else None)
    pg = s.database_url or (st.postgres.url if st.postgres else None)
    console.print(f"home      {s.home_dir}")
    console.print(
        f"broker    {broker or '[red]not running[/red]'}"
        + (" (external)" if s.kafka_bootstrap else f" (embedded, pid {st.broker.pid})" if st.broker else "")
    )
    console.print(
        f"postgres  {pg or '[red]not running[/red]'}"
        + (" (external)" if s.database_url else f" (embedded, pid {st.postgres.pid})" if st.postgres else "")
    )
    for name, fs in read_flow_status(s.home_dir).items():
        console.print(f"{name:<9} {fs.state} pid={fs.pid} restarts={fs.restarts} {fs.detail}")
    if broker is None or pg is None:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- control


def _publish(s: Settings, cmd: object) -> None:
    """Write one command to ctl.commands and wait until the broker has it."""
    from connectors.commands import CommandPublisher
    from connectors.kafka import KafkaClientConfig, KafkaUnavailable

    ep = _endpoints(s)
    try:
        CommandPublisher(KafkaClientConfig.from_settings(s, ep.bootstrap), _catalog(s), timeout_s=15).publish(cmd)
    except KafkaUnavailable as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _command_fields(account: str) -> dict[str, object]:
    import getpass

    from connectors.commands import command_fields

    return command_fields(account, f"cli:{getpass.getuser()}")


@app.command()
def halt(
    reason: Annotated[str, typer.Option(help="why trading stops (kept in risk_events)")],
    account: Annotated[str, typer.Option(help="trading account")] = "paper",
) -> None:
    """Kill switch: refuse new entries, cancel working orders, flatten every position."""
    from schemas.control import Halt

    s = _settings()
    cmd = Halt(reason=reason, **_command_fields(account))  # type: ignore[arg-type]
    _publish(s, cmd)
    console.print(f"[bold red]HALT[/bold red] sent for {account} (command {cmd.command_id})")


@app.command()
def resume(
    reason: Annotated[str, typer.Option(help="why trading may resume")],
    account: Annotated[str, typer.Option(help="trading account")] = "paper",
) -> None:
    """Leave HALTED or REDUCING: the only way back to ACTIVE."""
    from schemas.control import Resume

    s = _settings()
    cmd = Resume(reason=reason, **_command_fields(account))  # type: ignore[arg-type]
    _publish(s, cmd)
    console.print(f"RESUME sent for {account} (command {cmd.command_id})")


@strategies_app.command("list")
def strategies_list() -> None:
    """Deployments in the strategies table, and what keeps any of them from trading."""
    import strategies.builtin  # noqa: F401  (registers the built-ins)
    from connectors.postgres import connect
    from connectors.postgres.strategies import deployment_warning
    from strategies.registry import REGISTRY

    s = _settings()
    table = Table("id", "strategy", "enabled", "account", "params")
    notes: list[str] = []
    counted: dict[tuple[str, ...], Any] = {}
    with connect(_endpoints(s).database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, class_name, is_enabled, account, config, config::text FROM strategies ORDER BY id"
        ).fetchall()
        for sid, kind, enabled, account, config, text in rows:
            table.add_row(sid, kind, "yes" if enabled else "no", account, text)
            if why := deployment_warning(conn, REGISTRY, kind, config, enabled, counted):
                notes.append(f"{sid}: {why}")
    console.print(table)
    for note in notes:
        console.print(note, style="yellow", markup=False, highlight=False)


def _strategy_kind(s: Settings, sid: str) -> tuple[str, str]:
    from connectors.postgres import connect

    with connect(_endpoints(s).database_url, autocommit=True) as conn:
        row = conn.execute("SELECT class_name, account FROM strategies WHERE id = %s", (sid,)).fetchone()
    if row is None:
        console.print(f"[red]no strategy {sid!r} in the strategies table (see `ticktape strategies list`)[/red]")
        raise typer.Exit(2)
    return row[0], row[1]


@strategies_app.command("enable")
def strategies_enable(strategy_id: str) -> None:
    """Enable a deployment: the running flow applies it within its next batch."""
    from schemas.control import EnableStrategy

    s = _settings()
    _, account = _strategy_kind(s, strategy_id)
    _publish(s, EnableStrategy(strategy=strategy_id, **_command_fields(account)))  # type: ignore[arg-type]
    console.print(f"enable {strategy_id} sent")


@strategies_app.command("disable")
def strategies_disable(
    strategy_id: str,
    flatten: Annotated[bool, typer.Option(help="also close its open positions")] = False,
) -> None:
    """Disable a deployment: it stops deciding; its positions stay unless --flatten."""
    from schemas.control import DisableStrategy

    s = _settings()
    _, account = _strategy_kind(s, strategy_id)
    _publish(s, DisableStrategy(strategy=strategy_id, flatten=flatten, **_command_fields(account)))  # type: ignore[arg-type]
    console.print(f"disable {strategy_id}{' with flatten' if flatten else ''} sent")


@strategies_app.command("configure")
def strategies_configure(
    strategy_id: str,
    params: Annotated[str, typer.Option(help="the whole params object as JSON, e.g. '{\"fast\": 5}'")],
) -> None:
    """Replace a deployment's params (validated here first: a bad field is refused by name)."""
    import msgspec

    import strategies.builtin  # noqa: F401
    from schemas.control import ConfigureStrategy
    from strategies.registry import REGISTRY, ParamsError

    s = _settings()
    kind, account = _strategy_kind(s, strategy_id)
    try:
        validated = REGISTRY.params(kind, params)
    except ParamsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    raw = msgspec.json.decode(params)
    _publish(s, ConfigureStrategy(strategy=strategy_id, params=raw, **_command_fields(account)))  # type: ignore[arg-type]
    console.print(f"configure {strategy_id} sent: {msgspec.json.encode(validated).decode()}")


# ----------------------------------------------------------------------------- up


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="demo defaults: 10x market speed, a few malformed ticks")] = False,
    speed: Annotated[float | None, typer.Option(help="market seconds per wall second (0 = unpaced)")] = None,
) -> None:
    """Run the whole stack: broker, PostgreSQL, topics, migrations, flows and the API."""
    import os

    from flows.runtime import process_env, recovery_env
    from flows.supervisor import ChildSpec, Supervisor, flow_argv

    overrides: dict[str, object] = {}
    if demo:
        overrides.update(
            sim_speed=float(os.environ.get("TICKTAPE_SIM_SPEED", "10")),
            sim_bad_tick_rate=float(os.environ.get("TICKTAPE_SIM_BAD_TICK_RATE", "0.0005")),
        )
    if speed is not None:
        overrides["sim_speed"] = speed
    s = _settings(**overrides)
    t0 = time.monotonic()
    started = []
    try:
        if s.kafka_bootstrap is None and embedded.read_state(s.home_dir).broker is None:
            embedded.start_broker(s.home_dir, owned=True)
            started.append("broker")
        if s.database_url is None and embedded.read_state(s.home_dir).postgres is None:
            embedded.start_postgres(s.home_dir, owned=True)
            started.append("postgres")
        ep = _endpoints(s)
        _prepare(s, ep)
    except Exception as exc:
        console.print(f"[red]start-up failed: {exc}[/red]")
        _stop_owned(s, started)
        raise typer.Exit(1) from None

    env = process_env(s)
    env.update({f"TICKTAPE_{k.upper()}": str(v) for k, v in overrides.items()})
    try:  # flows.live keeps its state (candles, strategies, desks) in Bytewax recovery
        live_env = recovery_env(s.home_dir, "live", _cluster_id(s, ep), s.snapshot_interval_s)
    except Exception as exc:
        console.print(f"[red]start-up failed: recovery store: {exc}[/red]")
        _stop_owned(s, started)
        raise typer.Exit(1) from None
    flows = [("persist", "flows.persist", {}), ("live", "flows.live", live_env)]
    flows += [
        ("ingest" if s.ingest_processes == 1 else f"ingest-{i}", "flows.ingest", {"TICKTAPE_INGEST_SHARD": str(i)})
        for i in range(s.ingest_processes)
    ]
    specs = [
        *(
            ChildSpec(name, flow_argv(module), {**env, **extra}, metrics_port=s.metrics_port_base + k)
            for k, (name, module, extra) in enumerate(flows)
        ),
        ChildSpec(
            "api",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "api.app:create_app",
                "--factory",
                "--host",
                s.api_host,
                "--port",
                str(s.api_port),
                "--log-level",
                "warning",
            ],
            env,
        ),
    ]
    sup = Supervisor(s.home_dir, specs, backoff_max=s.restart_backoff_max_s, restart_limit=s.restart_limit)
    sup.start()
    _wait_api(s)
    console.print(
        f"[bold green]ticktape ready[/bold green] in {time.monotonic() - t0:.1f}s - "
        f"API http://{s.api_host}:{s.api_port} (/health, /docs) - broker {ep.bootstrap} - "
        f"postgres {ep.database_url} - home {s.home_dir}",
        soft_wrap=True,
    )
    console.print("Ctrl-C stops everything.", style="dim")
    reporter = _Reporter(ep.database_url)
    code = sup.run(on_tick=reporter.tick)
    _stop_owned(s, started)
    console.print("ticktape stopped" if code == 0 else "[red]ticktape stopped after a failure[/red]")
    raise typer.Exit(code)


def _cluster_id(s: Settings, ep) -> str:  # type: ignore[no-untyped-def]
    from connectors.kafka import KafkaClientConfig, cluster_id

    return cluster_id(KafkaClientConfig.from_settings(s, ep.bootstrap).admin())


def _prepare(s: Settings, ep) -> None:  # type: ignore[no-untyped-def]
    from connectors.kafka import KafkaClientConfig, create_topics
    from connectors.postgres import connect
    from connectors.postgres.instruments import upsert_instruments
    from connectors.postgres.migrate import migrate
    from connectors.postgres.strategies import demo_deployments, save_deployments
    from flows.ingest import sim_config_from_settings

    create_topics(KafkaClientConfig.from_settings(s, ep.bootstrap).admin(), _catalog(s))
    universe = sim_config_from_settings(s).universe
    with connect(ep.database_url, autocommit=True) as conn:
        migrate(conn)
        upsert_instruments(conn, universe)
        if s.trading and conn.execute("SELECT count(*) FROM strategies").fetchone()[0] == 0:
            stocks = [i.instrument for i in universe if i.instrument_type.value == "EQ"][:20]
            n = save_deployments(conn, demo_deployments(stocks))
            log.info("no strategies deployed yet: added %d paper-trading demo deployments", n)


def _wait_api(s: Settings, timeout: float = 30.0) -> None:
    from connectors.processes import port_open, wait_until

    if not wait_until(lambda: port_open(s.api_host, s.api_port), timeout, 0.1):
        log.warning("API did not open %s:%s within %.0fs", s.api_host, s.api_port, timeout)


def _stop_owned(s: Settings, started: list[str]) -> None:
    if "postgres" in started:
        embedded.stop_postgres(s.home_dir)
    if "broker" in started:
        embedded.stop_broker(s.home_dir)


class _Reporter:
    """A progress line every 10 s: rows persisted and their rate."""

    def __init__(self, dsn: str) -> None:
        self.dsn, self.last, self.last_rows = dsn, time.monotonic(), None

    def tick(self) -> None:
        now = time.monotonic()
        if now - self.last < 10:
            return
        import psycopg

        try:
            with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                rows_by_topic = conn.execute(
                    "SELECT topic, SUM(next_offset) FROM kafka_offsets WHERE consumer = 'persist' GROUP BY topic"
                ).fetchall()
        except psycopg.Error:
            return
        by_kind = {t.rsplit(".", 1)[-1]: int(n) for t, n in rows_by_topic}
        rows = sum(by_kind.values())
        # Offsets count from 0 again under a restarted in-memory broker: the count restarts too.
        since = self.last_rows if self.last_rows is not None and rows >= self.last_rows else 0
        rate = (rows - since) / (now - self.last)
        kinds = {"ticks": "ticks", "depth": "depth", "candles": "candles", "intents": "orders", "fills": "fills"}
        parts = ", ".join(f"{by_kind.get(k, 0):,} {name}" for k, name in kinds.items())
        suffix = f" ({rate:,.0f} records/s)" if self.last_rows is not None else ""
        console.print(f"persisted {parts}{suffix}", style="dim")
        self.last, self.last_rows = now, rows


user_app = typer.Typer(no_args_is_help=True, help="API operator accounts.")
app.add_typer(user_app, name="user")


@user_app.command("create")
def user_create(
    username: str,
    password_stdin: Annotated[bool, typer.Option(help="read the password from stdin (scripts) instead of a prompt")] = False,
) -> None:
    """Create an operator account for the API (Argon2id password, at least 12 characters)."""
    import getpass

    from api.security import create_user
    from connectors.postgres import connect
    from connectors.postgres.migrate import migrate

    password = sys.stdin.readline().rstrip("\n") if password_stdin else getpass.getpass("password: ")
    if not password_stdin and getpass.getpass("again: ") != password:
        console.print("[red]the passwords differ[/red]")
        raise typer.Exit(2)
    s = _settings()
    with connect(_endpoints(s).database_url, autocommit=True) as conn:
        migrate(conn)
        try:
            user = create_user(conn, username, password)
        except ValueError as exc:
            console.print(f"[red]{exc}[/red]")
            raise typer.Exit(2) from None
    console.print(f"user {user.username} created (id {user.id}); log in with POST /api/auth/login")


def _register_backtests() -> None:
    from flows.cli_backtest import backtest, optimize, replay

    app.command(help=backtest.__doc__)(backtest)
    app.command(help=optimize.__doc__)(optimize)
    app.command(help=replay.__doc__)(replay)


def _register_instruments() -> None:
    from flows.cli_instruments import instruments_app

    app.add_typer(instruments_app, name="instruments")


_register_backtests()
_register_instruments()


def main() -> None:
    # Every command may run a flow in this process (backtest, optimize, replay): collector
    # settings as in a flow process (flows.runtime.tune_gc); a few ms for the small commands.
    from flows.runtime import tune_gc

    tune_gc()
    app()


if __name__ == "__main__":
    main()
