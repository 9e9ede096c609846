"""Static checks of the deployment bundle in compose/: no Docker, no network.

The compose file is checked against a schema of the parts the bundle relies on and against
the code: every ``TICKTAPE_*`` variable a service gets must load through
``connectors.settings.load_settings``, every command must name an importable module, every
metric in an alert or a dashboard must be exported by the code. The shell scripts run against
fakes (a fake ``docker``, a fake CLI) to check what they do, not only that they parse.
"""

from __future__ import annotations

import base64
import configparser
import importlib
import importlib.util
import json
import os
import re
import secrets
import stat
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connectors.settings import PREFIX, Settings, load_settings

COMPOSE = Path(__file__).resolve().parent.parent / "compose"
SCRIPTS = COMPOSE / "scripts"
ONE_SHOT = {"init"}  # services that run to completion; everything else is long-running
FLOWS = {"ingest", "live", "persist"}
TICKTAPE_IMAGE = "ticktape:local"

# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _env_example() -> dict[str, str]:
    values = {}
    for raw in (COMPOSE / ".env.example").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f".env.example: expected KEY=VALUE, got {raw!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


_SECRET = re.compile(r"PASSWORD|SECRET|KEYS?$|TOKEN")


def _env_with_secrets() -> dict[str, str]:
    """.env.example with its (empty) secrets filled in, as an operator would."""
    env = _env_example()
    env.update(
        POSTGRES_PASSWORD="test-" + secrets.token_hex(12),
        GRAFANA_ADMIN_PASSWORD=secrets.token_urlsafe(16),
        TICKTAPE_JWT_SECRET=secrets.token_urlsafe(48),
        TICKTAPE_MASTER_KEYS="k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    return env


_REF = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?", re.S)


def _interpolate(text: str, env: dict[str, str], refs: set[str] | None = None) -> str:
    """docker compose interpolation: $$, $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}."""
    out, i = [], 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = text.index("}", i)
            m = _REF.fullmatch(text[i + 2 : end])
            assert m, f"unparsable interpolation {text[i : end + 1]!r}"
            name, op, arg = m.groups()
            if refs is not None:
                refs.add(name)
            value = env.get(name)
            if (op == ":-" and not value) or (op == "-" and value is None):
                value = arg
            elif op in {":?", "?"} and (value is None or (op == ":?" and value == "")):
                msg = f"required variable {name} is unset: {arg}"
                raise KeyError(msg)
            out.append(value or "")
            i = end + 1
        else:
            m = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i + 1 :])
            if m is None:
                out.append("$")
                i += 1
                continue
            if refs is not None:
                refs.add(m.group(0))
            out.append(env.get(m.group(0), ""))
            i += 1 + m.end()
    return "".join(out)


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []


def _argv(node: Any) -> list[str]:
    return node if isinstance(node, list) else str(node).split() if node else []


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load_yaml(COMPOSE / "docker-compose.yml")


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _ticktape_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services.items() if s.get("image") == TICKTAPE_IMAGE}


# --------------------------------------------------------------------------- every file parses


def _files(*patterns: str) -> list[Path]:
    return sorted({p for pat in patterns for p in COMPOSE.rglob(pat)})


@pytest.mark.parametrize("path", _files("*.yml", "*.yaml"), ids=lambda p: str(p.relative_to(COMPOSE)))
def test_yaml_parses(path: Path) -> None:
    assert isinstance(_load_yaml(path), dict)


@pytest.mark.parametrize("path", _files("*.json"), ids=lambda p: str(p.relative_to(COMPOSE)))
def test_json_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def test_the_bundle_has_its_parts() -> None:
    for rel in (
        "docker-compose.yml",
        "Dockerfile",
        ".env.example",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/dashboards.yml",
        "grafana/dashboards/market-data.json",
        "grafana/dashboards/strategies.json",
        "grafana/dashboards/risk.json",
        "grafana/dashboards/system.json",
        "systemd/ticktape-live.service",
        "cron/ticktape.cron",
        "scripts/refresh-token.sh",
        "scripts/refresh-instruments.sh",
        "scripts/backup-db.sh",
        "README.md",
    ):
        assert (COMPOSE / rel).is_file(), rel


# --------------------------------------------------------------------------- docker-compose.yml

