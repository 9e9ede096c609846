"""Authentication for the API: login, tokens, TOTP, the caller, rate limits, secure headers.

* ``POST /api/auth/login`` (username, password, TOTP code when enabled) answers an access
  token (HS256 JWT, short-lived) and a refresh token; ``/refresh`` rotates the refresh token
  (reuse revokes its whole family); ``/logout`` revokes it; ``/profile`` says who is calling;
  ``/totp/setup`` and ``/totp/enable`` turn on the second factor. The rules live in
  :mod:`api.security`; every attempt is in ``audit_log``.
* Every other ``/api`` route needs ``Authorization: Bearer <access token>``; ``/ws`` takes the
  token as ``?token=`` (browsers cannot set headers on a WebSocket).
* Rate limits per client address, in a sliding minute: login 10, everything else 600; over
  the limit is a 429 with ``Retry-After``.
* Secrets come from the environment: ``TICKTAPE_JWT_SECRET`` and ``TICKTAPE_MASTER_KEYS``. In
  ``TICKTAPE_ENV=dev`` (the default) missing ones are generated once into
  ``$TICKTAPE_HOME/secrets.json`` (mode 0600), so the demo needs no set-up; elsewhere a missing
  or default secret stops start-up naming the variable.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, Field

from api import security
from api.credentials import MasterKeys, SecretBox
from api.deps import AppState, Conn, Publisher, state
from api.errors import NO_NUL, PROBLEM_RESPONSES, ApiError, RequestBody
from api.security import AuthError, SecurityConfig, User

router = APIRouter(prefix="/api/auth", tags=["auth"], responses=PROBLEM_RESPONSES)
_bearer = HTTPBearer(auto_error=False, description="an access token from POST /api/auth/login")
_STATUS = {"locked": 423, "totp_required": 401}


# ----------------------------------------------------------------------------- secrets


def load_secrets(environ: Mapping[str, str], home: Path, env: str) -> tuple[SecurityConfig, SecretBox]:
    """The JWT config and the master keys (see the module docstring for the dev default)."""
    values = dict(environ)
    if env == "dev" and (not values.get("TICKTAPE_JWT_SECRET") or not values.get("TICKTAPE_MASTER_KEYS")):
        path = home / "secrets.json"
        if path.exists():
            stored = json.loads(path.read_text())
        else:
            stored = {"TICKTAPE_JWT_SECRET": secrets.token_urlsafe(48),
                      "TICKTAPE_MASTER_KEYS": "dev1:" + base64.b64encode(secrets.token_bytes(32)).decode()}  # fmt: skip
            home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(stored, fh)
        for k, v in stored.items():
            if not values.get(k):
                values[k] = v
    values["TICKTAPE_ENV"] = env
    return SecurityConfig.from_env(values), SecretBox(MasterKeys.from_env(values))


# ----------------------------------------------------------------------------- the caller


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def _unauthorized(code: str) -> ApiError:
    return ApiError(401, "Not authenticated", code, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def current_user(request: Request, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> User:
    """The caller of every protected route. Checking the token is a little CPU, so this runs
    on the event loop (no threadpool hand-off per request); only the rare refusal, which
    writes the audit log, goes to a thread. (The state is read from the request rather than
    taken as a dependency: each dependency costs every protected request a resolution.)"""
    st: AppState = request.app.state.ticktape
    if creds is None or creds.scheme.lower() != "bearer":
        msg = "missing bearer token"
        raise _unauthorized(msg)
    try:
        claims = security.verify_access_token(creds.credentials, st.security)
    except AuthError as exc:
        await asyncio.to_thread(_audit_refusal, st, request, exc.code)
        raise _unauthorized(exc.code) from None
    request.state.user_id = claims.user_id
    return User(claims.user_id, "", False)


Caller = Annotated[User, Depends(current_user)]


def _audit_refusal(st: AppState, request: Request, code: str) -> None:
    """A presented token that was refused (forged, expired, wrong algorithm) is audited."""
    if st.pool is None:
        return
    with contextlib.suppress(Exception), st.pool.connection(timeout=2) as conn:
        security.audit(conn, "?", "token_refused", request.url.path[:200], False, _client_ip(request), {"reason": code})


def username(conn: Conn, user: User) -> str:
    row = conn.execute("SELECT username FROM users WHERE id = %s", (user.id,)).fetchone()
    if row is None:
        msg = "unknown user"
        raise _unauthorized(msg)
    return str(row[0])


def audit_action(conn: Conn, user: User, request: Request, action: str, target: str, **details: Any) -> None:
    """Record a control action in the append-only audit log."""
    security.audit(conn, username(conn, user), action, target, True, _client_ip(request), details)


def publish_command(conn: Conn, pub: Publisher, user: User, request: Request, cmd: Any, target: str,
                    **details: Any) -> None:  # fmt: skip
    """Send a control command (once the broker has acknowledged it) and audit it under its kind."""
    pub.publish(cmd)
    audit_action(conn, user, request, type(cmd).__name__, target, command_id=cmd.command_id, **details)


# ----------------------------------------------------------------------------- routes


class Login(RequestBody):
    username: str = Field(min_length=1, max_length=64, pattern=NO_NUL)
    password: str = Field(min_length=1, max_length=256, pattern=NO_NUL)
    totp_code: str | None = Field(None, pattern=r"^[0-9]{6}$")


class Tokens(BaseModel):
    access_token: str
    refresh_token: str
    token_type: str = "bearer"
    expires_in: int


class RefreshIn(RequestBody):
    refresh_token: str = Field(min_length=10, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")


class Profile(BaseModel):
    id: int
    username: str
    totp_enabled: bool


class TotpSetup(BaseModel):
    otpauth_uri: str


class TotpCode(RequestBody):
    code: str = Field(pattern=r"^[0-9]{6}$")


def _auth_error(exc: AuthError) -> ApiError:
    return ApiError(_STATUS.get(exc.code, 401), "Authentication failed", exc.code,
                    headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


@router.post("/login", response_model=Tokens)
def login(conn: Conn, request: Request, st: Annotated[AppState, Depends(state)], body: Annotated[Login, Body()]) -> Tokens:
    try:
        user = security.authenticate(conn, body.username, body.password, body.totp_code, client_ip=_client_ip(request),
                                     box=st.box, policy=st.security.lockout)  # fmt: skip
    except AuthError as exc:
        raise _auth_error(exc) from None
    refresh = security.issue_refresh_token(conn, user.id, ttl=st.security.refresh_ttl)
    return Tokens(access_token=security.issue_access_token(user.id, st.security), refresh_token=refresh,
                  expires_in=int(st.security.access_ttl.total_seconds()))  # fmt: skip


@router.post("/refresh", response_model=Tokens)
def refresh(
    conn: Conn, request: Request, st: Annotated[AppState, Depends(state)], body: Annotated[RefreshIn, Body()]
) -> Tokens:
    try:
        pair = security.rotate_refresh_token(conn, body.refresh_token, config=st.security, client_ip=_client_ip(request))
    except AuthError as exc:
        raise _auth_error(exc) from None
    return Tokens(access_token=pair.access_token, refresh_token=pair.refresh_token,
                  expires_in=int(st.security.access_ttl.total_seconds()))  # fmt: skip


@router.post("/logout", status_code=204)
def logout(conn: Conn, request: Request, _user: Caller, body: Annotated[RefreshIn, Body()]) -> Response:
    security.logout(conn, body.refresh_token, client_ip=_client_ip(request))
    return Response(status_code=204)


@router.get("/profile", response_model=Profile)
def profile(conn: Conn, user: Caller) -> Profile:
    row = conn.execute("SELECT username, totp_enabled FROM users WHERE id = %s", (user.id,)).fetchone()
    if row is None:
        msg = "unknown user"
        raise _unauthorized(msg)
    return Profile(id=user.id, username=row[0], totp_enabled=row[1])


@router.post("/totp/setup", response_model=TotpSetup)
def totp_setup(conn: Conn, request: Request, st: Annotated[AppState, Depends(state)], user: Caller) -> TotpSetup:
    try:
        uri = security.setup_totp(conn, user.id, st.box, client_ip=_client_ip(request))
    except AuthError as exc:
        raise ApiError(409, "TOTP already enabled", exc.code) from None
    return TotpSetup(otpauth_uri=uri)


@router.post("/totp/enable", status_code=204)
def totp_enable(
    conn: Conn, request: Request, st: Annotated[AppState, Depends(state)], user: Caller, body: Annotated[TotpCode, Body()]
) -> Response:
    try:
        security.enable_totp(conn, user.id, body.code, box=st.box, client_ip=_client_ip(request))
    except AuthError as exc:
        raise ApiError(409 if exc.code in ("totp_already_enabled", "totp_not_setup") else 401,
                       "TOTP not enabled", exc.code) from None  # fmt: skip
    return Response(status_code=204)


# ----------------------------------------------------------------------------- middleware


class RateLimiter:
    """Sliding one-minute windows per (client address, bucket)."""

    def __init__(self, login_per_min: int = 10, other_per_min: int = 600) -> None:
        self.limits = {"login": login_per_min, "api": other_per_min}
        self._hits: dict[tuple[str, str], deque[float]] = {}

    def allow(self, client: str, bucket: str, now: float) -> float:
        """0 if allowed, else the seconds until it would be."""
        hits = self._hits.setdefault((client, bucket), deque())
        while hits and now - hits[0] >= 60:
            hits.popleft()
        if len(hits) >= self.limits[bucket]:
            return 60 - (now - hits[0])
        hits.append(now)
        return 0.0


REQUESTS = Counter("ticktape_api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram(
    "ticktape_api_request_seconds",
    "API request latency, by route template",
    ["method", "route"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


_API_HEADERS = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]
_NO_STORE = [(b"cache-control", b"no-store"), (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]


class Guard:
    """Pure ASGI middleware (no per-request task or body copy unless needed): rate limits,
    NUL refusal, request metrics and secure headers."""

    def __init__(self, app: Any, limiter: RateLimiter) -> None:
        self.app, self.limiter = app, limiter

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        api = path.startswith("/api/")
        if api:
            bucket = "login" if path == "/api/auth/login" else "api"
            client = scope.get("client")
            wait = self.limiter.allow(client[0] if client else "?", bucket, time.monotonic())
            if wait:
                await _problem(send, scope, 429, "Too many requests", f"{bucket} limit reached",
                               [(b"retry-after", str(int(wait) + 1).encode())])  # fmt: skip
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                # PostgreSQL text cannot hold NUL: refuse it at the door instead of failing deep inside.
                chunks, more = [], True
                while more:
                    msg = await receive()
                    chunks.append(msg.get("body", b""))
                    more = msg.get("more_body", False)
                body = b"".join(chunks)
                if b"\\u0000" in body or b"\x00" in body:
                    await _problem(send, scope, 422, "Invalid request", "NUL characters are not accepted")
                    return
                sent = False

                async def replay() -> dict[str, Any]:
                    nonlocal sent
                    if sent:
                        return await receive()
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}

                receive = replay
            if b"%00" in scope.get("query_string", b"") or "\x00" in path:
                await _problem(send, scope, 422, "Invalid request", "NUL characters are not accepted")
                return
        t0 = time.perf_counter()
        status = [500]

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = list(message.get("headers", [])) + _API_HEADERS + (_NO_STORE if api else [])
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], template, str(status[0])).inc()
            LATENCY.labels(scope["method"], template).observe(time.perf_counter() - t0)


async def _problem(send: Any, scope: dict[str, Any], status: int, title: str, detail: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:  # fmt: skip
    from api.errors import PROBLEM, Problem

    problem = Problem(title=title, status=status, detail=detail, instance=scope["path"])
    body = problem.model_dump_json(exclude_none=True).encode()  # the length is in bytes (a path may be non-ASCII)
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode()), *_API_HEADERS,
               *(extra or [])]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def install(app: FastAPI, limiter: RateLimiter) -> None:
    app.add_middleware(Guard, limiter=limiter)
