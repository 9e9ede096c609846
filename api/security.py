"""Operator accounts: Argon2id passwords, lockout, TOTP, JWT access and rotating refresh tokens.

Rules:

- Passwords are hashed with Argon2id (argon2-cffi); a hash made with weaker parameters is
  replaced at the next successful login. An unknown user costs one dummy verification, so
  timing does not reveal which usernames exist.
- ``LockoutPolicy.max_failures`` consecutive failures (wrong password, wrong or replayed TOTP
  code) lock the account for ``lock_for``; the counter then restarts and a success resets it.
- TOTP (RFC 6238, 30 s, 6 digits) accepts the previous, current and next step; the matched
  step is recorded in ``users.last_totp_step`` and that step or an older one is refused
  (``totp_replayed``). The secret is stored sealed by :class:`api.credentials.SecretBox`.
- Access tokens are JWTs signed with HS256 only (decoding pins ``algorithms=["HS256"]``), with
  ``sub, iat, exp, jti, typ="access", iss, aud``, all required and checked.
- Refresh tokens are opaque random strings stored as SHA-256 hashes in ``refresh_tokens``.
  Each use rotates: the token is marked used and a child in the same family is issued.
  Presenting a used token again means it leaked: the whole family is revoked
  (``refresh_reused``), so the thief's and the owner's newest tokens both stop working.
- Every login, refresh, logout and TOTP action appends an ``audit_log`` row with the outcome
  code; never a password, token or code (``audit`` refuses detail keys that look secret),
  nor an unknown username (often a password typed into the wrong field): that actor is "?".
- Functions that refuse a request *after* recording state (failure counters, revoked
  families, audit rows) commit that state in their own transaction and then raise, so they
  need a connection with no transaction open. ``now`` defaults to the clock only here, at
  the edge; tests pass it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from types import TracebackType
from typing import Literal, NamedTuple

import jwt
import psycopg
import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from api.credentials import Sealed, SecretBox

AuthCode = Literal[
    "bad_credentials", "locked", "totp_required", "totp_invalid", "totp_replayed", "totp_not_setup",
    "totp_already_enabled", "token_invalid", "token_expired", "refresh_invalid", "refresh_expired", "refresh_reused",
]  # fmt: skip
USERNAME = re.compile(r"^[a-z0-9_.-]{3,64}$")
MIN_PASSWORD, MAX_PASSWORD = 12, 1024  # the cap keeps Argon2 from hashing megabytes per request
ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
DEV_JWT_SECRET = "ticktape-dev-jwt-secret-not-for-paper-or-live"  # the one refused outside dev
KNOWN_DEFAULT_SECRETS = frozenset({DEV_JWT_SECRET, "changethis" * 4, "changeme" * 4, "secret" * 6, "0" * 32, "x" * 32})
TOTP_INTERVAL, TOTP_DIGITS = 30, 6
_SECRET_WORDS = ("password", "secret", "token", "otp", "api_key", "credential")
Details = dict[str, str | int | bool | None]
_HASHER = PasswordHasher()  # argon2-cffi defaults: Argon2id, RFC 9106 low-memory profile


class AuthError(Exception):
    """A refused authentication; ``code`` is safe to show the client and to audit."""

    def __init__(self, code: AuthCode) -> None:
        super().__init__(code)
        self.code: AuthCode = code


@dataclass(frozen=True)
class LockoutPolicy:
    max_failures: int = 5
    lock_for: timedelta = timedelta(minutes=15)


@dataclass(frozen=True)
class SecurityConfig:
    """Token and lockout settings, built once at the edge (``from_env``); repr hides the secret."""

    jwt_secret: str = field(repr=False)
    issuer: str = "ticktape"
    audience: str = "ticktape-api"
    access_ttl: timedelta = timedelta(minutes=15)
    refresh_ttl: timedelta = timedelta(days=7)
    lockout: LockoutPolicy = LockoutPolicy()
    totp_issuer: str = "ticktape"

    def __post_init__(self) -> None:
        if len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            msg = f"jwt_secret: expected at least {MIN_SECRET_BYTES} bytes, got {len(self.jwt_secret.encode())}"
            raise ValueError(msg)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> SecurityConfig:
        """Read ``TICKTAPE_JWT_SECRET`` (required, >= 32 bytes, no known default unless
        ``TICKTAPE_ENV=dev``), ``TICKTAPE_ACCESS_TOKEN_MINUTES``, ``TICKTAPE_REFRESH_TOKEN_DAYS``,
        ``TICKTAPE_LOGIN_MAX_FAILURES`` and ``TICKTAPE_LOGIN_LOCKOUT_MINUTES``."""
        var = "TICKTAPE_JWT_SECRET"
        secret, env = environ.get(var, ""), environ.get("TICKTAPE_ENV", "dev")
        problem = None
        if not secret:
            problem = "is not set"
        elif len(secret.encode()) < MIN_SECRET_BYTES:
            problem = f"is too short ({len(secret.encode())} bytes)"
        elif env != "dev" and secret.lower() in KNOWN_DEFAULT_SECRETS:
            problem = f"is a known default, refused with TICKTAPE_ENV={env!r}"
        if problem:
            msg = f"{var} {problem}: expected a random string of at least {MIN_SECRET_BYTES} bytes (openssl rand -base64 48)"
            raise ValueError(msg)
        return cls(
            jwt_secret=secret,
            access_ttl=timedelta(minutes=_env_int(environ, "TICKTAPE_ACCESS_TOKEN_MINUTES", 15, 60)),
            refresh_ttl=timedelta(days=_env_int(environ, "TICKTAPE_REFRESH_TOKEN_DAYS", 7, 90)),
            lockout=LockoutPolicy(
                _env_int(environ, "TICKTAPE_LOGIN_MAX_FAILURES", 5, 100),
                timedelta(minutes=_env_int(environ, "TICKTAPE_LOGIN_LOCKOUT_MINUTES", 15, 1440)),
            ),
        )


def _env_int(environ: Mapping[str, str], name: str, default: int, high: int) -> int:
    raw = environ.get(name, str(default))
    if not raw.strip().isdigit() or not 1 <= int(raw) <= high:
        msg = f"{name}={raw!r}: expected a whole number in [1, {high}]"
        raise ValueError(msg)
    return int(raw)


@dataclass(frozen=True)
class User:
    id: int
    username: str
    totp_enabled: bool


@dataclass(frozen=True)
class AccessClaims:
    user_id: int
    jti: str
    issued_at: datetime
    expires_at: datetime


class TokenPair(NamedTuple):
    access_token: str
    refresh_token: str

    def __repr__(self) -> str:
        return "TokenPair(access_token=<hidden>, refresh_token=<hidden>)"


def _clock(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        msg = f"now={now.isoformat()} has no UTC offset"
        raise ValueError(msg)
    return now


def hash_password(password: str) -> str:
    """An Argon2id hash (PHC string) of ``password``."""
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches; False for a mismatch or a malformed hash."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _HASHER.check_needs_rehash(password_hash)


@cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))


def create_user(conn: psycopg.Connection, username: str, password: str) -> User:
    """Create an operator; ``ValueError`` for a bad or taken username or a short password."""
    if not USERNAME.fullmatch(username):
        msg = f"username {username[:80]!r}: expected 3-64 characters of [a-z0-9_.-]"
        raise ValueError(msg)
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        msg = f"password: expected {MIN_PASSWORD}-{MAX_PASSWORD} characters, got {len(password)}"
        raise ValueError(msg)
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO users (username, password_hash) VALUES (%s, %s) RETURNING id",
                (username, hash_password(password)),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        msg = f"username {username!r} is taken"
        raise ValueError(msg) from None
    assert row is not None
    return User(row[0], username, totp_enabled=False)


def audit(
    conn: psycopg.Connection, actor: str, action: str, target: str | None, success: bool, client_ip: str | None,
    details: Mapping[str, str | int | bool | None] | None = None, at: datetime | None = None,
) -> None:  # fmt: skip
    """Append one audit_log row (the table refuses UPDATE/DELETE).

    Detail keys that name a secret (password, token, otp, ...) are refused: pass outcomes
    and ids, never the values.
    """
    details = dict(details or {})
    leaked = [k for k in details if any(w in k.lower() for w in _SECRET_WORDS)]
    if leaked:
        msg = f"audit details must not carry secrets; refused keys {leaked}"
        raise ValueError(msg)
    conn.execute(
        "INSERT INTO audit_log (time, actor, action, target, success, client_ip, details)"
        " VALUES (COALESCE(%s, NOW()), %s, %s, %s, %s, %s, %s)",
        (at, actor[:64], action[:64], target[:200] if target else None, success, client_ip, Jsonb(details)),
    )


class _Attempt:
    """One audited attempt in one transaction, used as ``with _Attempt(...) as attempt:``.

    Leaving normally audits a success; an :class:`AuthError` is audited as a failure and
    committed *with* the attempt's writes (failure counters, a revoked family) before it
    propagates; any other exception rolls everything back.
    """

    def __init__(self, conn: psycopg.Connection, action: str, now: datetime, client_ip: str | None) -> None:
        if conn.info.transaction_status != TransactionStatus.IDLE:
            msg = "call with no transaction open: a refusal commits its audit row and counters, then raises"
            raise RuntimeError(msg)
        self.conn, self.action, self.now, self.client_ip = conn, action, now, client_ip
        self.actor: str = "?"
        self.target: str | None = None
        self.details: Details = {}
        self._tx = conn.transaction()

    def __enter__(self) -> _Attempt:
        self._tx.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Literal[False]:
        if exc is not None and not isinstance(exc, AuthError):
            self._tx.__exit__(kind, exc, tb)
            return False
        if isinstance(exc, AuthError):
            self.details["error"] = exc.code
        try:
            audit(self.conn, self.actor, self.action, self.target, exc is None, self.client_ip, self.details, self.now)
        except BaseException as err:
            self._tx.__exit__(type(err), err, err.__traceback__)
            raise
        self._tx.__exit__(None, None, None)
        return False


def _user_row(conn: psycopg.Connection, user_id: int) -> tuple[str, bool, bytes | None, int | None]:
    row = conn.execute(
        "SELECT username, totp_enabled, totp_secret_enc, last_totp_step FROM users WHERE id = %s FOR UPDATE", (user_id,)
    ).fetchone()
    if row is None:
        msg = f"no user with id={user_id}"
        raise LookupError(msg)
    return row[0], row[1], row[2], row[3]


def _totp_aad(user_id: int) -> bytes:
    return f"users/{user_id}/totp_secret".encode()


def _match_totp_step(box: SecretBox, user_id: int, blob: bytes | None, code: str, last: int | None, now: datetime) -> int:
    """The step ``code`` belongs to (previous, current or next), newer than ``last``."""
    if blob is None:
        raise AuthError(code="totp_not_setup")
    secret = box.decrypt(Sealed.from_bytes(bytes(blob)), _totp_aad(user_id)).decode()
    code = code.replace(" ", "")
    if len(code) != TOTP_DIGITS or not code.isdigit():
        raise AuthError(code="totp_invalid")
    otp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL)
    current = int(now.timestamp()) // TOTP_INTERVAL
    matched = [s for s in (current - 1, current, current + 1) if hmac.compare_digest(otp.generate_otp(s), code)]
    if not matched:
        raise AuthError(code="totp_invalid")
    fresh = [s for s in matched if last is None or s > last]
    if not fresh:
        raise AuthError(code="totp_replayed")
    return max(fresh)


def setup_totp(
    conn: psycopg.Connection, user_id: int, box: SecretBox, *, issuer: str = "ticktape",
    now: datetime | None = None, client_ip: str | None = None,
) -> str:  # fmt: skip
    """Store a new sealed TOTP secret (not enabled until :func:`enable_totp`); returns the
    ``otpauth://`` URI for the authenticator app. Refused while TOTP is enabled."""
    secret = pyotp.random_base32()
    with _Attempt(conn, "totp_setup", _clock(now), client_ip) as attempt:
        username, enabled, _, _ = _user_row(conn, user_id)
        attempt.actor = attempt.target = username
        if enabled:
            raise AuthError(code="totp_already_enabled")
        blob = box.encrypt(secret.encode(), _totp_aad(user_id)).to_bytes()
        conn.execute("UPDATE users SET totp_secret_enc = %s, last_totp_step = NULL WHERE id = %s", (blob, user_id))
    return pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_INTERVAL).provisioning_uri(name=username, issuer_name=issuer)