_DURATION = r"^[0-9]+(ms|s|m|h)$"
_HEALTHCHECK = {
    "type": "object",
    "required": ["test", "interval", "timeout", "retries"],
    "additionalProperties": False,
    "properties": {
        "test": {
            "type": "array",
            "minItems": 2,
            "prefixItems": [{"enum": ["CMD", "CMD-SHELL"]}],
            "items": {"type": "string", "minLength": 1},
        },
        "interval": {"type": "string", "pattern": _DURATION},
        "timeout": {"type": "string", "pattern": _DURATION},
        "retries": {"type": "integer", "minimum": 1},
        "start_period": {"type": "string", "pattern": _DURATION},
    },
}
_ARGV = {"oneOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1, "items": {"type": "string"}}]}
_SERVICE = {
    "type": "object",
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string", "pattern": r"^[a-z0-9./_-]+:[A-Za-z0-9._-]+$"},
        "build": {
            "type": "object",
            "required": ["context", "dockerfile"],
            "additionalProperties": False,
            "properties": {"context": {"type": "string"}, "dockerfile": {"type": "string"}},
        },
        "init": {"type": "boolean"},
        "entrypoint": _ARGV,
        "command": _ARGV,
        "environment": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
        "volumes": {"type": "array", "items": {"type": "string", "pattern": r"^[^:]+:/[^:]*(:ro)?$"}},
        # Host ports bind to loopback only.
        "ports": {"type": "array", "items": {"type": "string", "pattern": r"^127\.0\.0\.1:[^:]+:[0-9]+$"}},
        "expose": {"type": "array", "items": {"type": "string", "pattern": r"^[0-9]+$"}},
        "depends_on": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": {
                "type": "object",
                "required": ["condition"],
                "additionalProperties": False,
                "properties": {
                    "condition": {"enum": ["service_started", "service_healthy", "service_completed_successfully"]}
                },
            },
        },
        "healthcheck": _HEALTHCHECK,
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "stop_grace_period": {"type": "string", "pattern": _DURATION},
        "shm_size": {"type": "string"},
        "ulimits": {"type": "object"},
        "logging": {"type": "object", "required": ["driver"]},
    },
}
COMPOSE_SCHEMA = {
    "type": "object",
    "required": ["services", "volumes"],
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "properties": {
        "name": {"type": "string"},
        "services": {"type": "object", "minProperties": 1, "additionalProperties": _SERVICE},
        "volumes": {"type": "object", "additionalProperties": {"type": "null"}},
    },
}


