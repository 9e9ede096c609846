"""Operator accounts against a real PostgreSQL: Argon2id passwords, lockout, TOTP with replay
rejection, pinned-algorithm JWTs, rotating refresh tokens with reuse detection, and an
append-only audit log that never holds a secret."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import jwt
import psycopg
import pyotp
import pytest
from argon2 import PasswordHasher

from api.credentials import MasterKeys, SecretBox
from api.security import (
    DEV_JWT_SECRET,
    AuthError,
    SecurityConfig,
    User,
    audit,
    authenticate,
    create_user,
    enable_totp,
    hash_password,
    issue_access_token,
    issue_refresh_token,
    logout,
    password_needs_rehash,
    rotate_refresh_token,
    setup_totp,
    verify_access_token,
    verify_password,
)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # on a 30 s TOTP step boundary
PASSWORD = "correct horse battery staple"


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(MasterKeys({"k1": os.urandom(32)}))


@pytest.fixture
def config() -> SecurityConfig:
    return SecurityConfig(jwt_secret=secrets.token_urlsafe(48))


@pytest.fixture
def alice(conn: psycopg.Connection) -> User:
    return create_user(conn, "alice", PASSWORD)


def _code(err: pytest.ExceptionInfo[AuthError]) -> str:
    return err.value.code


def _user(conn: psycopg.Connection, name: str = "alice") -> dict[str, object]:
    cur = conn.execute("SELECT * FROM users WHERE username = %s", (name,))
    names = [d.name for d in cur.description or []]
    row = cur.fetchone()
    assert row is not None
    return dict(zip(names, row, strict=True))


def _audit_rows(conn: psycopg.Connection) -> list[tuple[str, str, bool, dict[str, object]]]:
    return conn.execute("SELECT actor, action, success, details FROM audit_log ORDER BY id").fetchall()


# -- passwords and users ---------------------------------------------------------------------


def test_password_hash_is_argon2id_and_verifies() -> None:
    h = hash_password(PASSWORD)
    assert h.startswith("$argon2id$")
    assert PASSWORD not in h
    assert verify_password(h, PASSWORD)
    assert not verify_password(h, PASSWORD + "!")
    assert not verify_password("not-a-hash", PASSWORD)
    assert not password_needs_rehash(h)
    assert password_needs_rehash(PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD))


def test_weak_hash_is_upgraded_at_login(conn: psycopg.Connection, alice: User, box: SecretBox) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)
    conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (weak, alice.id))
    authenticate(conn, "alice", PASSWORD, now=T0, box=box)
    upgraded = str(_user(conn)["password_hash"])
    assert upgraded != weak
    assert not password_needs_rehash(upgraded)
    assert verify_password(upgraded, PASSWORD)


@pytest.mark.parametrize("username", ["ab", "Alice", "al ice", "bob!", "x" * 65, "", "émile"])
def test_create_user_refuses_bad_usernames(conn: psycopg.Connection, username: str) -> None:
    with pytest.raises(ValueError, match="username"):
        create_user(conn, username, PASSWORD)


def test_create_user_refuses_short_password_and_duplicates(conn: psycopg.Connection) -> None:
    with pytest.raises(ValueError, match="expected 12-1024 characters, got 11") as err:
        create_user(conn, "bob", "short-pass1")  # 11 characters
    assert "short-pass1" not in str(err.value)
    user = create_user(conn, "bob.trader_1", PASSWORD)
    assert user == User(user.id, "bob.trader_1", totp_enabled=False)
    with pytest.raises(ValueError, match="taken"):
        create_user(conn, "bob.trader_1", PASSWORD)
    assert str(_user(conn, "bob.trader_1")["password_hash"]).startswith("$argon2id$")


# -- login and lockout -----------------------------------------------------------------------


def test_login_succeeds_and_unknown_user_is_bad_credentials(conn: psycopg.Connection, alice: User, box: SecretBox) -> None:
    assert authenticate(conn, "alice", PASSWORD, now=T0, client_ip="10.0.0.1", box=box) == alice
    with pytest.raises(AuthError) as err:
        authenticate(conn, "mallory", PASSWORD, now=T0, box=box)
    assert _code(err) == "bad_credentials"
    rows = _audit_rows(conn)
    assert rows == [("alice", "login", True, {}), ("?", "login", False, {"error": "bad_credentials"})]


def test_lockout_after_five_failures_then_unlock_after_the_period(
    conn: psycopg.Connection, alice: User, box: SecretBox
) -> None:
    for i in range(5):
        with pytest.raises(AuthError) as err:
            authenticate(conn, "alice", f"wrong password {i}", now=T0 + timedelta(seconds=i), box=box)
        assert _code(err) == "bad_credentials"
    locked_until = _user(conn)["locked_until"]
    assert locked_until == T0 + timedelta(seconds=4) + timedelta(minutes=15)
    # Locked: even the right password is refused, and the refusal does not extend the lock.
    for later in (timedelta(minutes=1), timedelta(minutes=14)):
        with pytest.raises(AuthError) as err:
            authenticate(conn, "alice", PASSWORD, now=T0 + later, box=box)
        assert _code(err) == "locked"
    assert _user(conn)["locked_until"] == locked_until
    user = authenticate(conn, "alice", PASSWORD, now=T0 + timedelta(minutes=16), box=box)
    assert user == alice
    state = _user(conn)
    assert (state["failed_attempts"], state["locked_until"]) == (0, None)
    fifth = _audit_rows(conn)[4]
    assert fifth[3]["error"] == "bad_credentials" and "locked_until" in fifth[3]


def test_success_resets_the_failure_count(conn: psycopg.Connection, alice: User, box: SecretBox) -> None:
    for _ in range(4):
        with pytest.raises(AuthError):
            authenticate(conn, "alice", "not the password", now=T0, box=box)
    assert _user(conn)["failed_attempts"] == 4
    authenticate(conn, "alice", PASSWORD, now=T0, box=box)
    assert _user(conn)["failed_attempts"] == 0
    with pytest.raises(AuthError) as err:
        authenticate(conn, "alice", "not the password", now=T0, box=box)
    assert _code(err) == "bad_credentials"  # a fresh count, not a lock


def test_failures_survive_the_callers_rollback(database_url: str, alice: User, box: SecretBox) -> None:
    # A pool connection rolls back when the route raises; the failure must already be committed.
    with psycopg.connect(database_url) as c:
        with pytest.raises(AuthError):
            authenticate(c, "alice", "not the password", now=T0, box=box)
        c.rollback()
        assert c.execute("SELECT failed_attempts FROM users").fetchone() == (1,)
        c.rollback()
        assert c.execute("SELECT count(*) FROM audit_log").fetchone() == (1,)
        # Inside an open transaction the refusal could be rolled back with it: refused outright.
        with pytest.raises(RuntimeError, match="no transaction open"):
            authenticate(c, "alice", PASSWORD, now=T0, box=box)


# -- TOTP ------------------------------------------------------------------------------------


def _enrol(conn: psycopg.Connection, user: User, box: SecretBox) -> pyotp.TOTP:
    uri = setup_totp(conn, user.id, box)
    otp = pyotp.parse_uri(uri)
    assert isinstance(otp, pyotp.TOTP)
    enable_totp(conn, user.id, otp.at(T0), T0, box=box)
    return otp


def test_totp_setup_stores_the_secret_sealed_and_enable_needs_a_valid_code(
    conn: psycopg.Connection, alice: User, box: SecretBox
) -> None:
    with pytest.raises(AuthError) as err:
        enable_totp(conn, alice.id, "123456", T0, box=box)
    assert _code(err) == "totp_not_setup"
    uri = setup_totp(conn, alice.id, box)
    assert uri.startswith("otpauth://totp/ticktape:alice?")
    otp = pyotp.parse_uri(uri)
    stored = bytes(_user(conn)["totp_secret_enc"])  # type: ignore[call-overload]
    assert otp.secret.encode() not in stored
    wrong = f"{(int(otp.at(T0)) + 1) % 1_000_000:06d}"
    for bad in (wrong, "12345", "abcdef", ""):
        with pytest.raises(AuthError) as err:
            enable_totp(conn, alice.id, bad, T0, box=box)
        assert _code(err) == "totp_invalid"
    assert _user(conn)["totp_enabled"] is False
    enable_totp(conn, alice.id, otp.at(T0), T0, box=box)
    assert _user(conn)["totp_enabled"] is True
    with pytest.raises(AuthError) as err:
        setup_totp(conn, alice.id, box)  # re-enrolling would silently replace the second factor
    assert _code(err) == "totp_already_enabled"


def test_totp_login_rejects_missing_and_replayed_codes(conn: psycopg.Connection, alice: User, box: SecretBox) -> None:
    otp = _enrol(conn, alice, box)
    with pytest.raises(AuthError) as err:
        authenticate(conn, "alice", PASSWORD, None, T0, box=box)
    assert _code(err) == "totp_required"
    with pytest.raises(AuthError) as err:
        authenticate(conn, "alice", PASSWORD, otp.at(T0), T0, box=box)  # the code used to enable
    assert _code(err) == "totp_replayed"
    t1 = T0 + timedelta(seconds=30)
    assert authenticate(conn, "alice", PASSWORD, otp.at(t1), t1, box=box).totp_enabled
    for code in (otp.at(t1), otp.at(T0)):  # the same step again, and an older one still in the window
        with pytest.raises(AuthError) as err:
            authenticate(conn, "alice", PASSWORD, code, t1 + timedelta(seconds=5), box=box)
        assert _code(err) == "totp_replayed"
    # The window accepts the next step (a fast phone clock); that step is then spent too.
    t2 = T0 + timedelta(minutes=5)
    authenticate(conn, "alice", PASSWORD, otp.at(t2 + timedelta(seconds=30)), t2, box=box)
    assert _user(conn)["last_totp_step"] == int(t2.timestamp()) // 30 + 1


def test_wrong_totp_codes_count_toward_lockout(conn: psycopg.Connection, alice: User, box: SecretBox) -> None:
    otp = _enrol(conn, alice, box)
    now = T0 + timedelta(seconds=30)  # the enrolment step is still inside the window
    wrong = f"{(int(otp.at(now)) + 7) % 1_000_000:06d}"
    for _ in range(3):
        with pytest.raises(AuthError) as err:
            authenticate(conn, "alice", PASSWORD, wrong, now, box=box)
        assert _code(err) == "totp_invalid"
    with pytest.raises(AuthError) as err:
        authenticate(conn, "alice", PASSWORD, otp.at(T0), now, box=box)  # a replay counts as well
    assert _code(err) == "totp_replayed"
    with pytest.raises(AuthError) as err:
        authenticate(conn, "alice", "wrong password!", otp.at(now), now, box=box)
    assert _code(err) == "bad_credentials"
    with pytest.raises(AuthError) as err:
        authenticate(conn, "alice", PASSWORD, otp.at(now), now, box=box)
    assert _code(err) == "locked"


# -- access tokens ---------------------------------------------------------------------------


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(config: SecurityConfig, **extra: object) -> dict[str, object]:
    now = int(T0.timestamp())
    base: dict[str, object] = {
        "sub": "1", "iat": now, "exp": now + 900, "jti": "j1", "typ": "access", "iss": config.issuer, "aud": config.audience,
    }  # fmt: skip
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def test_access_token_round_trip_and_expiry(config: SecurityConfig) -> None:
    token = issue_access_token(42, config, T0)
    claims = verify_access_token(token, config, T0 + timedelta(minutes=14, seconds=59))
    assert (claims.user_id, claims.issued_at, claims.expires_at) == (42, T0, T0 + timedelta(minutes=15))
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    assert issue_access_token(42, config, T0) != token  # a fresh jti every time
    with pytest.raises(AuthError) as err:
        verify_access_token(token, config, T0 + timedelta(minutes=15))
    assert _code(err) == "token_expired"


def test_a_remembered_verification_is_bound_to_the_secret_and_to_the_clock(config: SecurityConfig) -> None:
    # Verifications are remembered per token (api.security._verified_claims): a token that
    # verified once must still expire on time, and must not verify under another secret.
    token = issue_access_token(7, config, T0)
    for _ in range(2):
        assert verify_access_token(token, config, T0 + timedelta(minutes=1)).user_id == 7
    other = SecurityConfig(jwt_secret=secrets.token_urlsafe(48))
    for cfg, at, code in ((other, T0, "token_invalid"), (config, T0 + timedelta(minutes=15), "token_expired")):
        with pytest.raises(AuthError) as err:
            verify_access_token(token, cfg, at)
        assert _code(err) == code
    # A refusal is never remembered as anything else: the same forgery is refused every time.
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for _ in range(2):
        with pytest.raises(AuthError) as err:
            verify_access_token(forged, config, T0)
        assert _code(err) == "token_invalid"


def test_access_token_rejects_none_other_algorithms_and_forgeries(config: SecurityConfig) -> None:
    claims = _claims(config)
    good = jwt.encode(claims, config.jwt_secret, algorithm="HS256")
    assert verify_access_token(good, config, T0).user_id == 1
    head, body, sig = good.split(".")
    forged = [
        _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + ".",  # unsigned
        _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(claims) + "." + sig,
        jwt.encode(claims, config.jwt_secret, algorithm="HS512"),  # right secret, wrong algorithm
        jwt.encode(claims, config.jwt_secret, algorithm="HS384"),
        jwt.encode(claims, secrets.token_urlsafe(48), algorithm="HS256"),  # wrong key
        head + "." + _b64({**claims, "sub": "2"}) + "." + sig,  # payload swapped under the old signature
        head + "." + body + "." + sig[:-2] + ("AA" if sig[-2:] != "AA" else "BB"),
        jwt.encode(_claims(config, typ="refresh"), config.jwt_secret, algorithm="HS256"),
        jwt.encode(_claims(config, aud="someone-else"), config.jwt_secret, algorithm="HS256"),
        jwt.encode(_claims(config, iss="evil"), config.jwt_secret, algorithm="HS256"),
        jwt.encode(_claims(config, jti=None), config.jwt_secret, algorithm="HS256"),
        jwt.encode(_claims(config, exp=None), config.jwt_secret, algorithm="HS256"),
        "not.a.jwt",
        "",
    ]
    for token in forged:
        with pytest.raises(AuthError) as err:
            verify_access_token(token, config, T0)
        assert _code(err) == "token_invalid", token


# -- refresh tokens --------------------------------------------------------------------------


def test_refresh_rotation_and_reuse_revokes_the_family(
    conn: psycopg.Connection, alice: User, config: SecurityConfig
) -> None:
    r1 = issue_refresh_token(conn, alice.id, T0)
    stored = conn.execute("SELECT token_hash FROM refresh_tokens").fetchone()
    assert stored == (hashlib.sha256(r1.encode()).digest(),)
    a2, r2 = rotate_refresh_token(conn, r1, T0 + timedelta(minutes=10), config=config)
    assert verify_access_token(a2, config, T0 + timedelta(minutes=10)).user_id == alice.id
    _, r3 = rotate_refresh_token(conn, r2, T0 + timedelta(minutes=20), config=config)
    assert len({r1, r2, r3}) == 3
    # r1 was already rotated: someone replays it. The family dies, including the newest r3.
    with pytest.raises(AuthError) as err:
        rotate_refresh_token(conn, r1, T0 + timedelta(minutes=30), config=config)
    assert _code(err) == "refresh_reused"
    with pytest.raises(AuthError) as err:
        rotate_refresh_token(conn, r3, T0 + timedelta(minutes=31), config=config)
    assert _code(err) == "refresh_invalid"
    live = conn.execute("SELECT count(*) FILTER (WHERE revoked_at IS NULL), count(*) FROM refresh_tokens").fetchone()
    assert live == (0, 3)
    parents = conn.execute("SELECT parent_id IS NULL FROM refresh_tokens ORDER BY id").fetchall()
    assert parents == [(True,), (False,), (False,)]


def test_refresh_expiry_unknown_tokens_and_logout(conn: psycopg.Connection, alice: User, config: SecurityConfig) -> None:
    r1 = issue_refresh_token(conn, alice.id, T0)
    with pytest.raises(AuthError) as err:
        rotate_refresh_token(conn, r1, T0 + timedelta(days=7), config=config)
    assert _code(err) == "refresh_expired"
    with pytest.raises(AuthError) as err:
        rotate_refresh_token(conn, "made-up-token", T0, config=config)
    assert _code(err) == "refresh_invalid"
    r2 = issue_refresh_token(conn, alice.id, T0)
    _, r3 = rotate_refresh_token(conn, r2, T0, config=config)
    assert logout(conn, r3, T0)
    assert not logout(conn, "made-up-token", T0)
    with pytest.raises(AuthError) as err:
        rotate_refresh_token(conn, r3, T0, config=config)
    assert _code(err) == "refresh_invalid"


# -- audit -----------------------------------------------------------------------------------


def test_audit_rows_record_outcomes_and_no_secrets(
    conn: psycopg.Connection, alice: User, box: SecretBox, config: SecurityConfig
) -> None:
    wrong = "hunter2-but-longer"
    with pytest.raises(AuthError):
        authenticate(conn, "alice", wrong, now=T0, client_ip="192.0.2.7", box=box)
    with pytest.raises(AuthError):
        authenticate(conn, wrong, PASSWORD, now=T0, box=box)  # a password typed into the username field
    otp = _enrol(conn, alice, box)
    t1 = T0 + timedelta(seconds=30)
    code = otp.at(t1)
    authenticate(conn, "alice", PASSWORD, code, t1, client_ip="192.0.2.7", box=box)
    with pytest.raises(AuthError):
        authenticate(conn, "alice", PASSWORD, code, t1, box=box)
    r1 = issue_refresh_token(conn, alice.id, t1)
    access, r2 = rotate_refresh_token(conn, r1, t1, config=config)
    with pytest.raises(AuthError):
        rotate_refresh_token(conn, r1, t1, config=config)
    logout(conn, r2, t1)

    rows = conn.execute("SELECT actor, action, success, client_ip, details FROM audit_log ORDER BY id").fetchall()
    summary = [(a, act, ok, d.get("error")) for a, act, ok, _, d in rows]
    assert summary == [
        ("alice", "login", False, "bad_credentials"),
        ("?", "login", False, "bad_credentials"),
        ("alice", "totp_setup", True, None),
        ("alice", "totp_enable", True, None),
        ("alice", "login", True, None),
        ("alice", "login", False, "totp_replayed"),
        ("alice", "token_refresh", True, None),
        ("alice", "token_refresh", False, "refresh_reused"),
        ("alice", "logout", True, None),
    ]
    assert rows[0][3] == "192.0.2.7"
    dump = conn.execute("SELECT string_agg(audit_log::text, ' ') FROM audit_log").fetchone()
    assert dump is not None
    for secret in (PASSWORD, wrong, code, otp.secret, r1, r2, access, config.jwt_secret):
        assert secret not in dump[0]


def test_audit_refuses_secret_looking_details(conn: psycopg.Connection) -> None:
    for key in ("password", "refresh_token", "totp_code", "api_key"):
        with pytest.raises(ValueError, match="secrets"):
            audit(conn, "alice", "strategy_enable", "ema_cross", True, None, {key: "x"})
    audit(conn, "alice", "strategy_enable", "ema_cross", True, "127.0.0.1", {"strategy": "ema_cross"}, T0)
    assert _audit_rows(conn) == [("alice", "strategy_enable", True, {"strategy": "ema_cross"})]


def test_audit_log_refuses_update_and_delete(conn: psycopg.Connection) -> None:
    audit(conn, "alice", "halt", "paper", True, None)
    for statement in ("UPDATE audit_log SET success = FALSE", "DELETE FROM audit_log"):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute(statement)  # type: ignore[arg-type]
    assert conn.execute("SELECT count(*), bool_and(success) FROM audit_log").fetchone() == (1, True)


# -- configuration ---------------------------------------------------------------------------


def test_config_from_env_refuses_missing_short_and_default_secrets() -> None:
    good = secrets.token_urlsafe(48)
    cfg = SecurityConfig.from_env({"TICKTAPE_JWT_SECRET": good, "TICKTAPE_ACCESS_TOKEN_MINUTES": "5"})
    assert cfg.access_ttl == timedelta(minutes=5)
    assert good not in repr(cfg)
    cases = [
        ({}, "TICKTAPE_JWT_SECRET is not set"),
        ({"TICKTAPE_JWT_SECRET": "short"}, "TICKTAPE_JWT_SECRET is too short"),
        ({"TICKTAPE_JWT_SECRET": DEV_JWT_SECRET, "TICKTAPE_ENV": "live"}, "TICKTAPE_JWT_SECRET is a known default"),
        ({"TICKTAPE_JWT_SECRET": "changethis" * 4, "TICKTAPE_ENV": "paper"}, "known default"),
        ({"TICKTAPE_JWT_SECRET": good, "TICKTAPE_LOGIN_MAX_FAILURES": "0"}, "TICKTAPE_LOGIN_MAX_FAILURES='0'"),
        ({"TICKTAPE_JWT_SECRET": good, "TICKTAPE_REFRESH_TOKEN_DAYS": "x"}, "TICKTAPE_REFRESH_TOKEN_DAYS='x'"),
    ]
    for environ, message in cases:
        with pytest.raises(ValueError, match=message):
            SecurityConfig.from_env(environ)
    assert SecurityConfig.from_env({"TICKTAPE_JWT_SECRET": DEV_JWT_SECRET}).jwt_secret == DEV_JWT_SECRET  # dev
    with pytest.raises(ValueError, match="jwt_secret"):
        SecurityConfig(jwt_secret="too-short")
