"""The chat-completion request as clients send it, validated, and its translation to rain_core.

Anything we do not implement is a 400 that names the field: unknown fields are refused, and the
OpenAI fields we lack are accepted only at the value that means "off" (many clients send those).
"""
from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rain_core.config import (PRESETS, EvalPrompt, EvalScore, GenerationRequest, QNormalization, RainConfig,
                              SamplingParams, preset)

from .errors import ApiError

Mode = Literal["rain", "vanilla"]

# OpenAI fields rain-serve does not implement, with the values that ask for nothing.
UNSUPPORTED: dict[str, tuple] = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "parallel_tool_calls": (),
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "audio": (),
    "prediction": (),
    "store": (False,),
    "metadata": (),
    "service_tier": ("auto", "default"),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
    "moderation": (),
    "prompt_cache_key": (),
    "prompt_cache_options": (),
    "prompt_cache_retention": (),
    "safety_identifier": (),
}
# Fields of assistant turns echoed back from earlier responses, empty when there were no tools.
MESSAGE_EMPTY_FIELDS = ("name", "refusal", "tool_calls", "function_call", "audio", "annotations")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: Any = None
    refusal: Any = None
    tool_calls: Any = None
    function_call: Any = None
    audio: Any = None
    annotations: Any = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported, not {kind!r}")
        return "\n".join(part["text"] for part in content)

    @field_validator(*MESSAGE_EMPTY_FIELDS)
    @classmethod
    def _must_be_empty(cls, value: Any) -> Any:
        if value not in (None, [], ""):
            raise ValueError("is not supported by rain-serve")
        return value


class StreamOptions(Strict):
    include_usage: bool = False


class RainOptions(Strict):
    """The `rain` object of a request (what the OpenAI SDK sends through `extra_body`)."""

    enabled: bool = True
    preset: str = "harmless"
    principle: Optional[str] = Field(None, min_length=1, max_length=4000)
    prompt: Optional[EvalPrompt] = None
    score: Optional[EvalScore] = None
    max_iters: Optional[int] = Field(None, ge=1, le=10_000)
    min_iters: Optional[int] = Field(None, ge=0, le=10_000)
    min_visits: Optional[int] = Field(None, ge=0, le=10_000)
    value_threshold: Optional[float] = Field(None, ge=-1.0, le=1.0)
    c_puct: Optional[float] = Field(None, gt=0.0, le=100.0)
    q_normalization: Optional[QNormalization] = None
    num_candidates: Optional[int] = Field(None, ge=1, le=100)
    candidate_top_k: Optional[int] = Field(None, ge=1, le=1000)
    similarity_threshold: Optional[float] = Field(None, ge=0.0, le=1.0)
    similarity_weight: Optional[float] = Field(None, ge=0.0, le=1.0)
    time_budget_s: Optional[float] = Field(None, gt=0.0, le=3600.0)
    iteration_cap: Optional[int] = Field(None, ge=1, le=10_000)
    simulation_max_tokens: Optional[int] = Field(None, ge=1, le=8192)

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, name: str) -> str:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return name

    @model_validator(mode="after")
    def _no_options_when_off(self) -> "RainOptions":
        if not self.enabled and self.model_fields_set - {"enabled"}:
            raise ValueError("search options need enabled=true (they would have no effect)")
        return self

    def config(self, temperature: Optional[float], top_p: Optional[float]) -> RainConfig:
        overrides = self.model_dump(exclude={"enabled", "preset"}, exclude_none=True)
        if temperature is not None:
            overrides["candidate_temperature"] = temperature
        if top_p is not None:
            overrides["candidate_top_p"] = top_p
        return preset(self.preset).with_overrides(**overrides)


class ChatCompletionRequest(Strict):
    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = None
    rain: Optional[RainOptions] = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported: rain-serve returns one choice per request")
        return n

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: Union[str, list[str], None]) -> Union[str, list[str], None]:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stop

    @model_validator(mode="after")
    def _one_limit(self) -> "ChatCompletionRequest":
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return self

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def mode(self, default: Mode) -> Mode:
        if self.rain is None:
            return default
        return "rain" if self.rain.enabled else "vanilla"

    def chat_messages(self) -> tuple[dict, ...]:
        return tuple({"role": ROLES[m.role], "content": m.content} for m in self.messages)

    def generation(self, mode: Mode, max_new_tokens: int) -> GenerationRequest:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        params = SamplingParams(max_new_tokens, stop, self.seed, self.temperature, self.top_p)
        rain = (self.rain or RainOptions()).config(self.temperature, self.top_p) if mode == "rain" else None
        return GenerationRequest(self.chat_messages(), params, rain)


def parse_chat_request(raw: bytes) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name, neutral in UNSUPPORTED.items():
        value = data.pop(name, None)
        if value is not None and value not in neutral:
            raise ApiError(400, f"{name} is not supported by rain-serve", name, "unsupported_parameter")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem, named the way OpenAI names parameters (messages[0].content)."""
    error = exc.errors()[0]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".") or None
    if error["type"] == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if error["type"] == "missing":
        return ApiError(400, f"{param} is required", param, "missing_parameter")
    message = error["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{param}: {message}" if param else message, param, "invalid_value")
