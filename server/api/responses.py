"""POST /v1/responses: OpenAI's Responses API for text, and its `response` object and stream events.

The answer is one assistant message item with one output_text part. Streamed, each committed set is one
`response.output_text.delta` (under RAIN with its search in `rain`); the stream always ends with
`response.completed`, whose response has status `incomplete` when max_output_tokens cut the answer
(OpenAI's own stream ends with `response.incomplete` then, which the openai SDK's stream helper rejects:
its get_final_response() needs `response.completed`).
"""
from __future__ import annotations

import uuid
from typing import Annotated, Any, AsyncIterator, ClassVar, Literal, Optional

from pydantic import Field, WithJsonSchema, field_validator, model_validator

from rain_core.config import GenerationRequest, RainConfig, SamplingParams

from server.api import render
from server.api.bodies import (OutputMessage, OutputText, RainSummary, ResponseObject, ResponseStreamEvent,
                               ResponseUsage)
from server.api.chat import ROLES
from server.api.errors import ApiError
from server.api.run import Outcome, Run
from server.api.schemas import UNSUPPORTED, GenerationBody, Strict, empty_or_none, text_or_parts


class ContentPart(Strict):
    type: Literal["input_text", "output_text"]  # output_text: an earlier answer sent back as history
    text: str
    annotations: Any = None
    logprobs: Any = None

    @field_validator("annotations", "logprobs")
    @classmethod
    def _must_be_empty(cls, value: Any) -> Any:
        return empty_or_none(value)


class InputMessage(Strict):
    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, text_or_parts(["input_text", "output_text"])]
    id: Optional[str] = None  # items of an earlier response, sent back as they came
    status: Optional[str] = None

    @model_validator(mode="before")
    @classmethod
    def _only_messages(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type", "message") != "message":
            raise ValueError(f"only message items are supported, not {data['type']!r}")
        return data

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, content: Any) -> Any:
        if isinstance(content, list):
            return "\n".join(ContentPart.model_validate(part).text for part in content)
        return content

    def turn(self) -> dict:
        return {"role": ROLES[self.role], "content": self.content}


class ResponsesRequest(GenerationBody):
    UNSUPPORTED: ClassVar[dict[str, tuple]] = {
        **UNSUPPORTED,
        "previous_response_id": (),
        "conversation": (),
        "reasoning": (),
        "text": ({"format": {"type": "text"}},),
        "truncation": ("disabled",),
        "include": ([],),
        "top_logprobs": (0,),
        "background": (False,),
        "prompt": (),
        "max_tool_calls": (),
        "stream_options": (),
    }

    PROMPT_FIELD: ClassVar[str] = "input"

    input: Annotated[list[InputMessage], WithJsonSchema({"anyOf": [
        {"type": "string"}, {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/InputMessage"}}]})
    ] = Field(min_length=1)
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = Field(None, ge=1)

    @field_validator("input", mode="before")
    @classmethod
    def _text_is_one_user_message(cls, value: Any) -> Any:
        return [{"role": "user", "content": value}] if isinstance(value, str) else value

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_output_tokens

    def turns(self) -> tuple[dict, ...]:
        system = ({"role": "system", "content": self.instructions},) if self.instructions else ()
        return system + tuple(item.turn() for item in self.input)

    def with_prompt(self, params: SamplingParams, rain: Optional[RainConfig]) -> GenerationRequest:
        return GenerationRequest(self.turns(), params, rain)


def _usage(done) -> ResponseUsage:
    prompt, completion = render.token_counts([done])
    return ResponseUsage(input_tokens=prompt, input_tokens_details={"cached_tokens": 0}, output_tokens=completion,
                         output_tokens_details={"reasoning_tokens": 0}, total_tokens=prompt + completion)


class ResponseRender:
    def __init__(self, response_id: str, created: int, body: ResponsesRequest, model: str, max_output_tokens: int):
        self.id, self.created, self.body, self.model = response_id, created, body, model
        self.max_output_tokens = max_output_tokens
        self.item_id = f"msg_{uuid.uuid4().hex}"
        self.sequence = 0

    def _message(self, text: str, status: str) -> OutputMessage:
        return OutputMessage(type="message", id=self.item_id, status=status, role="assistant",
                             content=[self._part(text)] if status == "completed" else [])

    @staticmethod
    def _part(text: str) -> OutputText:
        return OutputText(type="output_text", text=text, annotations=[], logprobs=[])

    def response(self, status: str, text: str = "", done=None, rain: Optional[RainSummary] = None) -> ResponseObject:
        """The `response` object: in progress (no output yet), completed, or incomplete."""
        finished = done is not None
        return ResponseObject(
            id=self.id, object="response", created_at=self.created, status=status, model=self.model,
            output=[self._message(text, "completed")] if finished else [],
            usage=_usage(done) if finished else None,
            incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
            error=None,
            instructions=self.body.instructions,
            max_output_tokens=self.max_output_tokens,
            temperature=self.body.temperature,
            top_p=self.body.top_p,
            parallel_tool_calls=False, tool_choice="none", tools=[],
            text={"format": {"type": "text"}}, truncation="disabled", store=False,
            metadata={}, previous_response_id=None, reasoning=None,
            user=self.body.user,
            rain=rain,
        )

    @staticmethod
    def status(done) -> str:
        return "incomplete" if render.finish_reason(done) == "length" else "completed"

    def complete(self, outcome: Outcome) -> ResponseObject:
        return self.response(self.status(outcome.done), outcome.text, outcome.done,
                             render.full_summary(outcome.job, outcome.deltas, outcome.done))

    def _event(self, kind: str, **fields) -> dict:
        """One SSE event: the `event:` line names it, and the data repeats it as `type`, as OpenAI does."""
        self.sequence += 1
        event = ResponseStreamEvent(type=kind, sequence_number=self.sequence - 1, **fields)
        return {"event": kind, "data": event.dump()}

    async def stream(self, run: Run, on_error) -> AsyncIterator[dict]:
        where = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        yield self._event("response.created", response=self.response("in_progress"))
        yield self._event("response.in_progress", response=self.response("in_progress"))
        yield self._event("response.output_item.added", output_index=0, item=self._message("", "in_progress"))
        yield self._event("response.content_part.added", **where, part=self._part(""))
        texts: list[str] = []
        try:
            async for step in run.steps():
                if step.delta is not None:
                    texts.append(step.delta.text)
                    extra = {"rain": render.commit_stats(step.delta)} if run.job.mode == "rain" else {}
                    yield self._event("response.output_text.delta", **where, delta=step.delta.text, logprobs=[],
                                      **extra)
                done = step.done
        except ApiError as error:  # the stream has started: the error goes in-band
            on_error(error)
            yield self._event("error", code=error.code, message=error.message, param=error.param)
            return
        text = "".join(texts)
        yield self._event("response.output_text.done", **where, text=text, logprobs=[])
        yield self._event("response.content_part.done", **where, part=self._part(text))
        yield self._event("response.output_item.done", output_index=0, item=self._message(text, "completed"))
        yield self._event("response.completed",
                          response=self.response(self.status(done), text, done, render.rain_summary(run.job, done)))
