"""Errors as ``application/problem+json`` (RFC 9457): typed, never a stack trace.

Every error the API returns - validation, not found, conflict, the broker being down - is a
:class:`Problem`. Validation errors list each field with what was expected. An unexpected
exception is logged with its trace and answered as a 500 problem naming only its id.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ticktape.api")
PROBLEM = "application/problem+json"


NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: request strings say so in the schema


class RequestBody(BaseModel):
    """Base of request bodies: unknown fields are refused, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    instance: str = ""
    errors: list[FieldError] | None = None


class ApiError(Exception):
    """Raise from a route to answer with a problem."""

    def __init__(self, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.headers = status, title, detail, headers


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {PROBLEM: {}}} for code in (400, 401, 403, 404, 409, 422, 429, 503)
}


def _problem(request: Request, status: int, title: str, detail: str = "", **extra: Any) -> JSONResponse:
    body = Problem(title=title, status=status, detail=detail, instance=request.url.path, **extra)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=status, media_type=PROBLEM)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        resp = _problem(request, exc.status, exc.title, exc.detail)
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            FieldError(loc=[str(x) if not isinstance(x, int) else x for x in e.get("loc", ())], msg=str(e.get("msg", "")),
                       type=str(e.get("type", "")))
            for e in exc.errors()
        ]  # fmt: skip
        return _problem(request, 422, "Invalid request", f"{len(errors)} invalid field(s)", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        resp = _problem(request, exc.status_code, str(exc.detail) if exc.detail else "Error")
        if exc.headers:
            resp.headers.update(exc.headers)
        return resp

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error %s on %s %s", ref, request.method, request.url.path)
        return _problem(request, 500, "Internal error", f"reference {ref}")
