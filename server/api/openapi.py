"""The OpenAPI document: every endpoint's request and response bodies, our `rain` objects included.

Requests are validated by hand (schemas.py: exact 400s that name the field, 413s before parsing), so
FastAPI cannot see their bodies; `install` puts the same pydantic models into the document instead.
The response models below only describe the bodies the renderers write; tests/server/test_openapi.py
holds real responses against them, so the two cannot drift apart.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import models_json_schema

from rain_core.config import Strategy
from rain_core.events import FinishReason, GatedOutcome, GatedSentence, OpenAIFinishReason

from server.api.chat import ChatCompletionRequest
from server.api.completions import CompletionRequest
from server.api.responses import InputMessage, ResponsesRequest

DESCRIPTION = (
    "An OpenAI-compatible server whose answers come out of RAIN (Rewindable Auto-regressive INference): "
    "the frozen model searches a tree of token sets and judges its own partial answers before it commits "
    "each set. Every generation endpoint takes a `rain` object; every answer reports its search and its "
    "cost against vanilla decoding."
)


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CommitStats(Doc):
    """The search behind one committed set."""

    tokens: int
    iterations: Optional[int] = None  # RAIN only
    tree_size: Optional[int] = None
    visits: Optional[float] = None
    value: Optional[float] = None


class RainSummary(Doc):
    """A generation's search statistics and its measured cost against vanilla decoding."""

    enabled: bool
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    commits: int
    iterations: int
    self_evaluations: int
    forward_calls: int  # model calls (engine requests on vLLM), the judge's included
    tokens_fed: int  # tokens the served model computed for this generation (prefix-cache hits not)
    judge_tokens_fed: int  # tokens a separate --judge-model computed for it
    wall_s: float  # from the engine's start on it to its end
    worker_s: float  # its wall time in its worker, from its arrival there to its end
    queue_s: float
    vanilla_estimate_s: Optional[float]  # vanilla decoding of the same prompt and answer length, on the same engine now
    overhead_ratio: Optional[float]  # worker_s / vanilla_estimate_s: the latency it cost against vanilla decoding
    engine_work_ratio: Optional[dict[str, float]]  # tokens each model computed / (prompt + completion tokens)
    resubmissions: int  # workers that died under it (the work totals are then the last worker's)
    commit_stats: Optional[list[CommitStats]] = None  # non-streamed RAIN answers
    strategy: Optional[Strategy] = None  # searched or judged requests
    judge: Optional[str] = None  # the judging model's id, or "self"
    judge_threshold: Optional[float] = None  # self_check and gated
    judge_values: Optional[list[float]] = None  # self_check and gated: each judgment; best_of_n: each candidate's
    chosen: Optional[int] = None  # best_of_n
    replaced: Optional[bool] = None  # self_check and gated: whether the answer ends with the refusal
    outcome: Optional[GatedOutcome] = None  # gated: passed (vanilla throughout), rewritten (searched) or refused
    sentences: Optional[list[GatedSentence]] = None  # gated: what each sentence the client received was


class StreamedRain(CommitStats):
    """A streamed chunk's `rain`: its set's search; the last chunk adds the generation's summary."""

    tokens: Optional[int] = None
    summary: Optional[RainSummary] = None


class Usage(Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(Doc):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Doc):
    content: list[TokenLogprob]
    refusal: None = None


class AssistantMessage(Doc):
    role: Literal["assistant"]
    content: str
    refusal: None = None


class ChatChoice(Doc):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChatLogprobs]
    finish_reason: OpenAIFinishReason
    rain: RainSummary


class ChatCompletion(Doc):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    rain: Optional[RainSummary] = None  # the one choice's, when n is 1


class ChunkDelta(Doc):
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChunkChoice(Doc):
    index: int
    delta: ChunkDelta
    logprobs: Optional[ChatLogprobs]
    finish_reason: Optional[OpenAIFinishReason]


class Chunked(Doc):
    """What a chunk of a stream (and a whole text completion) carries besides its choices."""

    id: str
    created: int
    model: str
    usage: Optional[Usage] = None
    rain: Optional[Union[StreamedRain, RainSummary]] = None


class ChatCompletionChunk(Chunked):
    """One `data:` event of a streamed chat completion (the stream ends with `data: [DONE]`)."""

    object: Literal["chat.completion.chunk"]
    choices: list[ChunkChoice]


class CompletionLogprobs(Doc):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(Doc):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs]
    finish_reason: Optional[OpenAIFinishReason]
    rain: Optional[RainSummary] = None  # non-streamed


class TextCompletion(Chunked):
    """A text completion, whole or (streamed, one per `data:` event, then `data: [DONE]`) one chunk."""

    object: Literal["text_completion"]
    choices: list[CompletionChoice]


class OutputText(Doc):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class OutputMessage(Doc):
    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed"]
    role: Literal["assistant"]
    content: list[OutputText]


class ResponseUsage(Doc):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(Doc):
    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "incomplete"]
    model: str
    output: list[OutputMessage]
    usage: Optional[ResponseUsage]
    incomplete_details: Optional[dict[str, str]]
    error: None
    instructions: Optional[str]
    max_output_tokens: int
    temperature: Optional[float]
    top_p: Optional[float]
    parallel_tool_calls: bool
    tool_choice: str
    tools: list[Any]
    text: dict[str, Any]
    truncation: str
    store: bool
    metadata: dict[str, Any]
    previous_response_id: None
    reasoning: None
    user: Optional[str]
    rain: Optional[RainSummary]


class ResponseStreamEvent(Doc):
    """One SSE event of a streamed response; its `event:` line repeats `type`. In order:
    response.created, response.in_progress, response.output_item.added, response.content_part.added,
    response.output_text.delta (one per committed set), response.output_text.done,
    response.content_part.done, response.output_item.done, then response.completed (its response's
    status is `incomplete` when max_output_tokens cut the answer), or `error` when the generation failed."""

    type: str
    sequence_number: int
    response: Optional[ResponseObject] = None
    item_id: Optional[str] = None
    output_index: Optional[int] = None
    content_index: Optional[int] = None
    item: Optional[OutputMessage] = None
    part: Optional[OutputText] = None
    delta: Optional[str] = None
    text: Optional[str] = None
    logprobs: Optional[list[Any]] = None
    rain: Optional[CommitStats] = None
    code: Optional[str] = None
    message: Optional[str] = None
    param: Optional[str] = None


class ErrorDetail(Doc):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorBody(Doc):
    error: ErrorDetail


class ModelCard(Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    judge_model: Optional[str]  # the --judge-model's id (rain.judge "served"), or null
    judge_threshold: float  # self_check's default threshold (--judge-threshold)


class ModelList(Doc):
    object: Literal["list"]
    data: list[ModelCard]


class Health(Doc):
    status: Literal["ok", "restarting", "unavailable"]  # restarting: no worker ready, requests wait in the queue
    model: str
    running: int
    waiting: int
    workers: list[dict[str, Any]]


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
