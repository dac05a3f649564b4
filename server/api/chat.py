"""POST /v1/chat/completions: the request, and the chat.completion and chat.completion.chunk bodies."""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Sequence

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rain_core.config import GenerationRequest, RainConfig, SamplingParams

from server.api import render
from server.api.bodies import (AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatLogprobs, ChunkChoice,
                               ChunkDelta)
from server.api.run import Outcome, Run, Step
from server.api.schemas import MAX_TOP_LOGPROBS, UNSUPPORTED, ChoicesBody, Strict, empty_or_none, text_or_parts
from server.api.tokens import TokenTexts
from server.workers.protocol import Delta, Done

# Fields of assistant turns echoed back from earlier responses, empty when there were no tools.
MESSAGE_EMPTY_FIELDS = ("name", "refusal", "tool_calls", "function_call", "audio", "annotations")
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, text_or_parts(["text"])]
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
        return empty_or_none(value)

    def turn(self) -> dict:
        return {"role": ROLES[self.role], "content": self.content}


class ChatCompletionRequest(ChoicesBody):
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {
        **UNSUPPORTED,
        "functions": ([],),
        "function_call": ("none",),
        "response_format": ({"type": "text"},),
        "modalities": (["text"],),
        "audio": (),
        "prediction": (),
        "reasoning_effort": (),
        "verbosity": (),
        "web_search_options": (),
        "moderation": (),
    }

    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _consistent(self) -> "ChatCompletionRequest":
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree; send one of them")
        return self

    @field_validator("top_logprobs")
    @classmethod
    def _needs_logprobs(cls, top: Optional[int], info: ValidationInfo) -> Optional[int]:
        if top and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs=true")
        return top

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_logprobs_count(self) -> Optional[int]:
        return (self.top_logprobs or 0) if self.logprobs else None

    def chat_messages(self) -> tuple[dict, ...]:
        return tuple(m.turn() for m in self.messages)

    def with_prompt(self, params: SamplingParams, rain: Optional[RainConfig]) -> GenerationRequest:
        return GenerationRequest(self.chat_messages(), params, rain)


class ChatRender:
    """One chat completion's bodies, streamed (each chunk dumped to its JSON) or whole."""

    def __init__(self, response_id: str, created: int, model: str, texts: TokenTexts, include_usage: bool = False):
        self.id, self.created, self.model, self.texts = response_id, created, model, texts
        self.include_usage = include_usage

    def _logprobs(self, deltas: Sequence[Delta]) -> ChatLogprobs:
        return ChatLogprobs(content=[e for d in deltas for e in self.texts.chat_content(d.logprobs or [])], refusal=None)

    def completion(self, outcomes: Sequence[Outcome]) -> ChatCompletion:
        choices = [ChatChoice(
            index=i,
            message=AssistantMessage(role="assistant", content=o.text, refusal=None),
            logprobs=self._logprobs(o.deltas) if o.wants_logprobs else None,
            finish_reason=render.finish_reason(o.done),
            rain=render.full_summary(o.job, o.deltas, o.done),
        ) for i, o in enumerate(outcomes)]
        one = {"rain": choices[0].rain} if len(outcomes) == 1 else {}  # the one choice's, where clients of n=1 read it
        return ChatCompletion(id=self.id, object="chat.completion", created=self.created, model=self.model,
                              choices=choices, usage=render.usage([o.done for o in outcomes]), **one)

    def _chunk(self, choices: list[ChunkChoice], **extra) -> str:
        usage = {"usage": None} if self.include_usage else {}  # as OpenAI does: only the last chunk carries usage
        return ChatCompletionChunk(id=self.id, object="chat.completion.chunk", created=self.created, model=self.model,
                                   choices=choices, **{**usage, **extra}).dump()

    def opening(self, choices: int) -> list[str]:
        """Each choice's first chunk, which names the role."""
        return [self._chunk([ChunkChoice(index=i, delta=ChunkDelta(role="assistant", content=""), logprobs=None,
                                         finish_reason=None)]) for i in range(choices)]

    def step(self, index: int, run: Run, step: Step) -> str:
        """One committed set (under RAIN with its search), or the end of a choice with its summary."""
        delta, done = step.delta, step.done
        choice = ChunkChoice(index=index, delta=ChunkDelta(content=delta.text) if delta else ChunkDelta(),
                             logprobs=self._logprobs([delta]) if delta and run.wants_logprobs else None,
                             finish_reason=done and render.finish_reason(done))
        rain = render.streamed_rain(run.job, delta, done)
        return self._chunk([choice], **({"rain": rain} if rain is not None else {}))

    def usage(self, dones: Sequence[Done]) -> str:
        return self._chunk([], usage=render.usage(dones))
