"""Authentication through the API on a real PostgreSQL: every refusal has the right status and
an audit row; tokens, refresh rotation, TOTP, lockout, rate limits, headers, WebSocket origin."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pyotp
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.security import create_user, issue_access_token
from connectors.kafka import KafkaClientConfig
from connectors.settings import load_settings
from schemas.topics import TopicCatalog

PASSWORD = "correct horse battery staple"


@pytest.fixture
def env(kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, tmp_path: Path) -> Iterator[tuple]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        create_user(conn, "operator", PASSWORD)
    s = load_settings({"TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap, "TICKTAPE_DATABASE_URL": database_url,
                       "TICKTAPE_TOPIC_PREFIX": catalog.prefix, "TICKTAPE_HOME": str(tmp_path)})  # fmt: skip
    app = create_app(s, environ={})
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, app, database_url


def _audit(url: str, action: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT actor, success, details::text FROM audit_log WHERE action = %s ORDER BY id", (action,)
        ).fetchall()


def _login(client: TestClient, **extra: str) -> object:
    return client.post("/api/auth/login", json={"username": "operator", "password": PASSWORD, **extra})


def _b64(d: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def test_tokens_refused_with_401_and_audited(env: tuple) -> None:
    client, app, url = env
    assert client.get("/api/strategies").status_code == 401  # no token
    good = _login(client).json()["access_token"]
    assert client.get("/api/strategies", headers={"Authorization": f"Bearer {good}"}).status_code == 200
    sec = app.state.ticktape.security
    expired = issue_access_token(1, sec, datetime.now(UTC) - timedelta(hours=2))
    head, body, _sig = good.split(".")
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(b'x' * 32).rstrip(b'=').decode()}"
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    alg_none = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."
    for token, code in ((expired, "token_expired"), (forged, "token_invalid"), (alg_none, "token_invalid")):
        r = client.get("/api/strategies", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["detail"] == code, (code, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
    reasons = [json.loads(d)["reason"] for _a, ok, d in _audit(url, "token_refused") if not ok]
    assert reasons == ["token_expired", "token_invalid", "token_invalid"]


def test_refresh_rotation_and_reuse(env: tuple) -> None:
    client, _app, url = env
    first = _login(client).json()
    second = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert second.status_code == 200
    reused = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reused.status_code == 401 and reused.json()["detail"] == "refresh_reused"
    # The whole family is revoked: the newest token is dead too.
    newest = client.post("/api/auth/refresh", json={"refresh_token": second.json()["refresh_token"]})
    assert newest.status_code == 401 and newest.json()["detail"] == "refresh_invalid"
    rows = _audit(url, "token_refresh")
    assert [ok for _a, ok, _d in rows] == [True, False, False]
    assert first["refresh_token"] not in "".join(d for _a, _ok, d in rows)


def test_totp_replay_brute_force_and_lockout(env: tuple) -> None:
    client, _app, url = env
    auth = {"Authorization": f"Bearer {_login(client).json()['access_token']}"}
    uri = client.post("/api/auth/totp/setup", headers=auth).json()["otpauth_uri"]
    totp = pyotp.parse_uri(uri)
    assert client.post("/api/auth/totp/enable", headers=auth, json={"code": totp.now()}).status_code == 204
    assert client.get("/api/auth/profile", headers=auth).json()["totp_enabled"] is True
    assert _login(client).json()["detail"] == "totp_required"
    code = totp.at(datetime.now(UTC) + timedelta(seconds=30))  # the next step: not yet used
    assert _login(client, totp_code=code).status_code == 200
    replay = _login(client, totp_code=code)
    assert replay.status_code == 401 and replay.json()["detail"] == "totp_replayed"
    for _ in range(4):  # brute force: 1 replay + 4 wrong codes = 5 counted failures -> locked
        assert _login(client, totp_code="000000").status_code in (401, 423)
    locked = _login(client, totp_code=totp.now())
    assert locked.status_code == 423 and locked.json()["detail"] == "locked"
    logins = _audit(url, "login")
    assert sum(not ok for _a, ok, _d in logins) >= 6 and any("locked_until" in d for _a, _ok, d in logins)


def test_rate_limit_and_secure_headers(env: tuple) -> None:
    client, _app, _url = env
    codes = [client.post("/api/auth/login", json={"username": "x", "password": "y"}).status_code for _ in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    r = client.post("/api/auth/login", json={"username": "x", "password": "y"})
    assert int(r.headers["retry-after"]) > 0 and r.headers["content-type"].startswith("application/problem+json")
    h = client.get("/api/strategies").headers
    assert h["x-content-type-options"] == "nosniff" and h["x-frame-options"] == "DENY"
    assert "default-src 'none'" in h["content-security-policy"] and h["cache-control"] == "no-store"
    nul = client.post("/api/risk/emergency-stop", json={"reason": "a\u0000b"}, headers={"Authorization": "Bearer x"})
    assert nul.status_code == 422


def test_websocket_refusals_are_audited(env: tuple) -> None:
    client, app, url = env
    token = issue_access_token(1, app.state.ticktape.security)
    from starlette.websockets import WebSocketDisconnect

    for path, headers in ((f"/ws?token={token}", {"origin": "https://evil.example"}), ("/ws?token=bad", {})):
        with pytest.raises(WebSocketDisconnect) as err, client.websocket_connect(path, headers=headers):
            pass
        assert err.value.code == 1008
    reasons = [json.loads(d)["reason"] for _a, ok, d in _audit(url, "ws_connect") if not ok]
    assert reasons == ["origin https://evil.example not allowed", "token: token_invalid"]


def test_user_create_cli_and_request_metrics(env: tuple, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    client, _app, url = env
    cli = Path(sys.executable).with_name("ticktape")
    run_env = {**os.environ, "TICKTAPE_DATABASE_URL": url, "TICKTAPE_KAFKA_BOOTSTRAP": "127.0.0.1:1",
               "TICKTAPE_HOME": str(tmp_path)}  # fmt: skip

    def create(name: str, password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(cli), "user", "create", name, "--password-stdin"], input=password + "\n", env=run_env,
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip

    ok = create("alice", "a long enough password")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (
        client.post("/api/auth/login", json={"username": "alice", "password": "a long enough password"}).status_code == 200
    )
    assert create("alice", "a long enough password").returncode == 2
    short = create("bob", "short")
    assert short.returncode == 2 and "password" in short.stdout
    metrics = client.get("/metrics").text
    assert 'ticktape_api_requests_total{method="POST",route="/api/auth/login",status="200"}' in metrics
    assert 'ticktape_api_request_seconds_bucket{le="0.005",method="POST",route="/api/auth/login"}' in metrics