def enable_totp(
    conn: psycopg.Connection, user_id: int, code: str, now: datetime | None = None, *,
    box: SecretBox, client_ip: str | None = None,
) -> None:  # fmt: skip
    """Turn TOTP on once ``code`` proves the authenticator holds the secret from ``setup_totp``."""
    now = _clock(now)
    with _Attempt(conn, "totp_enable", now, client_ip) as attempt:
        username, enabled, blob, last = _user_row(conn, user_id)
        attempt.actor = attempt.target = username
        if enabled:
            raise AuthError(code="totp_already_enabled")
        step = _match_totp_step(box, user_id, blob, code, last, now)
        conn.execute("UPDATE users SET totp_enabled = TRUE, last_totp_step = %s WHERE id = %s", (step, user_id))


_COUNTED: frozenset[AuthCode] = frozenset({"bad_credentials", "totp_invalid", "totp_replayed"})


def authenticate(
    conn: psycopg.Connection, username: str, password: str, totp_code: str | None = None,
    now: datetime | None = None, client_ip: str | None = None, *,
    box: SecretBox, policy: LockoutPolicy = LockoutPolicy(),
) -> User:  # fmt: skip
    """Check password (and TOTP code when enabled); the user, or :class:`AuthError`.

    Counted failures: ``bad_credentials``, ``totp_invalid``, ``totp_replayed``. A missing
    code (``totp_required``) after a right password is the normal second step, not counted;
    a locked account is refused before its password is looked at.
    """
    now = _clock(now)
    with _Attempt(conn, "login", now, client_ip) as attempt:
        row = conn.execute(
            "SELECT id, password_hash, totp_enabled, totp_secret_enc, last_totp_step, failed_attempts, locked_until"
            " FROM users WHERE username = %s FOR UPDATE",
            (username,),
        ).fetchone()
        if row is None:
            verify_password(_dummy_hash(), password)  # the same cost as a real user
            # The attempt stays anonymous ("?"): an unknown "username" is often a password typed in the wrong field.
            raise AuthError(code="bad_credentials")
        user_id, pw_hash, totp_enabled, blob, last, failures, locked_until = row
        attempt.actor = attempt.target = username
        try:
            if locked_until is not None and now < locked_until:
                raise AuthError(code="locked")
            if not verify_password(pw_hash, password):
                raise AuthError(code="bad_credentials")
            if totp_enabled:
                if not totp_code:
                    raise AuthError(code="totp_required")
                step = _match_totp_step(box, user_id, blob, totp_code, last, now)
                conn.execute("UPDATE users SET last_totp_step = %s WHERE id = %s", (step, user_id))
        except AuthError as exc:
            if exc.code in _COUNTED:
                failures += 1
                if failures >= policy.max_failures:
                    # Locking restarts the count: after the lock the operator has max_failures tries again.
                    failures, locked_until = 0, now + policy.lock_for
                    attempt.details["locked_until"] = locked_until.isoformat()
                conn.execute(
                    "UPDATE users SET failed_attempts = %s, locked_until = %s WHERE id = %s",
                    (failures, locked_until, user_id),
                )
            raise
        if password_needs_rehash(pw_hash):
            conn.execute("UPDATE users SET password_hash = %s WHERE id = %s", (hash_password(password), user_id))
        conn.execute("UPDATE users SET failed_attempts = 0, locked_until = NULL WHERE id = %s", (user_id,))
        return User(user_id, username, totp_enabled)


