"""Errors as ``application/problem+json`` (RFC 9457): typed, never a stack trace.

Every error the API returns - validation, not found, conflict, the broker being down - is a
:class:`Problem`. Validation errors list each field with what was expected. An unexpected
exception is logged with its trace and answered as a 500 problem naming only its id.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ticktape.api")
PROBLEM = "application/problem+json"


NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: request strings say so in the schema


def _bare(annotation: Any) -> Any:
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def annotation_kinds(annotation: Any) -> set[Any]:
    """The types a field holds (``Optional`` and ``Annotated`` unwrapped, None left out); the
    request-body checks here and the query checks of ``api.deps`` read fields through it."""
    annotation = _bare(annotation)
    if get_origin(annotation) in (Union, UnionType):
        return set().union(*(annotation_kinds(a) for a in get_args(annotation)))
    return set() if annotation is NoneType else {annotation}


class RequestBody(BaseModel):
    """Base of request bodies: unknown fields are refused, not silently ignored, and a value
    must have the JSON type the schema gives it. pydantic's lax mode would read ``true`` as 1,
    ``"1.5"`` as 1.5 and a number as a timestamp in seconds, so ``{"price": true}`` modified
    an order to a price of 1."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _json_types(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key, is_json, expected in _json_typed(cls):
                if (value := data.get(key)) is not None and not is_json(value):
                    msg = f"{key}: expected {expected}, got {type(value).__name__} {value!r:.40}"
                    raise ValueError(msg)
        return data


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)  # not bool (an int subclass), not a numeric string


def _is_date_time(value: Any) -> bool:
    """ISO-8601 text only: pydantic also reads 1700000000 and "1700000000" as timestamps."""
    try:
        datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return False
    return True


@functools.cache
def _json_typed(model: type[BaseModel]) -> tuple[tuple[str, Callable[[Any], bool], str], ...]:
    """(JSON key, its check, what it expects) of ``model``'s number and date-time fields."""
    out: list[tuple[str, Callable[[Any], bool], str]] = []
    for name, f in model.model_fields.items():
        kinds = annotation_kinds(f.annotation)
        if kinds and kinds <= {int, float}:
            out.append((f.alias or name, _is_number, "a number"))
        elif kinds and kinds <= {datetime}:
            out.append((f.alias or name, _is_date_time, "an ISO-8601 date-time string"))
    return tuple(out)


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
