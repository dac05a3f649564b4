"""Errors in the OpenAI shape {"error": {"message", "type", "param", "code"}}: every failure a client
sees goes through here, so none is ever a bare 500 with a traceback, nor a copy of a huge input."""
from __future__ import annotations

import logging
from typing import Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from server.api.bodies import ErrorBody, ErrorDetail

log = logging.getLogger("rain_serve")

MAX_MESSAGE_CHARS = 2000  # an error message's bound, whatever input it quotes
MAX_PARAM_CHARS = 200
ECHO_CHARS = 100  # how much of a client's value a message quotes
CLIENT_CLOSED = 499  # nginx's status for "the client closed the request"; nobody reads it

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ):
        message = clip(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param if param is None else clip(param, MAX_PARAM_CHARS)
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    def body(self) -> ErrorBody:
        return ErrorBody(error=ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code))

    def response(self) -> Response:
        return self.body().as_response(self.status, self.headers)


class ClientGone(Exception):
    """The client closed its connection before the server could answer: nobody reads a response."""


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    kept = max(0, limit - 40)  # room for the note
    return f"{text[:kept]}... ({len(text) - kept} more characters)"


def echo(value: object) -> str:
    """A client's value quoted in a message: its repr, cut to ECHO_CHARS."""
    return clip(repr(value), ECHO_CHARS)


def install_handlers(app: FastAPI, count: Callable[[str], None]) -> None:
    """Render every exception as an OpenAI error; `count(type)` feeds the error metric."""

    def respond(error: ApiError) -> Response:
        count(error.type)
        return error.response()

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return respond(exc)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        log.info("%s %s: %s", request.method, request.url.path, exc)  # ours to note, not an error
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        return respond(ApiError(exc.status_code, str(exc.detail), headers=exc.headers))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")  # the traceback stays in the server's log
        return respond(ApiError(500, "internal server error", code="internal_error"))
