"""Failures in OpenAI's error shape, `{"error": {message, type, param, code}}`: an `HTTPError`
a handler raises, a `FieldProblem` the request's own models raise (a field they cannot serve as
given), and FastAPI's own validation errors (a bad, missing or unknown field)."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import openai_api as api


class HTTPError(Exception):
    """An answer in OpenAI's error shape: status, message, the request field at fault."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        kind="invalid_request_error",
        code: str | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.code, self.headers = code, headers


async def answer_http_error(request: Request, e: HTTPError) -> JSONResponse:
    """An `HTTPError` as its status, its headers (429's Retry-After) and OpenAI's error body."""
    body = api.error_body(e.message, e.kind, e.param, e.code)
    return JSONResponse(body, status_code=e.status, headers=e.headers)


async def answer_field_problem(request: Request, e: api.FieldProblem) -> JSONResponse:
    """A field the handlers found they cannot serve as given: a 400 naming it."""
    return JSONResponse(api.error_body(e.message, param=e.param), status_code=400)


async def answer_invalid_request(request: Request, e: RequestValidationError) -> JSONResponse:
    """A 400 naming the first bad field and the value it got: `messages.0.role: Input should be
    'system', ... (got "robot")`."""
    first = e.errors()[0]
    where = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(where) or None
    message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
    if "input" in first and first.get("type") != "missing":
        message += f" (got {json.dumps(first['input'], default=str)[:80]})"
    return JSONResponse(api.error_body(message, param=param), status_code=400)