def issue_access_token(user_id: int, config: SecurityConfig, now: datetime | None = None) -> str:
    """A signed HS256 JWT valid for ``config.access_ttl``."""
    now = _clock(now)
    iat, exp = int(now.timestamp()), int((now + config.access_ttl).timestamp())
    claims = dict(
        sub=str(user_id), iat=iat, exp=exp, jti=uuid.uuid4().hex, typ="access", iss=config.issuer, aud=config.audience
    )
    return jwt.encode(claims, config.jwt_secret, algorithm=ALGORITHM)


def verify_access_token(token: str, config: SecurityConfig, now: datetime | None = None) -> AccessClaims:
    """Claims of a valid token; ``AuthError`` ``token_expired`` or ``token_invalid`` otherwise."""
    claims = _verified_claims(token, config.jwt_secret, config.audience, config.issuer)
    if _clock(now) >= claims.expires_at:
        raise AuthError(code="token_expired")
    return claims


@lru_cache(maxsize=1024)
def _verified_claims(token: str, secret: str, audience: str, issuer: str) -> AccessClaims:
    """The claims of a token whose signature and claims check out (expiry aside: that depends
    on the clock and is checked on every use). Access tokens are stateless (logout revokes
    refresh tokens, and an access token simply expires), so a token that verified once verifies
    again: every request of a client presents the same token, and decoding it (base64, JSON,
    HMAC, claim checks) was a tenth of a busy read route's CPU. Only successes are cached (an
    exception is never memoized), keyed by the secret too, so a new secret re-checks everything."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],  # pinned: "none", HS384/HS512, RS*/ES* (key confusion) are refused
            audience=audience,
            issuer=issuer,
            # Expiry is checked by the caller against an explicit ``now`` (PyJWT only knows the wall clock).
            options={"require": list(_CLAIMS), "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        raise AuthError(code="token_invalid") from None
    exp, iat, sub = claims["exp"], claims["iat"], claims["sub"]
    if claims["typ"] != "access" or not (isinstance(exp, int) and isinstance(iat, int) and str(sub).isdigit()):
        raise AuthError(code="token_invalid")
    return AccessClaims(int(sub), str(claims["jti"]), datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC))


_CLAIMS = ("sub", "iat", "exp", "jti", "typ", "iss", "aud")


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _insert_refresh(
    conn: psycopg.Connection, user_id: int, family: uuid.UUID, parent: int | None, now: datetime, ttl: timedelta
) -> str:
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, parent_id, issued_at, expires_at)"
        " VALUES (%s, %s, %s, %s, %s, %s)",
        (_token_hash(token), user_id, family, parent, now, now + ttl),
    )
    return token


def issue_refresh_token(
    conn: psycopg.Connection, user_id: int, now: datetime | None = None, *, ttl: timedelta = timedelta(days=7)
) -> str:
    """Start a new token family (at login); returns the opaque token (only its hash is stored)."""
    now = _clock(now)
    with conn.transaction():
        return _insert_refresh(conn, user_id, uuid.uuid4(), None, now, ttl)


def revoke_family(conn: psycopg.Connection, family_id: uuid.UUID, now: datetime | None = None) -> int:
    """Revoke every live token of a family; returns how many were revoked."""
    sql = "UPDATE refresh_tokens SET revoked_at = %s WHERE family_id = %s AND revoked_at IS NULL"
    return conn.execute(sql, (_clock(now), family_id)).rowcount


def rotate_refresh_token(
    conn: psycopg.Connection, token: str, now: datetime | None = None, *,
    config: SecurityConfig, client_ip: str | None = None,
) -> TokenPair:  # fmt: skip
    """Exchange a refresh token for a new access token and a new refresh token (same family).

    Unknown or revoked: ``refresh_invalid``; past ``expires_at``: ``refresh_expired``; already
    used: the family is revoked and ``refresh_reused`` raised.
    """
    now = _clock(now)
    with _Attempt(conn, "token_refresh", now, client_ip) as attempt:
        row = conn.execute(
            "SELECT t.id, t.user_id, u.username, t.family_id, t.expires_at, t.used_at, t.revoked_at"
            " FROM refresh_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = %s FOR UPDATE OF t",
            (_token_hash(token),),
        ).fetchone()
        if row is None:
            raise AuthError(code="refresh_invalid")
        token_id, user_id, username, family, expires_at, used_at, revoked_at = row
        attempt.actor, attempt.target, attempt.details["family"] = username, username, str(family)
        if used_at is not None:
            attempt.details["revoked"] = revoke_family(conn, family, now)
            raise AuthError(code="refresh_reused")
        if revoked_at is not None:
            raise AuthError(code="refresh_invalid")
        if now >= expires_at:
            raise AuthError(code="refresh_expired")
        conn.execute("UPDATE refresh_tokens SET used_at = %s WHERE id = %s", (now, token_id))
        refresh = _insert_refresh(conn, user_id, family, token_id, now, config.refresh_ttl)
        return TokenPair(issue_access_token(user_id, config, now), refresh)


def logout(conn: psycopg.Connection, token: str, now: datetime | None = None, client_ip: str | None = None) -> bool:
    """Revoke the family of ``token`` (idempotent); False when the token is unknown."""
    now = _clock(now)
    try:
        with _Attempt(conn, "logout", now, client_ip) as attempt:
            row = conn.execute(
                "SELECT t.family_id, u.username FROM refresh_tokens t JOIN users u ON u.id = t.user_id"
                " WHERE t.token_hash = %s",
                (_token_hash(token),),
            ).fetchone()
            if row is None:
                raise AuthError(code="refresh_invalid")
            attempt.actor = attempt.target = row[1]
            attempt.details.update(family=str(row[0]), revoked=revoke_family(conn, row[0], now))
    except AuthError:
        return False
    return True
