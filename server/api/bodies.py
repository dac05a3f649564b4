"""The bodies the server sends, as pydantic models: the renderers build these and dump them, and the OpenAPI
document (openapi.py) is made from the same classes, so what is documented is what is sent.

A body is dumped with `exclude_unset`: a field a renderer does not set is left out (an optional `rain`, a
streamed chunk's `usage` before the last), and one it sets to None is sent as null, as OpenAI does."""
from __future__ import annotations

from typing import Any, Literal, Optional, Union

from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from rain_core.config import Strategy
from rain_core.events import FinishReason, GatedOutcome, GatedSentence, OpenAIFinishReason


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def dump(self) -> str:
        return self.model_dump_json(exclude_unset=True)

    def as_response(self, status_code: int = 200, headers: Optional[dict[str, str]] = None) -> Response:
        return Response(self.dump(), status_code=status_code, headers=headers, media_type="application/json")


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
    first_token_s: Optional[float]  # from the engine's start to its first committed token
    model_calls: int  # transformers backend: its calls to the model thread that requests take turns on (0 on vLLM)
    model_wait_s: float  # of wall_s: how long those calls waited for other requests' calls
    model_wait_first_s: float  # of first_token_s: the same
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
