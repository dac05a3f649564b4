"""The OpenAPI document: every endpoint's request and response bodies, our `rain` objects included.

Requests are validated by hand (schemas.py: exact 400s that name the field, 413s before parsing), so
FastAPI cannot see their bodies; `install` puts the same pydantic models into the document instead.
The response models are bodies.py's, the classes the renderers build and dump.
"""
from __future__ import annotations

from typing import Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from server.api.bodies import (ChatCompletion, ChatCompletionChunk, ErrorBody, Health, ModelCard, ModelList,
                               ResponseObject, ResponseStreamEvent, TextCompletion)
from server.api.chat import ChatCompletionRequest
from server.api.completions import CompletionRequest
from server.api.responses import InputMessage, ResponsesRequest

DESCRIPTION = (
    "An OpenAI-compatible server whose answers come out of RAIN (Rewindable Auto-regressive INference): "
    "the frozen model searches a tree of token sets and judges its own partial answers before it commits "
    "each set. Every generation endpoint takes a `rain` object; every answer reports its search and its "
    "cost against vanilla decoding."
)


ERRORS = {400: "invalid request", 401: "missing or wrong API key", 404: "unknown model",
          413: "request body over --max-request-bytes", 429: "every slot busy and the queue full",
          500: "the generation failed", 503: "every worker crash-looping, or the request's workers kept dying",
          504: "past --request-timeout"}

# (path, method) -> (request body, JSON response, streamed event)
BODIES: dict[tuple[str, str], tuple[Optional[type], type, Optional[type]]] = {
    ("/v1/chat/completions", "post"): (ChatCompletionRequest, ChatCompletion, ChatCompletionChunk),
    ("/v1/completions", "post"): (CompletionRequest, TextCompletion, TextCompletion),
    ("/v1/responses", "post"): (ResponsesRequest, ResponseObject, ResponseStreamEvent),
    ("/v1/models", "get"): (None, ModelList, None),
    ("/v1/models/{name}", "get"): (None, ModelCard, None),
    ("/health", "get"): (None, Health, None),
}

CHAT = {"summary": "Create a chat completion (streamed or not), searched by RAIN or decoded plainly"}
COMPLETIONS = {"summary": "Create a text completion of a prompt, without the chat template"}
RESPONSES = {"summary": "Create a response (OpenAI's Responses API, text only)"}
MODELS = {"summary": "List the served model"}
MODEL = {"summary": "Describe the served model"}
HEALTH = {"summary": "200 while a worker is ready or restarting (requests wait), 503 while starting or crash-looping; "
                     "the workers, their states and their measured vanilla speed"}
METRICS = {"summary": "Prometheus metrics (text format)"}


def _ref(model: type) -> dict:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def build(app: FastAPI) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    # InputMessage: the Responses `input` names it in a schema written by hand
    models = {m for bodies in BODIES.values() for m in bodies if m is not None} | {ErrorBody, InputMessage}
    _, defs = models_json_schema([(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
                                 ref_template="#/components/schemas/{model}")
    doc.setdefault("components", {})["schemas"] = defs["$defs"]
    for (path, method), (request, response, event) in BODIES.items():
        operation = doc["paths"][path][method]
        if request is not None:
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
        content = {"application/json": {"schema": _ref(response)}}
        if event is not None:
            content["text/event-stream"] = {"schema": _ref(event)}
        operation["responses"] = {"200": {"description": "OK", "content": content}}
        if path.startswith("/v1"):
            operation["responses"].update({str(status): {"description": why, "content": {
                "application/json": {"schema": _ref(ErrorBody)}}} for status, why in ERRORS.items()})
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi
