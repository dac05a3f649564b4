"""What one request may cost the API process before it queues: a bounded body, JSON without NaN or
deep nesting, and prompt work run off the event loop, so a hostile client never stalls /health or
another client's stream."""
from __future__ import annotations

import json

from starlette.requests import Request

from .errors import ApiError

MAX_DEPTH = 32  # the deepest our request bodies go is about 5 (a message's content part's text)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with a 413 as soon as it is known to exceed `max_bytes`: from Content-Length
    before reading anything, or while a chunked body arrives."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
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
    return data


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
