"""What one request may cost the API process before it is validated: a bounded body, and JSON without
NaN, Infinity, deep nesting or lone surrogates (prompts.py keeps the prompt's own cost off the event loop)."""
from __future__ import annotations

import json
from typing import Optional

from starlette.requests import ClientDisconnect, Request

from rain_core.chat.template import LONE_SURROGATE

from server.api.errors import ApiError, ClientGone

MAX_DEPTH = 32  # the deepest our request bodies go is about 5 (a message's content part's text)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed `max_bytes`: from Content-Length
    before reading anything, or while a chunked body arrives."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientGone(f"the client disconnected while sending its body ({size} bytes read)") from None
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {max_bytes} bytes "
                         f"(--max-request-bytes)", code="request_too_large")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> dict:
    """A JSON object, or a 400 that says what is wrong with it."""
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # also invalid UTF-8, and NaN / Infinity
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if _depth(data) > MAX_DEPTH:
        raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels")
    if (param := _lone_surrogate(data)) is not None:
        raise ApiError(400, f"{param} holds a lone UTF-16 surrogate (a \\ud800-\\udfff escape without its pair), "
                            "which is not text", param, "invalid_value")
    return data


def _lone_surrogate(data: dict) -> Optional[str]:
    """The path (messages[0].content) of a string, or object key, that holds a lone surrogate."""
    frontier: list[tuple[object, str]] = [(data, "")]
    while frontier:
        item, path = frontier.pop()
        if isinstance(item, str) and LONE_SURROGATE.search(item):
            return path or "body"
        if isinstance(item, dict):
            for key, child in item.items():
                named = f"{path}.{_printable(key)}" if path else _printable(key)
                if LONE_SURROGATE.search(key):
                    return named
                frontier.append((child, named))
        elif isinstance(item, list):
            frontier.extend((child, f"{path}[{i}]") for i, child in enumerate(item))
    return None


def _printable(key: str) -> str:
    """A key as a param may name it: a lone surrogate in it written as its escape."""
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


def _depth(value, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of a parsed JSON value, counted without recursion and only up to limit + 1."""
    deepest, frontier = 0, [(value, 1)]
    while frontier:
        item, depth = frontier.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            children = item.values() if isinstance(item, dict) else item
            frontier.extend((child, depth + 1) for child in children)
    return deepest