def _schema_errors(doc: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(COMPOSE_SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _resolved(node: Any, env: dict[str, str]) -> Any:
    """The document as docker compose sees it after interpolation."""
    if isinstance(node, str):
        return _interpolate(node, env)
    if isinstance(node, dict):
        return {k: _resolved(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolved(v, env) for v in node]
    return node


def test_compose_matches_schema(compose: dict[str, Any]) -> None:
    assert _schema_errors(_resolved(compose, _env_with_secrets())) == []


def test_schema_refuses_what_the_bundle_must_not_do(compose: dict[str, Any]) -> None:
    typo = {**compose, "services": {**compose["services"], "api": {**compose["services"]["api"], "helthcheck": {}}}}
    public = {**compose, "services": {"db": {"image": "postgres:16", "ports": ["5432:5432"]}}}
    no_image = {**compose, "services": {"x": {"command": "true"}}}
    for bad in (typo, public, no_image):
        assert _schema_errors(bad)


def test_services_are_supervised(services: dict[str, dict[str, Any]]) -> None:
    assert services.keys() >= ONE_SHOT
    for name, svc in services.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no", name
            continue
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        assert svc.get("restart") in {"always", "unless-stopped", "on-failure"}, f"{name}: restart policy"


def test_depends_on_targets_exist(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for dep, spec in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert dep in ONE_SHOT, f"{name} waits for long-running {dep} to complete"
    for flow in (*FLOWS, "api"):
        conditions = {d: s["condition"] for d, s in services[flow]["depends_on"].items()}
        assert conditions.get("init") == "service_completed_successfully", flow
        assert conditions.get("redpanda") == "service_healthy", flow


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest", f"{name}: pin {image}"
        if image != TICKTAPE_IMAGE:
            assert "build" not in svc
    assert re.fullmatch(r"timescale/timescaledb:[0-9.]+-pg16", services["timescaledb"]["image"])
    assert services["timescaledb"]["healthcheck"]["test"][1].startswith("pg_isready")


def test_redpanda_runs_in_production_mode(services: dict[str, dict[str, Any]]) -> None:
    rp = services["redpanda"]
    entrypoint = " ".join(_argv(rp["entrypoint"]))
    argv = " ".join([entrypoint, *_argv(rp["command"])])
    for forbidden in (r"dev-container", r"--mode\b", r"unsafe-bypass-fsync", r"developer_mode\W+(=|:)?\s*true"):
        assert not re.search(forbidden, argv), f"redpanda: {forbidden} found in {argv}"
    # The image's redpanda.yaml has developer_mode: true, which rpk turns into dev-container mode.
    assert "rpk redpanda mode production" in entrypoint
    assert entrypoint.index("mode production") < entrypoint.index("redpanda start")
    assert any(a.startswith("--advertise-kafka-addr=") for a in _argv(rp["command"]))
    assert any(v.endswith(":/var/lib/redpanda/data") for v in rp["volumes"])


def test_volumes_exist(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for spec in svc.get("volumes", []):
            source = spec.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (COMPOSE / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
        if "build" in svc:
            context = COMPOSE / svc["build"]["context"]
            assert (context / svc["build"]["dockerfile"]).is_file()


def test_every_interpolated_variable_is_in_env_example(compose: dict[str, Any]) -> None:
    example = _env_example()
    refs: set[str] = set()
    for s in _strings(compose):
        _interpolate(s, _env_with_secrets(), refs)
    missing = refs - example.keys()
    assert not missing, f"referenced in docker-compose.yml but not in .env.example: {sorted(missing)}"
    unused = example.keys() - refs
    assert not unused, f"in .env.example but never used by docker-compose.yml: {sorted(unused)}"


def test_compose_defaults_match_env_example(compose: dict[str, Any]) -> None:
    example = _env_example()
    for s in _strings(compose):
        for name, default in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", s):
            assert default == example[name], f"${{{name}:-{default}}} differs from .env.example {example[name]!r}"


def test_secrets_are_required_and_never_committed(compose: dict[str, Any]) -> None:
    example = _env_example()
    names = {k for k in example if _SECRET.search(k)}
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "TICKTAPE_JWT_SECRET", "TICKTAPE_MASTER_KEYS"} <= names
    for key in names:
        assert example[key] == "", f"{key}: .env.example must leave secrets empty"
    text = " ".join(_strings(compose))
    for key in names:
        uses = re.findall(r"\$\{" + key + r"(:?[-?])?", text)
        assert uses, key
        assert set(uses) == {":?"}, f"{key}: compose must refuse to start without it (${{{key}:?...}})"
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        _resolved(compose, example)


def _service_env(svc: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    return {k: _interpolate(str(v), env) for k, v in svc.get("environment", {}).items()}


def _variables_the_code_reads() -> set[str]:
    """TICKTAPE_* names: the Settings fields plus those read from the environment directly."""
    names = {PREFIX + name.upper() for name in Settings.model_fields}
    root = COMPOSE.parent
    for package in ("api", "connectors", "flows"):
        for path in (root / package).rglob("*.py"):
            names |= set(re.findall(r"[\"'](TICKTAPE_[A-Z0-9_]+)[\"']", path.read_text()))
    return names


def test_ticktape_services_get_valid_settings(services: dict[str, dict[str, Any]]) -> None:
    full = _env_with_secrets()
    secrets_only = {k: v for k, v in full.items() if _SECRET.search(k)}  # compose defaults for the rest
    known = _variables_the_code_reads()
    ticktape = _ticktape_services(services)
    assert ticktape.keys() == {"init", *FLOWS, "api"}
    for name, svc in ticktape.items():
        for env in (full, secrets_only):
            values = _service_env(svc, env)
            unknown = {k for k in values if k.startswith(PREFIX)} - known
            assert not unknown, f"{name}: read by no code (misspelt?): {sorted(unknown)}"
            settings = load_settings(values)
            assert settings.kafka_bootstrap == "redpanda:9092"
            assert settings.database_url is not None
            assert settings.database_url.endswith("@timescaledb:5432/ticktape")
    assert {k for k in full if k.startswith(PREFIX)} <= known


def test_api_gets_its_security_configuration(services: dict[str, dict[str, Any]]) -> None:
    from api.credentials import MasterKeys
    from api.security import SecurityConfig

    values = _service_env(services["api"], _env_with_secrets())
    assert values["TICKTAPE_ENV"] != "dev"
    SecurityConfig.from_env(values)
    MasterKeys.from_env(values)


def test_commands_name_real_modules(services: dict[str, dict[str, Any]]) -> None:
    seen = set()
    for name, svc in _ticktape_services(services).items():
        argv = _argv(svc.get("command"))
        if argv[:3] == ["python", "-m", "bytewax.run"]:
            assert importlib.util.find_spec(argv[3]) is not None, f"{name}: no module {argv[3]}"
            seen.add(argv[3])
        elif argv[:1] == ["uvicorn"]:
            module, _, attr = argv[1].partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), f"{name}: {argv[1]}"
            assert "--factory" in argv
            seen.add(argv[1])
    assert seen == {"flows.ingest", "flows.live", "flows.persist", "api.app:create_app"}
    init = " ".join(_argv(services["init"]["command"]))
    for step in ("ticktape db migrate", "ticktape topics create", "/app/compose/bootstrap.py"):
        assert step in init


def test_flow_metrics_wiring(services: dict[str, dict[str, Any]]) -> None:
    for name in FLOWS:
        svc = services[name]
        env = svc["environment"]
        port, relay = str(env["TICKTAPE_METRICS_PORT"]), str(env["METRICS_RELAY_PORT"])
        assert port != relay
        assert _argv(svc["entrypoint"]) == ["/app/compose/scripts/flow-entrypoint.sh"]
        assert f"127.0.0.1:{port}/metrics" in " ".join(svc["healthcheck"]["test"]), name
        assert relay in svc["expose"], name
    assert "127.0.0.1:8000/health" in " ".join(services["api"]["healthcheck"]["test"])


def test_bootstrap_script_imports_resolve() -> None:
    spec = importlib.util.spec_from_file_location("compose_bootstrap", COMPOSE / "bootstrap.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports; main() only runs as a script
    assert callable(module.main)


def test_dockerfile() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.12-slim$", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users, "the image must not run as root"
    assert users[-1] not in {"root", "0"}
    assert re.search(r"pip install[^\n]*-e \.", text)
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".git", "compose/.env"} <= set(ignore)


# --------------------------------------------------------------------------- metric names

_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}  # fmt: skip
_TOKEN = re.compile(
    r"(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)"  # numbers and durations (5m, 0.3, 1e9)
    r"|(?P<id>[A-Za-z_:][A-Za-z0-9_:]*)"
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and labels left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, regexes
    s = re.sub(r"\{[^{}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\[\]]*\]", " ", s)  # ranges and subqueries ($__rate_interval, $__range)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)  # label lists
    names = set()
    for m in _TOKEN.finditer(s):
        word = m.group("id")
        if word is None or word.lower() in _PROMQL_WORDS:
            continue
        if s[m.end() :].lstrip().startswith("("):  # a function or an aggregation
            continue
        names.add(word)
    return names


def _sample_names(name: str, kind: str) -> set[str]:
    return {
        "counter": {f"{name}_total", f"{name}_created"},
        "gauge": {name},
        "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"},
        "summary": {name, f"{name}_sum", f"{name}_count", f"{name}_created"},
        "info": {f"{name}_info"},
    }.get(kind, {name})


# Series Prometheus makes itself for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added"}
METRIC_MODULES = (
    "flows.ingest",
    "flows.pipeline",
    "flows.trading",
    "connectors.kafka",
    "connectors.postgres.sinks",
    "api.app",
)


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every series name the ticktape processes can expose, read from the client registry."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    from prometheus_client import REGISTRY

    names = set(PROMETHEUS_SERIES)
    for family in REGISTRY.collect():
        names |= _sample_names(family.name, family.type)
        names |= {s.name for s in family.samples}
    assert {"ticktape_ticks_in_total", "ticktape_trading_state", "ticktape_decision_to_intent_seconds_bucket"} <= names
    return names


def _unknown(expr: str, exported: set[str]) -> set[str]:
    names = metric_names(expr)
    assert names, f"no metric in {expr!r}"
    return names - exported


def test_metric_name_extraction(exported: set[str]) -> None:
    expr = """
        sum by (reason) (rate(ticktape_ticks_rejectd_total{job="ingest", topic=~".*md.ticks"}[$__rate_interval]))
          / on() group_left sum(increase(ticktape_ticks_in_total[1h] offset 5m)) > 0.5e-1
        and on() (hour() * 60 + minute() >= 235) and histogram_quantile(0.99, sum by (le) (
          rate(ticktape_decision_to_intent_seconds_bucket[5m]))) > 300ms or vector(0)
    """
    assert metric_names(expr) == {
        "ticktape_ticks_rejectd_total",
        "ticktape_ticks_in_total",
        "ticktape_decision_to_intent_seconds_bucket",
    }
    assert _unknown(expr, exported) == {"ticktape_ticks_rejectd_total"}  # the misspelt one
    assert metric_names('max by (account) (ticktape_trading_state{account=~"$account"}) == 2') == {"ticktape_trading_state"}


def _alert_rules() -> list[dict[str, Any]]:
    doc = _load_yaml(COMPOSE / "prometheus" / "alerts.yml")
    assert doc["groups"]
    rules = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"], group
        rules += group["rules"]
    return rules


def test_alert_rules_structure() -> None:
    rules = _alert_rules()
    names = [r.get("alert") for r in rules]
    assert all(names), "every rule is an alert (no recording rules here)"
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in rules:
        assert rule.keys() <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"[0-9]+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
    for required in ("TicktapeServiceDown", "TickRejectionRateHigh", "NoTicksDuringMarketHours", "PersistStalled",
                     "TradingHalted", "DayLossLimitReached", "RiskRejectionsSpike", "StrategyErrors"):  # fmt: skip
        assert required in names


def test_alert_metrics_are_exported(exported: set[str]) -> None:
    for rule in _alert_rules():
        assert not _unknown(rule["expr"], exported), f"{rule['alert']}: unknown metrics {_unknown(rule['expr'], exported)}"


def test_prometheus_scrapes_compose_services(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    doc = _load_yaml(COMPOSE / "prometheus" / "prometheus.yml")
    jobs = {}
    for job in doc["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, _, port = target.rpartition(":")
                assert host in services, f"{job['job_name']}: {host} is not a compose service"
                assert port in services[host].get("expose", []), f"{target}: {host} does not expose {port}"
                jobs[job["job_name"]] = host
    # Job name = service name: alerts and dashboards select with job="live" etc.
    assert all(job == host for job, host in jobs.items())
    assert {*FLOWS, "api"} <= jobs.keys()
    mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    for rule_file in doc["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in mounts
        assert (COMPOSE / "prometheus" / rule_file).is_file()
    # Alerts name the jobs Prometheus actually has.
    for rule in _alert_rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, f"{rule['alert']}: no scrape job {job}"


# --------------------------------------------------------------------------- Grafana


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((COMPOSE / "grafana" / "dashboards").glob("*.json"))}


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    ds = _load_yaml(COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert [d["uid"] for d in ds] == ["prometheus"]
    assert ds[0]["type"] == "prometheus"
    assert re.match(r"http://prometheus:9090/?$", ds[0]["url"])
    providers = _load_yaml(COMPOSE / "grafana" / "provisioning" / "dashboards" / "dashboards.yml")["providers"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in services["grafana"]["volumes"]}
    assert providers[0]["options"]["path"] == mounts["./grafana/dashboards"]
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"


def test_dashboards_structure() -> None:
    dashboards = _dashboards()
    assert set(dashboards) == {"market-data.json", "strategies.json", "risk.json", "system.json"}
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)
    for name, d in dashboards.items():
        assert d["title"] and 0 < len(d["uid"]) <= 40, name
        assert isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36, name
        assert d["panels"], name
        ids = [p["id"] for p in d["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        for p in d["panels"]:
            where = f"{name} / {p.get('title')}"
            assert p["title"] and p["type"], where
            assert p["datasource"]["uid"] == "prometheus", where
            g = p["gridPos"]
            assert g["w"] > 0 and g["h"] > 0 and g["x"] + g["w"] <= 24, where
            assert p["targets"], where
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs), where
            for t in p["targets"]:
                assert t["expr"].strip(), where


def test_dashboard_metrics_are_exported(exported: set[str]) -> None:
    for name, d in _dashboards().items():
        for p in d["panels"]:
            for t in p["targets"]:
                assert not _unknown(t["expr"], exported), f"{name} / {p['title']}: {_unknown(t['expr'], exported)}"
        for var in d.get("templating", {}).get("list", []):
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else query or ""
            m = re.fullmatch(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)(?:\{[^}]*\})?\s*,\s*\w+\s*\)", query)
            assert m, f"{name}: variable {var['name']}: unexpected query {query!r}"
            assert m.group(1) in exported, f"{name}: variable {var['name']}: {m.group(1)}"


# --------------------------------------------------------------------------- systemd


def _unit(name: str) -> tuple[configparser.ConfigParser, list[str]]:
    text = (COMPOSE / "systemd" / name).read_text()
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser, text.splitlines()


@pytest.mark.parametrize("name", ["ticktape-live.service", "ticktape-api.service"])
def test_systemd_unit(name: str) -> None:
    unit, lines = _unit(name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    assert svc["ExecStart"].startswith("/")
    assert svc["Restart"] == "on-failure"
    assert svc["NoNewPrivileges"] == "yes"
    assert svc["ProtectSystem"] == "strict"
    assert svc["EnvironmentFile"].startswith("/etc/")
    assert svc["User"] not in {"root", "0"}
    assert unit["Install"]["WantedBy"]
    env = dict(kv.split("=", 1) for line in lines if line.startswith("Environment=") for kv in [line.split("=", 1)[1]])
    home = env["TICKTAPE_HOME"]
    assert home in svc["ReadWritePaths"].split(), "TICKTAPE_HOME must be writable under ProtectSystem=strict"
    argv = svc["ExecStart"].split()
    if "bytewax.run" in argv:
        assert importlib.util.find_spec(argv[argv.index("bytewax.run") + 1]) is not None
    if "uvicorn" in argv:
        module, _, attr = argv[argv.index("uvicorn") + 1].partition(":")
        assert callable(getattr(importlib.import_module(module), attr))


def test_live_unit_runs_the_live_flow_with_recovery() -> None:
    unit, lines = _unit("ticktape-live.service")
    assert unit["Service"]["ExecStart"].endswith("-m bytewax.run flows.live")
    assert any(line.startswith("Environment=BYTEWAX_RECOVERY_DIRECTORY=/var/lib/ticktape/") for line in lines)
    assert "--live-recovery" in unit["Service"]["ExecStartPre"]


# --------------------------------------------------------------------------- scripts and cron


def _scripts() -> list[Path]:
    return sorted(SCRIPTS.glob("*.sh"))


@pytest.mark.parametrize("path", _scripts(), ids=lambda p: p.name)
def test_script_is_strict_bash(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), path.name
    assert re.search(r"^set -euo pipefail$", text, re.M), path.name
    assert path.stat().st_mode & stat.S_IXUSR, f"{path.name} is not executable"
    assert not re.search(r"(?i)(password|secret|api_key)\s*=\s*['\"]?\w", text), f"{path.name}: secret-like assignment"
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def _run(script: str, env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        [str(SCRIPTS / script), *args], env={**base, **env}, capture_output=True, text=True, timeout=30, check=False, cwd=cwd
    )


def test_refresh_token_fails_clearly_until_configured() -> None:
    r = _run("refresh-token.sh", {})
    assert r.returncode != 0
    assert "no broker login command configured" in r.stderr
    assert _run("refresh-token.sh", {"BROKER_LOGIN_CMD": "true"}).returncode == 0
    failed = _run("refresh-token.sh", {"BROKER_LOGIN_CMD": "exit 3"})
    assert failed.returncode == 1
    assert "FAILED" in failed.stderr


def _fake(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_refresh_instruments_runs_the_cli_and_passes_its_failure_on(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    cli = _fake(tmp_path / "cli", f'echo "$*" >> {calls}\n')
    r = _run("refresh-instruments.sh", {"CLI_WRAPPER": str(cli)})
    assert r.returncode == 0, r.stderr
    assert "refreshing from simulator" in r.stdout
    r = _run("refresh-instruments.sh", {"CLI_WRAPPER": str(cli), "INSTRUMENTS_SOURCE": "kite",
                                        "INSTRUMENTS_EXCHANGES": "NSE NFO"})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert calls.read_text().splitlines() == ["instruments refresh simulator",
                                              "instruments refresh kite --exchange NSE --exchange NFO"]  # fmt: skip
    # A malformed dump (the CLI exits 2) fails the job with that status and says nothing changed.
    broken = _fake(tmp_path / "cli2", "echo 'line 5, column expiry' >&2; exit 2\n")
    r = _run("refresh-instruments.sh", {"CLI_WRAPPER": str(broken)})
    assert r.returncode == 2
    assert "FAILED (exit 2); the instrument master was not changed" in r.stderr


def test_backup_dumps_checks_and_rotates(tmp_path: Path) -> None:
    bin_dir, backups = tmp_path / "bin", tmp_path / "backups"
    bin_dir.mkdir()
    backups.mkdir()
    log = tmp_path / "docker.log"
    # A fake `docker compose exec`: pg_dump prints a dump, pg_restore --list reads it.
    _fake(bin_dir / "docker", f"""\
        echo "$*" >> {log}
        case "$*" in
          *pg_dump*) printf 'PGDMP fake dump' ;;
          *"pg_restore --list"*) grep -q PGDMP ;;
          *) exit 9 ;;
        esac
        """)  # fmt: skip
    old, recent, other = backups / "ticktape-20200101T000000Z.dump", backups / "ticktape-recent.dump", backups / "notes.txt"
    for f in (old, recent, other):
        f.write_text("x")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    os.utime(other, (ten_days_ago, ten_days_ago))
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "BACKUP_DIR": str(backups),
        "BACKUP_KEEP_DAYS": "7",
        "COMPOSE_FILE": str(COMPOSE / "docker-compose.yml"),
    }
    r = _run("backup-db.sh", env)
    assert r.returncode == 0, r.stderr
    dumps = sorted(p.name for p in backups.glob("ticktape-*.dump"))
    assert old.name not in dumps, "dumps older than BACKUP_KEEP_DAYS are deleted"
    assert recent.name in dumps
    assert other.exists(), "only ticktape dumps are rotated"
    new = [d for d in dumps if d != recent.name]
    assert len(new) == 1
    assert (backups / new[0]).read_text() == "PGDMP fake dump"
    assert not list(backups.glob("*.partial"))
    assert "exec -T timescaledb" in log.read_text()
    # A dump pg_restore cannot read is not kept.
    _fake(bin_dir / "docker", """\
        case "$*" in *pg_dump*) printf 'garbage' ;; *"pg_restore --list"*) exit 1 ;; esac
        """)  # fmt: skip
    before = set(backups.iterdir())
    assert _run("backup-db.sh", env).returncode != 0
    assert set(backups.iterdir()) == before


def test_flow_entrypoint(tmp_path: Path) -> None:
    r = _run("flow-entrypoint.sh", {}, "echo", "flow ran")
    assert (r.returncode, r.stdout) == (0, "flow ran\n")
    same = _run("flow-entrypoint.sh", {"METRICS_RELAY_PORT": "9300", "TICKTAPE_METRICS_PORT": "9300"}, "true")
    assert same.returncode != 0
    assert _run("flow-entrypoint.sh", {}).returncode != 0


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def test_cron_entries() -> None:
    entries = []
    for raw in (COMPOSE / "cron" / "ticktape.cron").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            continue
        fields = line.split()
        assert len(fields) >= 7, f"expected 5 time fields, a user and a command: {raw!r}"
        for value, (lo, hi) in zip(fields[:5], _CRON_RANGES, strict=True):
            assert _CRON_FIELD.match(value), f"bad cron field {value!r} in {raw!r}"
            for n in map(int, re.findall(r"\d+", value.split("/")[0])):
                assert lo <= n <= hi, f"{value!r} out of range in {raw!r}"
        assert fields[5] == "ticktape", raw
        script = Path(fields[6])
        assert script.is_absolute(), raw
        assert (SCRIPTS / script.name).is_file(), f"{raw!r}: no compose/scripts/{script.name}"
        entries.append(" ".join(fields[6:]))
    jobs = " ".join(entries)
    for job in ("refresh-token.sh", "refresh-instruments.sh", "db retention", "backup-db.sh"):
        assert job in jobs
